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
from pipelines.config import ScanConfig


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


def build_extraction_operators(cfg: ScanConfig, faces_uri: str | None = None) -> list[Operator]:
    """hash -> decode+detect -> face shards: the scan's head, which ``dfscan dataset build
    --videos`` runs alone so training crops are cut exactly as scans cut them.
    ``faces_uri`` overrides ``cfg.faces_uri`` (OUT/faces)."""
    opts = cfg.storage_options
    faces = faces_uri or cfg.faces_uri
    return [
        VideoHasher(cfg.limits.max_bytes, opts, cfg.limits.allow_prefixes),
        FaceExtractor(cfg.sampling, cfg.detector, cfg.crop, cfg.limits, opts),
        FaceShardWriter(faces, cfg.run_id, cfg.crop_scale, opts, cfg.shard_max_videos),
    ]


def build_operators(cfg: ScanConfig, model: ModelInfo) -> list[Operator]:
    """hash -> decode+detect -> face shards -> score -> aggregate -> warehouse."""
    opts = cfg.storage_options
    return [
        *build_extraction_operators(cfg),
        FaceScorer(cfg.scorer, opts),
        VideoAggregator(cfg.aggregate, model.version, model.arch, cfg.run_id),
        WarehouseWriter(cfg.warehouse_url),
    ]
