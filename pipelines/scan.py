"""A scan from start to end, the same on every engine: list, run the operators on the
chosen engine, count, record the run, export metrics.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from operators.base import Operator
from operators.list_videos import list_videos
from operators.metrics import ScanMetrics
from pipelines import code_version
from pipelines.config import EngineConfig, ScanConfig
from pipelines.graph import ModelInfo, build_operators, configure_for_model, resolve_model
from schemas.records import VideoFile, VideoScan


class Runner(Protocol):
    name: str

    def run(
        self, files: list[VideoFile], operators: list[Operator], metrics: ScanMetrics
    ) -> Any: ...


def _local_runner(engine: EngineConfig) -> Runner:
    from pipelines.local import LocalRunner

    return LocalRunner()


# Engines by name; each module is imported only when chosen (Ray and Beam are heavy).
# A runner's run(files, operators, metrics) yields one VideoScan per listed file.
RUNNERS: dict[str, Callable[[EngineConfig], Runner]] = {"local": _local_runner}


@dataclass
class ScanSummary:
    run_id: str
    runner: str
    model_version: str
    videos: int = 0
    faces: int = 0
    frames: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    labels: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def add(self, row: VideoScan) -> None:
        self.videos += 1
        self.faces += row.faces
        self.frames += row.frames_sampled
        self.counts[str(row.status.value)] += 1
        if row.label:
            self.labels[row.label] += 1


def record_row_metrics(metrics: ScanMetrics, row: VideoScan) -> None:
    """Per-video counters from the row itself, so every engine counts the same way."""
    metrics.video_done(row.status.value)
    metrics.add_frames(row.frames_sampled)
    metrics.add_faces_detected(row.faces)
    if row.fake_probability is not None:
        metrics.add_faces_scored(row.faces)
    metrics.add_bytes(max(row.size_bytes, 0))


def config_json(cfg: ScanConfig) -> str:
    d = asdict(cfg)
    d.pop("storage_options", None)  # may hold credentials: never recorded
    return json.dumps(d, sort_keys=True, default=str)


def run_scan(
    cfg: ScanConfig,
    on_row: Callable[[VideoScan, int], None] | None = None,
    on_listed: Callable[[int], None] | None = None,
) -> ScanSummary:
    from operators.write_warehouse import build_warehouse

    started = time.time()
    model: ModelInfo = resolve_model(cfg)
    cfg = configure_for_model(cfg, model)
    files = list(list_videos(cfg.input_uri, cfg.storage_options))
    if on_listed:
        on_listed(len(files))
    runner = RUNNERS[cfg.engine.name](cfg.engine)
    metrics = ScanMetrics()
    metrics.set_info(
        model_version=model.version,
        detector=cfg.detector.name,
        code_version=code_version(),
        runner=runner.name,
    )
    warehouse = build_warehouse(cfg.warehouse_url)
    warehouse.ensure_schema()
    warehouse.start_run(cfg.run_id, "scan", config_json(cfg), code_version())
    warehouse.close()
    summary = ScanSummary(cfg.run_id, runner.name, model.version)
    status, error = "failed", None
    try:
        for row in runner.run(files, build_operators(cfg, model), metrics):
            summary.add(row)
            record_row_metrics(metrics, row)
            if on_row:
                on_row(row, len(files))
        status = "succeeded"
        metrics.mark_success()
    except BaseException as exc:
        error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        summary.seconds = time.time() - started
        warehouse = build_warehouse(cfg.warehouse_url)
        warehouse.finish_run(cfg.run_id, status, dict(summary.counts), error)
        warehouse.close()
        metrics.write_textfile(cfg.out_uri.rstrip("/") + "/metrics.prom", cfg.storage_options)
        if cfg.pushgateway:
            metrics.push(cfg.pushgateway, job="dfscan_scan", grouping_key={"run_id": cfg.run_id})
    return summary
