"""``dfscan runs``: list recorded training runs and tuning trials, newest first.

Rows come from the warehouse's ``training_runs`` table, written by ``dfscan train
--warehouse`` and ``dfscan tune --warehouse``: what was run (config), on what (data
hash), by which code, how it scored and where its checkpoint is. Enough to compare
runs and to pick the one to calibrate and roll out.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from pipelines.config import ConfigError

_METRICS = ("val_auc", "val_acc", "val_loss", "epochs_run")


def _metric(row: dict[str, Any], name: str) -> str:
    try:
        value = json.loads(row.get("metrics") or "{}").get(name)
    except json.JSONDecodeError:
        return "?"
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def format_runs(rows: list[dict[str, Any]]) -> list[str]:
    """One line per run: id, command, status, start, duration, main metrics, artifact."""
    head = f"{'run_id':<40} {'command':<10} {'status':<9} {'started (UTC)':<19} {'min':>5} "
    head += " ".join(f"{m:>10}" for m in _METRICS) + f" {'data':<12} artifact"
    lines = [head]
    for r in rows:
        started = r["started_at"]
        ended = r.get("ended_at")
        minutes = f"{(ended - started).total_seconds() / 60:.1f}" if ended else "-"
        line = f"{r['run_id']:<40} {r['command']:<10} {r['status']:<9} "
        line += f"{started.strftime('%Y-%m-%d %H:%M:%S'):<19} {minutes:>5} "
        line += " ".join(f"{_metric(r, m):>10}" for m in _METRICS)
        line += f" {(r.get('data_hash') or '-')[:12]:<12} {r.get('artifact_uri') or '-'}"
        lines.append(line)
    return lines


def register(sub: Any) -> None:
    from pipelines.cli import warehouse_arg

    p = sub.add_parser("runs", help="list recorded training runs and tuning trials")
    p.add_argument(
        "--warehouse",
        type=warehouse_arg,
        default=os.environ.get("DFSCAN_WAREHOUSE"),
        required=os.environ.get("DFSCAN_WAREHOUSE") is None,
        help="warehouse URL the runs were recorded in (train/tune --warehouse)",
    )
    p.add_argument("--command", choices=["train", "tune", "tune-trial"], help="only these")
    p.add_argument("--parent", help="only the trials of this tune run")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    from pathlib import Path

    from operators.write_warehouse import build_warehouse, duckdb_path

    url = args.warehouse
    if url.startswith("duckdb://"):
        path = duckdb_path(url)
        if path != ":memory:" and not Path(path).exists():
            raise ConfigError(f"no warehouse at {url}: train with --warehouse first")
    warehouse = build_warehouse(url)
    try:
        warehouse.ensure_schema()
        rows = warehouse.query_training_runs(
            limit=args.limit, command=args.command, parent_run_id=args.parent
        )
    finally:
        warehouse.close()
    if args.format == "json":
        for row in rows:
            print(json.dumps(row, default=str))
    else:
        for line in format_runs(rows):
            print(line)
    return 0
