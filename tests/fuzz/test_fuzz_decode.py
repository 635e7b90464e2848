"""A short fuzzing run in CI, and every input fuzzing ever saved stays harmless.

The run is as reproducible as atheris allows: a fixed seed, byte-identical seed files and a
fixed number of inputs (about 20 s here), so every clone tries the same first mutations;
runs diverge only after about a thousand inputs, where instrumented comparisons see clock
values. Open-ended search, with a random seed and a growing corpus, is ``make fuzz``. A finding
fails the test and is copied to ``tests/fuzz/crashes/``, where the replay test below keeps
it as a regression case.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.fuzz

HARNESS = Path(__file__).resolve().parent / "fuzz_decode.py"
CRASHES = HARNESS.parent / "crashes"
FUZZ_SEED = 1
FUZZ_RUNS = 12_000
FUZZ_SECONDS = 120  # a ceiling for slow machines, not the budget


def _run(args: list[str], timeout: float, corpus: Path | None = None) -> tuple[int | None, str]:
    """(exit code, or None if it had to be killed; stderr). A run that ends its work but
    not its process is killed and judged by what it reported and saved."""
    with tempfile.TemporaryFile("w+") as err:
        env = dict(os.environ, PYTHONHASHSEED="0")  # set iteration order is part of a run
        if corpus is not None:
            env["DFSCAN_FUZZ_CORPUS"] = str(corpus)
        proc = subprocess.Popen(
            [sys.executable, str(HARNESS), *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
            text=True,
            cwd=HARNESS.parents[2],
        )
        try:
            code: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = None
        err.seek(0)
        return code, err.read()


def test_a_short_fuzzing_run_finds_no_crash(tmp_path: Path):
    pytest.importorskip("atheris", reason="atheris is not installed (pip install atheris)")
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    code, stderr = _run(
        [
            f"-seed={FUZZ_SEED}",
            f"-runs={FUZZ_RUNS}",
            f"-max_total_time={FUZZ_SECONDS}",
            f"-artifact_prefix={artifacts}/",
        ],
        timeout=FUZZ_SECONDS + 120,
        corpus=tmp_path / "corpus",
    )
    found = sorted(artifacts.iterdir())
    for path in found:  # keep every finding as a regression case
        CRASHES.mkdir(exist_ok=True)
        shutil.copy(path, CRASHES / path.name)
    assert code == 0 and not found, (
        f"fuzzing found {[p.name for p in found]} (copied to {CRASHES}), exit {code}:\n"
        + stderr[-4000:]
    )
    runs = [line for line in stderr.splitlines() if line.startswith("Done ")]
    assert runs and int(runs[-1].split()[1]) > 1000, stderr[-2000:]  # it really ran
    assert f"INFO: Seed: {FUZZ_SEED}\n" in stderr, stderr[:2000]  # the fixed seed took


def test_saved_crashing_inputs_are_handled_now():
    pytest.importorskip("atheris", reason="atheris is not installed (pip install atheris)")
    saved = sorted(p for p in CRASHES.glob("*") if p.is_file() and not p.name.startswith("."))
    if not saved:
        pytest.skip("no saved fuzzing findings")
    code, stderr = _run([str(p) for p in saved], timeout=120 + 60 * len(saved))
    assert code == 0, f"exit {code}:\n{stderr[-4000:]}"
