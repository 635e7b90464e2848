"""Dataflow Flex Template entry point: the launcher's ``--name=value`` arguments -> ``dfscan scan``.

The Flex Template launcher runs ``python flex_main.py --input=... --out=... --project=...``:
the template's parameters (``flex_template_metadata.json``, beside this file) mixed with
Dataflow's pipeline options. The parameters are ``dfscan scan`` flags spelled with
underscores; everything else is a Beam pipeline option and goes after ``--``, the way
``dfscan scan --runner beam -- <beam options>`` takes it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

METADATA = Path(__file__).with_name("flex_template_metadata.json")
POSITIONAL = "input"  # `dfscan scan INPUT`: the only parameter that is not a --flag


def template_parameters(metadata: Path = METADATA) -> list[str]:
    """The parameter names the template declares, in the metadata's order."""
    return [p["name"] for p in json.loads(metadata.read_text())["parameters"]]


def to_scan_argv(argv: Sequence[str], names: Sequence[str] | None = None) -> list[str]:
    """``dfscan`` arguments (without the program name) for the launcher's ``argv``."""
    names = list(template_parameters() if names is None else names)
    parser = argparse.ArgumentParser(prog="flex_main", allow_abbrev=False)
    for name in names:
        parser.add_argument(f"--{name}", required=name == POSITIONAL)
    known, beam_args = parser.parse_known_args(list(argv))
    cli = ["scan", getattr(known, POSITIONAL)]
    for name in names:
        value = getattr(known, name)
        if name != POSITIONAL and value is not None:
            cli += [f"--{name.replace('_', '-')}", value]
    cli += ["--runner", "beam", "--no-progress"]
    if not any(a == "--runner" or a.startswith("--runner=") for a in beam_args):
        beam_args = ["--runner=DataflowRunner", *beam_args]
    return [*cli, "--", *beam_args]


def main(argv: Sequence[str] | None = None) -> int:
    from pipelines.cli import main as dfscan_main

    return dfscan_main(to_scan_argv(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
