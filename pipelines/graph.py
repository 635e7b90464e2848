"""The scan as one ordered list of operators: every engine runs this same list.

Engines differ only in how they move records between the operators (a generator chain,
Ray Data ``map_batches``, Beam ``ParDo``), never in which operators run or how.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from operators.aggregate import VideoAggregator
from operators.base import Operator
from operators.extract_faces import FaceExtractor
from operators.list_videos import VideoHasher
from operators.score_faces import FaceScorer
from operators.write_face_shards import FaceShardWriter
from operators.write_warehouse import WarehouseWriter
from pipelines.config import ConfigError, ScanConfig


@dataclass(frozen=True)
class ModelInfo:
    """What the driver needs to know of the classifier before any worker loads it."""

    version: str
    arch: str
    input_size: int
    crop_scale: float
    threshold: float | None = None  # calibrated decision threshold (dfscan calibrate), if any


def resolve_model(cfg: ScanConfig) -> ModelInfo:
    """Read the checkpoint's metadata on the driver (fails fast on a bad --model)."""
    from operators.models.checkpoints import model_version
    from operators.models.scorers import read_meta

    meta, sha = read_meta(cfg.scorer.checkpoint, cfg.storage_options or None)
    return ModelInfo(
        model_version(meta, sha), meta.arch, meta.input_size, meta.crop_scale, meta.threshold
    )


def configure_for_model(cfg: ScanConfig, model: ModelInfo) -> ScanConfig:
    """Crops are cut the way the classifier was trained: its input size and crop scale."""
    scale = cfg.crop.scale if cfg.crop.scale is not None else model.crop_scale
    crop = dataclasses.replace(cfg.crop, size=model.input_size, scale=scale)
    aggregate = cfg.aggregate
    if cfg.threshold_from_model and model.threshold is not None:
        # A calibrated checkpoint carries the threshold chosen for its target FPR.
        aggregate = dataclasses.replace(aggregate, threshold=model.threshold)
    return dataclasses.replace(cfg, crop=crop, aggregate=aggregate)


def decode_workers(cfg: ScanConfig) -> int:
    """Decode worker processes of the scan's one extractor: as asked, else one per core on
    the local runner (its only parallelism for decode+detect), one elsewhere (Ray and Beam
    run an extractor per actor or worker)."""
    from operators.detect_faces import cpu_threads

    if cfg.engine.name != "local":
        if cfg.limits.decode_workers > 1:
            raise ConfigError(
                f"--decode-workers is the local runner's; {cfg.engine.name} runs one decode"
                " worker per actor or worker and scales by adding them"
            )
        return 1
    if cfg.limits.decode_workers:
        return cfg.limits.decode_workers
    return cpu_threads() if cfg.limits.isolate else 1


def shard_videos(videos: int, cap: int) -> int:
    """Videos per face shard for a scan of ``videos``: ``cap`` (16) for runs of 8 x cap
    and more, else about an eighth of the run. A part is committed, and its faces scored,
    only when it is full, so a small scan with full-size parts would decode everything
    before scoring anything; eight parts let scoring overlap decoding."""
    return _eighth_of_run(videos, cap)


def rows_per_transaction(videos: int, cap: int) -> int:
    """Warehouse rows per transaction for a scan of ``videos``: ``cap`` (256) for runs of
    8 x cap and more, else about an eighth of the run. Rows that wait for a full batch
    are lost to a kill, and a rerun decodes their videos again: a nightly run of a few
    hundred videos must not hold all its rows until its end."""
    return _eighth_of_run(videos, cap)


def _eighth_of_run(videos: int, cap: int) -> int:
    return max(1, min(cap, -(-videos // 8)))


def build_extraction_operators(cfg: ScanConfig, faces_uri: str | None = None) -> list[Operator]:
    """hash -> decode+detect -> face shards: the scan's head, which ``dfscan dataset build
    --videos`` runs alone so training crops are cut exactly as scans cut them.
    ``faces_uri`` overrides ``cfg.faces_uri`` (OUT/faces)."""
    opts = cfg.storage_options
    faces = faces_uri or cfg.faces_uri
    return [
        VideoHasher(cfg.limits.max_bytes, opts, cfg.limits.allow_prefixes),
        FaceExtractor(
            cfg.sampling, cfg.detector, cfg.crop, cfg.limits, opts, workers=decode_workers(cfg)
        ),
        FaceShardWriter(faces, cfg.run_id, cfg.crop_scale, opts, cfg.shard_max_videos),
    ]


def build_operators(cfg: ScanConfig, model: ModelInfo) -> list[Operator]:
    """hash -> decode+detect -> face shards -> score -> aggregate -> warehouse."""
    opts = cfg.storage_options
    return [
        *build_extraction_operators(cfg),
        # Never more videos per call than a shard brings at once: scoring starts per part.
        FaceScorer(cfg.scorer, opts, videos_per_call=min(8, cfg.shard_max_videos)),
        # Rows pass on a transaction's worth at a time: a batch of 64 here held every
        # row of a run under 64 videos until its end, whatever the writer's batch.
        VideoAggregator(
            cfg.aggregate, model.version, model.arch, cfg.run_id, cfg.warehouse_max_rows
        ),
        WarehouseWriter(cfg.warehouse_url, cfg.warehouse_max_rows),
    ]
