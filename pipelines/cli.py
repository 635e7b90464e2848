"""``dfscan``: the command line. Parses flags into typed configs, then hands off.

Every subcommand lives in a module with ``register(subparsers)``; this file only wires
them. A bad argument or setting prints one line and exits 2, never a traceback.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import sys
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from operators.write_warehouse import WarehouseUnavailable
from pipelines import __version__
from pipelines.config import (
    AggregateConfig,
    ConfigError,
    CropConfig,
    EngineConfig,
    LimitsConfig,
    SamplingConfig,
    ScanConfig,
    ScorerConfig,
)
from pipelines.detector_cli import add_detector_arguments, detector_from_args
from pipelines.limits_cli import (
    _fraction,
    _positive,
    _within,
    add_limit_arguments,
    limits_from_args,
)
from pipelines.scoring_cli import add_scoring_arguments, scorer_settings
from pipelines.window_cli import add_window_arguments, window_from_args

DEFAULT_MODEL = "artifacts/starter.pt"
DEFAULT_OUT = "out"


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``dfscan: error: ...``) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"dfscan: error: {message}\n")


def _is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def _local_path(uri: str) -> str:
    return uri[len("file://") :] if uri.startswith("file://") else uri


def default_warehouse(out: str) -> str:
    if not _is_local(out):
        raise ConfigError("--out is not a local path: pass --warehouse (DuckDB needs a local file)")
    return "duckdb://" + str(Path(_local_path(out)).resolve() / "scans.duckdb")


def warehouse_arg(text: str) -> str:
    """argparse type of ``--warehouse``: an empty value (``--warehouse "$URL"`` with the
    variable unset) is an error, not the default, or a nightly job meant for PostgreSQL
    writes a DuckDB file in its container and exits 0."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty warehouse URL: leave the flag out for the default")
    return text


def new_run_id() -> str:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{uuid.uuid4().hex[:6]}"


def _storage_options(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"--storage-options is not valid JSON: {err.msg}") from None
    if not isinstance(value, dict):
        raise ConfigError("--storage-options must be a JSON object")
    return value


# ---------------------------------------------------------------- scan
# Seconds between pushes. Up to a day: a longer wait is no periodic push at all, and
# past threading.TIMEOUT_MAX the push thread died with an OverflowError traceback.
_push_interval = _within(float, 0.01, 86400.0)
# Per-video seconds. Up to a week: past threading.TIMEOUT_MAX the decode worker's wait
# raised an OverflowError traceback mid-scan.
_video_timeout = _within(float, 0.01, 7 * 86400.0)


def register_scan(sub: Any) -> None:
    from operators.aggregate import DECISION_RULES

    p = sub.add_parser("scan", help="scan videos for deepfaked faces")
    p.add_argument("input", help="folder or prefix URI, one video, or a CSV/JSONL/Parquet manifest")
    p.add_argument("--out", default=DEFAULT_OUT, help="output URI for face shards and metrics")
    p.add_argument(
        "--warehouse",
        type=warehouse_arg,
        help="warehouse URL (default: duckdb://<OUT>/scans.duckdb, OUT made absolute)",
    )
    p.add_argument(
        "--model",
        default=os.environ.get("DFSCAN_MODEL", DEFAULT_MODEL),
        help=f"classifier checkpoint path or URI (default: {DEFAULT_MODEL})",
    )
    p.add_argument("--frames", default="uniform:32", help="uniform:N | fps:F | keyframes")
    add_detector_arguments(p)
    p.add_argument(
        "--crop-scale",
        type=_positive(float),
        help="box enlargement (default: the checkpoint's, 1.3)",
    )
    p.add_argument("--rule", default=AggregateConfig.rule, choices=sorted(DECISION_RULES))
    p.add_argument(
        "--threshold",
        type=_fraction,
        default=None,
        help="FAKE at or above this (default: the checkpoint's calibrated threshold, else 0.5)",
    )
    add_scoring_arguments(p)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument(
        "--timeout",
        type=_video_timeout,
        default=LimitsConfig.timeout_s,
        help="per-video seconds for decode+detect",
    )
    p.add_argument("--max-bytes", type=_positive(int), default=LimitsConfig.max_bytes)
    add_limit_arguments(p)
    p.add_argument("--runner", default="local", help="engine: local (default), ray, beam")
    p.add_argument("--ray-address", help="connect to this Ray cluster (auto, ray://head:10001)")
    p.add_argument("--run-id", help="id of this run (default: time + random)")
    p.add_argument("--storage-options", help="JSON object passed to fsspec (e.g. endpoint)")
    p.add_argument("--pushgateway", help="Prometheus Pushgateway URL to push metrics to")
    p.add_argument(
        "--push-interval",
        type=_push_interval,
        default=15.0,
        help="seconds between Pushgateway pushes during the scan (default: 15)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--rescan",
        action="store_true",
        help="decode and score again videos the warehouse already has under this model",
    )
    add_window_arguments(p)
    p.set_defaults(func=run_scan_command)


def build_scan_config(args: argparse.Namespace) -> ScanConfig:
    from pipelines.graph import decode_workers
    from pipelines.scan import RUNNERS

    if args.runner not in RUNNERS:
        raise ConfigError(f"unknown --runner {args.runner!r}: choose one of {', '.join(RUNNERS)}")
    storage = _storage_options(args.storage_options)
    window = window_from_args(args)
    model = args.model
    if _is_local(model) and not Path(_local_path(model)).exists():
        raise ConfigError(
            f"no model at {model}: pass --model CKPT or train one with `dfscan train`"
        )
    detector = detector_from_args(args)
    crop = CropConfig(scale=args.crop_scale)  # None: the checkpoint's crop scale
    batch_size, backend = scorer_settings(args)
    cfg = ScanConfig(
        input_uri=args.input,
        out_uri=args.out,
        warehouse_url=args.warehouse or default_warehouse(args.out),
        run_id=args.run_id or new_run_id(),
        sampling=SamplingConfig.parse(args.frames),
        detector=detector,
        crop=crop,
        limits=limits_from_args(args),
        scorer=ScorerConfig(
            checkpoint=model, device=args.device, batch_size=batch_size, backend=backend
        ),
        aggregate=AggregateConfig(
            rule=args.rule,
            threshold=AggregateConfig.threshold if args.threshold is None else args.threshold,
        ),
        threshold_from_model=args.threshold is None,
        storage_options=storage,
        engine=EngineConfig(args.runner, args.ray_address, tuple(args.beam_args)),
        pushgateway=args.pushgateway,
        push_interval_s=args.push_interval,
        progress=not args.no_progress,
        rescan=args.rescan,
        window=window,
    )
    decode_workers(cfg)  # a setting the chosen engine cannot honour fails here, in one line
    return cfg


def run_scan_command(args: argparse.Namespace) -> int:
    from pipelines.console import ScanConsole
    from pipelines.scan import run_scan

    cfg = build_scan_config(args)
    with ScanConsole(enabled=cfg.progress) as console:
        summary = run_scan(cfg, on_row=console.on_row, on_listed=console.on_listed)
    console.print_summary(summary, cfg)
    return 0


# ---------------------------------------------------------------- results
def register_results(sub: Any) -> None:
    p = sub.add_parser("results", help="show warehouse rows")
    p.add_argument(
        "--warehouse",
        type=warehouse_arg,
        default=os.environ.get("DFSCAN_WAREHOUSE"),
        help="warehouse URL (default: duckdb://out/scans.duckdb, in this directory)",
    )
    p.add_argument("--status", help="only rows with this status")
    p.add_argument("--model-version", help="only rows of this model version")
    p.add_argument("--limit", type=_positive(int), default=50)
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.set_defaults(func=run_results_command)


def run_results_command(args: argparse.Namespace) -> int:
    from operators.write_warehouse import duckdb_path
    from pipelines.console import print_results
    from pipelines.webui import open_reader
    from schemas.records import VideoStatus

    if args.status and args.status not in {s.value for s in VideoStatus}:
        raise ConfigError(
            f"unknown --status {args.status!r}: one of {', '.join(s.value for s in VideoStatus)}"
        )
    url = args.warehouse or default_warehouse(DEFAULT_OUT)
    if url.startswith("duckdb://"):
        path = duckdb_path(url)
        if path != ":memory:" and not Path(path).exists():
            raise ConfigError(f"no warehouse at {url}: run `dfscan scan` first or pass --warehouse")
    # Read-only, as the UI reads: a warehouse no scan has written to yet (a fresh
    # PostgreSQL database, a file `dfscan train --warehouse` made) has no rows, not a
    # missing-table traceback.
    warehouse = open_reader(url)
    try:
        # One row more than --limit: the table can say that the listing was cut.
        rows = (
            warehouse.query_scans(
                status=args.status, limit=args.limit + 1, model_version=args.model_version
            )
            if warehouse.table_exists(warehouse.scans_table)
            else []
        )
    finally:
        warehouse.close()
    more = len(rows) > args.limit
    rows = rows[: args.limit]
    if args.format == "json":
        for row in rows:
            print(json.dumps(row, default=str))
    else:
        print_results(rows, more=more)
    return 0


# ---------------------------------------------------------------- wiring
def build_parser() -> OneLineParser:
    from pipelines import (
        calibrate,
        dataset,
        evaluate,
        plan,
        rescore,
        runs,
        shards,
        train,
        tune,
        webui,
    )

    parser = OneLineParser(prog="dfscan", description="Scan videos for deepfaked faces.")
    parser.add_argument("--version", action="version", version=f"dfscan {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    for register in (
        register_scan,
        register_results,
        train.register,
        tune.register,
        evaluate.register,
        calibrate.register,
        runs.register,
        dataset.register,
        rescore.register,
        shards.register,
        webui.register,
        plan.register,
    ):
        register(sub)
    return parser


def _storage_errors() -> tuple[type[BaseException], ...]:
    """OSError, plus botocore's own errors (an unreachable S3 endpoint raises
    EndpointConnectionError, which is not an OSError). Evaluated only when an error
    reaches ``main``, so botocore is imported only then."""
    try:
        from botocore.exceptions import BotoCoreError
    except ImportError:
        return (OSError,)
    return (OSError, BotoCoreError)


# Arguments that name files or prefixes read or written through fsspec (not database
# URLs: --warehouse, nor endpoints: --pushgateway, --ray-address).
FSSPEC_ARGS = (
    "input",
    "faces",
    "out",
    "faces_out",
    "model",
    "pretrained",
    "data",
    "videos",
    "labels",
    "costs",
    "detector_model",
)


def check_storage_schemes(args: argparse.Namespace) -> None:
    """Refuse, in one line, a URI whose scheme fsspec does not know or whose driver is not
    installed (``gs://`` without gcsfs), before any work starts: found later, deep in a
    stage, it would surface as a traceback."""
    import fsspec.core

    for dest in FSSPEC_ARGS:
        value = getattr(args, dest, None)
        if not isinstance(value, str) or "://" not in value:
            continue
        protocol = fsspec.core.split_protocol(value)[0] or "file"
        try:
            fsspec.get_filesystem_class(protocol)
        except (ImportError, ValueError) as err:
            raise ConfigError(f"cannot open {value}: {err}") from None


class Terminated(KeyboardInterrupt):
    """SIGTERM: how Kubernetes ends a Job past its deadline or deleted, and how systemd
    stops a unit. A KeyboardInterrupt, so it ends a command as Ctrl-C does (the run
    recorded failed, its failure pushed, metrics.prom written) instead of a silent
    death that leaves the run 'running' and the JobFailed alert quiet."""


def _terminate(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the cleanup
    raise Terminated(signal.Signals(signum).name)


def main(argv: Sequence[str] | None = None) -> int:
    # Signal handlers belong to the main thread (a test may call main from another).
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main else None
    try:
        return _main(argv)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after `--` belongs to the engine (Beam pipeline options), untouched.
    engine_args: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, engine_args = argv[:cut], argv[cut + 1 :]
    parser = build_parser()
    args = parser.parse_args(argv)
    args.beam_args = engine_args
    try:
        check_storage_schemes(args)
        return int(args.func(args) or 0)
    except ConfigError as err:
        print(f"dfscan: error: {err}", file=sys.stderr)
        return 2
    except WarehouseUnavailable as err:
        # Locked or lost mid-run: the message says which; committed rows stay.
        print(f"dfscan: error: {err}", file=sys.stderr)
        return 1
    except _storage_errors() as err:
        if type(err).__name__ == "NoCredentialsError":  # a setting, not an outage
            print(
                f"dfscan: error: {err}: set the AWS_* variables or --storage-options",
                file=sys.stderr,
            )
            return 2
        # Storage or network failure that outlived the client's own retries: one line,
        # and a rerun resumes (committed work is skipped).
        print(f"dfscan: error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    except Terminated:
        print("dfscan: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("dfscan: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
