"""``dfscan rescore``: score committed face shards with a new checkpoint, no decoding.

A backfill after a model update: the faces a scan cut are already in Parquet, so a new
model only needs them read back, scored, aggregated and written as new warehouse rows
under its own ``model_version``, next to the old rows (the key is (video_id,
model_version), so nothing is replaced). The operators after decode are the scan's own
(``FaceScorer``, ``VideoAggregator``, ``WarehouseWriter``), on the same runners;
``ShardFaceReader`` takes the place of decode+detect.

Which faces: only parts a commit record names (``operators/read_shards.py``), and
each video's faces from ONE of them, so a video whose faces were written twice (a
rerun that batched it with other videos) is not counted twice.
The part named by the video's newest warehouse row (``shard_uri``) wins; without a row,
the part of the greatest run id. Only videos with faces are in shards: videos without
a face keep rows only under the models they were scanned with.

Crops are reused as cut at scan time, so a checkpoint trained on another crop scale
is refused (rescan instead); a different input size is fine (crops are resized).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import fsspec
import pyarrow as pa

from operators.read_shards import read_face_shards
from operators.write_warehouse import Warehouse, build_warehouse
from pipelines.config import (
    AggregateConfig,
    ConfigError,
    EngineConfig,
    RescoreConfig,
    ScorerConfig,
)
from schemas.records import DetectorInfo, ShardVideo, VideoMeta, VideoRef, VideoScan

_INDEX_COLUMNS = [
    "video_id",
    "source_uri",
    "run_id",
    "detector",
    "detector_sha256",
    "sampling",
    "crop_scale",
]


def shard_index(faces_uri: str, storage_options: dict[str, Any] | None = None) -> pa.Table:
    """One row per (video, committed part): the small columns only, never the crops."""
    table = read_face_shards(
        faces_uri, storage_options, columns=[*_INDEX_COLUMNS, "__filename"], once_per_cut=False
    )
    if table.num_rows == 0:
        return table
    # Within one part a video has one source, run, detector, sampling and crop scale, so
    # "max" just picks that value: columns come out as run_id_max, sampling_max, ...
    return table.group_by(["video_id", "__filename"]).aggregate(
        [(c, "max") for c in _INDEX_COLUMNS if c != "video_id"]
    )


def plan_rescore(
    cfg: RescoreConfig,
    warehouse: Warehouse,
    model_version: str,
    crop_scale: float,
) -> tuple[list[ShardVideo], int]:
    """The videos to score (one part each) and how many were skipped as already done."""
    fs, _ = fsspec.core.url_to_fs(cfg.faces_uri, **cfg.storage_options)
    index = shard_index(cfg.faces_uri, cfg.storage_options)
    parts: dict[str, list[dict[str, Any]]] = {}
    for row in index.to_pylist():
        row["shard_uri"] = str(fs.unstrip_protocol(row["__filename"]))
        parts.setdefault(row["video_id"], []).append(row)
    ids = sorted(parts)
    done = set() if cfg.rescan else warehouse.scanned_keys(model_version, ids)
    prior = warehouse.latest_scans(ids)
    todo: list[ShardVideo] = []
    for vid in ids:
        if vid in done:
            continue
        candidates = parts[vid]
        named = prior.get(vid, {}).get("shard_uri")
        chosen = next((p for p in candidates if p["shard_uri"] == named), None)
        if chosen is None:
            chosen = max(candidates, key=lambda p: (p["run_id_max"], p["shard_uri"]))
        scale = chosen["crop_scale_max"]
        if not math.isclose(scale, crop_scale, rel_tol=1e-6):
            raise ConfigError(
                f"faces of {vid} were cut at crop scale {scale:g} but the model expects"
                f" {crop_scale:g}: rescan the videos with this model instead"
            )
        old = prior.get(vid)
        meta = None
        if old is not None and old["width"] is not None and old["height"] is not None:
            meta = VideoMeta(old["duration_s"], None, old["width"], old["height"], "", None)
        todo.append(
            ShardVideo(
                ref=VideoRef(
                    vid,
                    old["uri"] if old else chosen["source_uri_max"],
                    int(old["size_bytes"]) if old else -1,  # -1: unknown without a row
                    old["mtime"] if old else None,
                ),
                shard_uri=chosen["shard_uri"],
                detector=DetectorInfo(chosen["detector_max"], chosen["detector_sha256_max"]),
                sampling=chosen["sampling_max"],
                frames_sampled=int(old["frames_sampled"]) if old else 0,
                meta=meta,
            )
        )
    return todo, len(done)


def build_rescore_operators(cfg: RescoreConfig, version: str, arch: str) -> list[Any]:
    """read shards -> score -> aggregate -> warehouse: the scan's tail on shard input."""
    from operators.aggregate import VideoAggregator
    from operators.read_shards import ShardFaceReader
    from operators.score_faces import FaceScorer
    from operators.write_warehouse import WarehouseWriter

    opts = cfg.storage_options
    return [
        ShardFaceReader(opts),
        FaceScorer(cfg.scorer, opts),
        VideoAggregator(cfg.aggregate, version, arch, cfg.run_id),
        WarehouseWriter(cfg.warehouse_url),
    ]


def run_rescore(
    cfg: RescoreConfig,
    on_row: Callable[[VideoScan, int], None] | None = None,
    on_listed: Callable[[int], None] | None = None,
) -> Any:
    """Score every committed video with ``cfg.scorer.checkpoint``; returns a ScanSummary."""
    from operators.metrics import ScanMetrics
    from operators.models.checkpoints import model_version
    from operators.models.scorers import read_meta
    from pipelines import code_version
    from pipelines.scan import (
        RUNNERS,
        ScanSummary,
        _after_failure,
        config_json,
        record_row_metrics,
    )

    started = time.time()
    meta, sha = read_meta(cfg.scorer.checkpoint, cfg.storage_options or None)
    version = model_version(meta, sha)
    if cfg.threshold_from_model and meta.threshold is not None:
        # A calibrated checkpoint carries the threshold chosen for its target FPR.
        cfg = dataclasses.replace(
            cfg, aggregate=dataclasses.replace(cfg.aggregate, threshold=meta.threshold)
        )
    runner = RUNNERS[cfg.engine.name](cfg.engine)
    metrics = ScanMetrics()
    metrics.set_info(model_version=version, code_version=code_version(), runner=runner.name)
    # Open until the run record is closed, as a scan's: the DuckDB file stays this
    # process's (the writer shares it), so a reader that comes mid-run is refused.
    warehouse = build_warehouse(cfg.warehouse_url)
    warehouse.ensure_schema()
    warehouse.start_run(cfg.run_id, "rescore", config_json(cfg), code_version())
    summary = ScanSummary(cfg.run_id, runner.name, version, metrics=metrics)
    status, error = "failed", None
    failure: BaseException | None = None
    try:
        todo, summary.skipped = plan_rescore(cfg, warehouse, version, meta.crop_scale)
        if on_listed:
            on_listed(len(todo))
        items: list[Any] = list(todo)
        operators = build_rescore_operators(cfg, version, meta.arch)
        for row in runner.run(items, operators, metrics) if items else ():
            summary.add(row)
            record_row_metrics(metrics, row)
            if on_row:
                on_row(row, len(items))
        status = "succeeded"
        metrics.mark_success()
    except BaseException as exc:
        error = f"{type(exc).__name__}: {exc}"
        failure = exc
        raise
    finally:
        summary.seconds = time.time() - started

        def finish() -> None:
            # A fresh connection: PostgreSQL may have cut the idle one.
            with build_warehouse(cfg.warehouse_url) as record:
                record.finish_run(cfg.run_id, status, dict(summary.counts), error)

        try:
            # Failing too, the record is a warning: the run's own error is what is raised.
            _after_failure(failure, f"run {cfg.run_id} record", finish)
        finally:
            warehouse.close()
    return summary


# ---------------------------------------------------------------- command line
def register(sub: Any) -> None:
    from operators.aggregate import DECISION_RULES
    from pipelines.cli import warehouse_arg
    from pipelines.limits_cli import _fraction
    from pipelines.scoring_cli import add_scoring_arguments

    p = sub.add_parser("rescore", help="score committed face shards with a new model (no decoding)")
    p.add_argument("--faces", required=True, help="face shards URI (a scan's OUT/faces)")
    p.add_argument("--model", required=True, help="the new classifier checkpoint")
    p.add_argument(
        "--warehouse",
        type=warehouse_arg,
        help="warehouse URL (default: duckdb://<OUT>/scans.duckdb when --faces is OUT/faces)",
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
    p.add_argument("--runner", default="local", help="engine: local (default), ray, beam")
    p.add_argument("--ray-address", help="connect to this Ray cluster (auto, ray://head:10001)")
    p.add_argument("--run-id", help="id of this run (default: time + random)")
    p.add_argument("--storage-options", help="JSON object passed to fsspec (e.g. endpoint)")
    p.add_argument("--rescan", action="store_true", help="score again videos already done")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_rescore_command)


def build_rescore_config(args: argparse.Namespace) -> RescoreConfig:
    from operators.read_shards import require_faces_root
    from pipelines.cli import _is_local, _local_path, _storage_options, default_warehouse
    from pipelines.cli import new_run_id as make_run_id
    from pipelines.scan import RUNNERS
    from pipelines.scoring_cli import scorer_settings

    if args.runner not in RUNNERS:
        raise ConfigError(f"unknown --runner {args.runner!r}: choose one of {', '.join(RUNNERS)}")
    if _is_local(args.model):
        from pathlib import Path

        if not Path(_local_path(args.model)).exists():
            raise ConfigError(f"no model at {args.model}: pass --model CKPT")
    faces = args.faces.rstrip("/")
    warehouse = args.warehouse
    if warehouse is None:
        if not faces.endswith("/faces"):
            raise ConfigError("--faces is not OUT/faces: pass --warehouse")
        warehouse = default_warehouse(faces[: -len("/faces")])
    batch_size, backend = scorer_settings(args)
    require_faces_root(faces, _storage_options(args.storage_options))
    return RescoreConfig(
        faces_uri=faces,
        warehouse_url=warehouse,
        run_id=args.run_id or make_run_id(),
        scorer=ScorerConfig(
            checkpoint=args.model, device=args.device, batch_size=batch_size, backend=backend
        ),
        aggregate=AggregateConfig(
            rule=args.rule,
            threshold=AggregateConfig.threshold if args.threshold is None else args.threshold,
        ),
        threshold_from_model=args.threshold is None,
        storage_options=_storage_options(args.storage_options),
        engine=EngineConfig(args.runner, args.ray_address, tuple(getattr(args, "beam_args", ()))),
        rescan=args.rescan,
        progress=not args.no_progress,
    )


def run_rescore_command(args: argparse.Namespace) -> int:
    from pipelines.console import ScanConsole

    cfg = build_rescore_config(args)
    with ScanConsole(enabled=cfg.progress) as console:
        summary = run_rescore(cfg, on_row=console.on_row, on_listed=console.on_listed)
    console.print_summary(summary, cfg)
    return 0
