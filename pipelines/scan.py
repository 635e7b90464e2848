"""A scan from start to end, the same on every engine: list, run the operators on the
chosen engine, count, record the run, export metrics.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

from operators.base import Operator
from operators.list_videos import URI_ID_PREFIX, ListingReport, VideoHasher, list_videos
from operators.metrics import MetricsPusher, ScanMetrics
from operators.redact import redact, redact_values
from operators.write_face_shards import commit_run, run_has_commits
from pipelines import code_version
from pipelines.config import ConfigError, EngineConfig, RescoreConfig, ScanConfig
from pipelines.graph import (
    ModelInfo,
    build_operators,
    configure_for_model,
    resolve_model,
    rows_per_transaction,
    shard_videos,
)
from pipelines.incremental import plan_scan
from schemas.records import VideoFile, VideoScan

log = logging.getLogger(__name__)

# The Pushgateway job of scans; with the run id it is the grouping key of every push.
SCAN_JOB = "dfscan_scan"


class Runner(Protocol):
    name: str

    def run(
        self, files: list[VideoFile], operators: list[Operator], metrics: ScanMetrics
    ) -> Any: ...


def _local_runner(engine: EngineConfig) -> Runner:
    from pipelines.local import LocalRunner

    return LocalRunner()


def _beam_runner(engine: EngineConfig) -> Runner:
    from pipelines.beam_runner import BeamRunner

    return BeamRunner(engine)


def _ray_runner(engine: EngineConfig) -> Runner:
    from pipelines.ray_runner import RayRunner

    return RayRunner(engine)


# Engines by name; each module is imported only when chosen (Ray and Beam are heavy).
# A runner's run(files, operators, metrics) yields one VideoScan per listed file.
RUNNERS: dict[str, Callable[[EngineConfig], Runner]] = {
    "local": _local_runner,
    "beam": _beam_runner,
    "ray": _ray_runner,
}


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
    metrics: ScanMetrics | None = None  # the run's registry, for summaries and benchmarks
    skipped: int = 0  # already in the warehouse under this model version (no --rescan)
    duplicates: int = 0  # same bytes as another listed URI: decoded once, URI recorded
    hashed: int = 0  # files read to learn their content id
    cached: int = 0  # files whose id came from the warehouse's video_uris
    # What --since/--until left out, and a date template's days: listing's own count.
    listing: ListingReport = field(default_factory=ListingReport)

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
    if not row.video_id.startswith(URI_ID_PREFIX):
        # An id made from the URI means the bytes were never read (over --max-bytes,
        # refused, unreadable): its size is not bytes read.
        metrics.add_bytes(max(row.size_bytes, 0))
    if row.fake_probability is not None and row.label:
        metrics.observe_verdict(row.model_version, row.fake_probability, row.label)
    if row.detector_sha256 and metrics.info.get("detector_sha256") != row.detector_sha256:
        # The detector's weights are hashed on the worker; the first row brings it here.
        metrics.set_info(detector_sha256=row.detector_sha256)


def config_json(cfg: ScanConfig | RescoreConfig) -> str:
    d = asdict(cfg)
    d.pop("storage_options", None)  # may hold credentials: never recorded
    # URL passwords (warehouse, Pushgateway, engine args) are masked, never recorded.
    return json.dumps(redact_values(d), sort_keys=True, default=str)


def check_local_out(out_uri: str, storage_options: dict[str, Any]) -> None:
    """Make a local ``--out`` now, or fail in one line: found when the first face shard
    is written, it would cost the decode before it. (A bucket is not probed: making a
    prefix there may create the bucket.)"""
    import fsspec
    from fsspec.implementations.local import LocalFileSystem

    fs, path = fsspec.core.url_to_fs(out_uri, **storage_options)
    if not isinstance(fs, LocalFileSystem):
        return
    try:
        fs.makedirs(path, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot write --out {out_uri}: {err.strerror or err}") from None


def run_scan(
    cfg: ScanConfig,
    on_row: Callable[[VideoScan, int], None] | None = None,
    on_listed: Callable[[int], None] | None = None,
) -> ScanSummary:
    from operators.write_warehouse import WarehouseUnavailable, build_warehouse

    started = time.time()
    # The warehouse before anything else: a locked file or an unreachable server fails
    # here, in one line, before the model is loaded, a bucket listed or a frame decoded.
    # This connection stays open until the run record is closed: a DuckDB file is then
    # this process's from the first check to the last row (the writer, in this process
    # on every engine's default runner, shares it), so a dashboard or `dfscan results`
    # opened mid-run is refused instead of failing the scan after its decode.
    warehouse = build_warehouse(cfg.warehouse_url)
    warehouse.ensure_schema()
    listing = ListingReport()
    try:
        check_local_out(cfg.out_uri, cfg.storage_options)
        model: ModelInfo = resolve_model(cfg)
        cfg = configure_for_model(cfg, model)
        files = list(
            list_videos(
                cfg.input_uri,
                cfg.storage_options,
                cfg.limits.allow_prefixes,
                window=cfg.window,
                report=listing,
            )
        )
    except BaseException:
        warehouse.close()  # DuckDB: free the file for other processes
        raise
    runner = RUNNERS[cfg.engine.name](cfg.engine)
    metrics = ScanMetrics()
    metrics.set_info(
        model_version=model.version,
        model_arch=model.arch,
        detector=cfg.detector.name,
        code_version=code_version(),
        runner=runner.name,
    )
    # Pushed every cfg.push_interval_s while the scan runs and once more at the end.
    pusher = (
        MetricsPusher(
            metrics,
            cfg.pushgateway,
            job=SCAN_JOB,
            grouping_key={"run_id": cfg.run_id},
            interval_s=cfg.push_interval_s,
        )
        if cfg.pushgateway
        else None
    )
    warehouse.start_run(cfg.run_id, "scan", config_json(cfg), code_version())
    summary = ScanSummary(cfg.run_id, runner.name, model.version, metrics=metrics, listing=listing)
    status, error = "failed", None
    failure: BaseException | None = None
    if pusher is not None:
        pusher.start()
    try:
        hasher, *operators = build_operators(cfg, model)
        if not isinstance(hasher, VideoHasher):
            raise RuntimeError(f"the scan graph must start with the hasher, not {hasher.name}")
        # Hash through the same runner (the bytes are read where the engine reads), then
        # decide on the driver: dedupe and skip need every id at once.
        plan = plan_scan(
            files,
            lambda todo: list(runner.run(todo, [hasher], metrics)),
            warehouse,
            model.version,
            cfg.run_id,
            rescan=cfg.rescan,
        )
        summary.skipped, summary.duplicates = len(plan.skipped), len(plan.duplicates)
        summary.hashed, summary.cached = plan.hashed, plan.cached
        # Only the refs left to decode outlive the plan: the listing and the skipped and
        # duplicate refs (~0.5 KB a video; most of a nightly listing) are let go here.
        refs: list[Any] = plan.todo  # the runner feeds what the first operator takes
        del files, plan
        per_shard = shard_videos(len(refs), cfg.shard_max_videos)
        rows = rows_per_transaction(len(refs), cfg.warehouse_max_rows)
        if (per_shard, rows) != (cfg.shard_max_videos, cfg.warehouse_max_rows):
            sized = replace(cfg, shard_max_videos=per_shard, warehouse_max_rows=rows)
            operators = build_operators(sized, model)[1:]
        if on_listed:
            on_listed(len(refs))
        metrics.set_backlog(len(refs))
        for row in runner.run(refs, operators, metrics) if refs else ():
            summary.add(row)
            record_row_metrics(metrics, row)
            metrics.set_backlog(len(refs) - summary.videos)
            if on_row:
                on_row(row, len(refs))
        if refs or run_has_commits(cfg.faces_uri, cfg.run_id, cfg.storage_options):
            # Every engine has committed its parts by now: the run's summary marks it
            # complete in the face-shard dataset (operators/shard_layout.py). A rerun of
            # a killed run id with nothing left to decode writes it too.
            commit_run(cfg.faces_uri, cfg.run_id, cfg.storage_options)
        status = "succeeded"
        metrics.mark_success()
    except BaseException as exc:
        error = f"{type(exc).__name__}: {exc}"
        failure = exc
        metrics.mark_failure()
        raise
    finally:
        summary.seconds = time.time() - started
        unrecorded: WarehouseUnavailable | None = None  # rows written, record not closed
        try:
            _finish_run(cfg, status, dict(summary.counts), error, failure)
        except WarehouseUnavailable as err:
            unrecorded = err
            metrics.mark_failure()  # the command fails: the metrics say so too
        finally:
            warehouse.close()  # DuckDB: only now may another process have the file
        try:
            _after_failure(
                failure or unrecorded,
                "metrics textfile",
                lambda: metrics.write_textfile(
                    cfg.out_uri.rstrip("/") + "/metrics.prom", cfg.storage_options
                ),
            )
        finally:
            if pusher is not None:
                pusher.stop()  # the final values; a failed push was logged, never raised
        if unrecorded is not None:
            raise unrecorded
    return summary


def _warehouse_outage(err: BaseException) -> bool:
    """A warehouse that is locked, lost, or refuses a new connection (ConfigError is
    what a first connection that fails raises)."""
    from operators.write_warehouse import WarehouseUnavailable

    return isinstance(err, (WarehouseUnavailable, ConfigError))


def _after_failure(failure: BaseException | None, what: str, step: Callable[[], None]) -> None:
    """Run an end-of-scan step. While the scan is failing, the step failing too must not
    replace the scan's own error: it is one warning line, or nothing when it is the
    same warehouse outage that failed the scan."""
    if failure is None:
        step()
        return
    try:
        step()
    except Exception as err:
        if not (_warehouse_outage(failure) and _warehouse_outage(err)):
            log.warning("%s not written either: %s", what, redact(str(err)))


def _finish_run(
    cfg: ScanConfig,
    status: str,
    counts: dict[str, int],
    error: str | None,
    failure: BaseException | None,
) -> None:
    """Close the run record, on a fresh connection (PostgreSQL: the scan's own may have
    been cut while it idled; DuckDB: it shares the file the scan still holds).

    After a successful scan every row is committed; a warehouse lost just before the
    record is closed still fails the command (the record would say "running"), with a
    message that says so.
    """
    from operators.write_warehouse import WarehouseUnavailable, build_warehouse

    def finish() -> None:
        with build_warehouse(cfg.warehouse_url) as warehouse:
            warehouse.finish_run(cfg.run_id, status, counts, error)

    if failure is not None:
        _after_failure(failure, f"run {cfg.run_id} record", finish)
        return
    try:
        finish()
    except (WarehouseUnavailable, ConfigError) as err:
        raise WarehouseUnavailable(
            f"every video's row is written, but run {cfg.run_id} could not be recorded"
            f" as finished: {err}"
        ) from err
