"""Versioned Arrow schemas: every Parquet file and warehouse table is written with one.

A schema is never inferred from the first batch: an all-null column or an empty batch
would otherwise change the type of a column between shards. The version lives in the
schema metadata so a reader can tell which layout a file has.
"""

from __future__ import annotations

import pyarrow as pa

FACE_SHARD_SCHEMA_VERSION = 1
VIDEO_SCANS_SCHEMA_VERSION = 1


def _with_meta(schema: pa.Schema, name: str, version: int) -> pa.Schema:
    return schema.with_metadata({"dfscan.schema": name, "dfscan.schema_version": str(version)})


def _floats(n: int) -> pa.DataType:
    # "element" is the Parquet-compliant name of list items: what a read returns.
    return pa.list_(pa.field("element", pa.float32(), nullable=False), n)


FACE_SHARD_SCHEMA: pa.Schema = _with_meta(
    pa.schema(
        [
            pa.field("video_id", pa.string(), nullable=False),
            pa.field("source_uri", pa.string(), nullable=False),
            pa.field("frame_index", pa.int32(), nullable=False),
            pa.field("pts_s", pa.float64(), nullable=False),
            pa.field("track_id", pa.int32(), nullable=False),
            pa.field("bbox", _floats(4), nullable=False),  # x1, y1, x2, y2
            pa.field("landmarks", _floats(10), nullable=False),  # 5 x (x, y)
            pa.field("det_score", pa.float32(), nullable=False),
            pa.field("crop", pa.binary(), nullable=False),  # JPEG bytes
            pa.field("crop_width", pa.int16(), nullable=False),
            pa.field("crop_height", pa.int16(), nullable=False),
            pa.field("crop_scale", pa.float32(), nullable=False),
            pa.field("sampling", pa.string(), nullable=False),
            pa.field("detector", pa.string(), nullable=False),
            pa.field("detector_sha256", pa.string(), nullable=False),
            pa.field("run_id", pa.string(), nullable=False),
        ]
    ),
    "face_shard",
    FACE_SHARD_SCHEMA_VERSION,
)

# The warehouse row (schemas.records.VideoScan) as Arrow: the single source every
# warehouse dialect's DDL is generated from (see schemas/warehouse.py).
VIDEO_SCANS_SCHEMA: pa.Schema = _with_meta(
    pa.schema(
        [
            pa.field("video_id", pa.string(), nullable=False),
            pa.field("model_version", pa.string(), nullable=False),
            pa.field("uri", pa.string(), nullable=False),
            pa.field("size_bytes", pa.int64(), nullable=False),
            pa.field("mtime", pa.float64()),
            pa.field("status", pa.string(), nullable=False),
            pa.field("error", pa.string()),
            pa.field("frames_sampled", pa.int32(), nullable=False),
            pa.field("frames_with_face", pa.int32(), nullable=False),
            pa.field("faces", pa.int32(), nullable=False),
            pa.field("tracks", pa.int32(), nullable=False),
            pa.field("score_mean", pa.float64()),
            pa.field("score_max", pa.float64()),
            pa.field("score_confident", pa.float64()),
            pa.field("track_scores", pa.string(), nullable=False),
            pa.field("fake_probability", pa.float64()),
            pa.field("label", pa.string()),
            pa.field("threshold", pa.float64(), nullable=False),
            pa.field("decision_rule", pa.string(), nullable=False),
            pa.field("model_arch", pa.string(), nullable=False),
            pa.field("detector", pa.string(), nullable=False),
            pa.field("detector_sha256", pa.string(), nullable=False),
            pa.field("sampling", pa.string(), nullable=False),
            pa.field("duration_s", pa.float64()),
            pa.field("width", pa.int32()),
            pa.field("height", pa.int32()),
            pa.field("decode_s", pa.float64(), nullable=False),
            pa.field("detect_s", pa.float64(), nullable=False),
            pa.field("score_s", pa.float64(), nullable=False),
            pa.field("shard_uri", pa.string()),
            pa.field("run_id", pa.string(), nullable=False),
            pa.field("scanned_at", pa.timestamp("us", tz="UTC"), nullable=False),
        ]
    ),
    "video_scans",
    VIDEO_SCANS_SCHEMA_VERSION,
)

VIDEO_SCANS_KEY = ("video_id", "model_version")

LABELLED_FACE_SHARD_SCHEMA_VERSION = 2
LABELS_METADATA_KEY = b"dfscan.enum"  # same key schemas.warehouse reads for CHECKs

# A training data set (``dfscan dataset build``): the face shard's columns unchanged, so
# training decodes exactly the crops a scan cut, plus the label, the source video, the
# saved split, the split group and the manipulation method.
# - ``source_id``: the source video (for a fake, the real video it was made from; for a
#   real video, itself).
# - ``group_id`` (v2): the group a split keeps on one side: a connected component over
#   source videos and identities (an FF++ fake ``000_003`` joins people 000 and 003),
#   so no person and no source video is on two sides.
# - ``method`` (v2): how a fake was made where the labels say (FF++ ``Deepfakes``,
#   ``Face2Face``, ...); null for real videos and unknown methods.
# v1 files (no group_id, method) still read under this schema: both come back null and
# readers take ``source_id`` as the group, which is what v1 split by.
LABELLED_FACE_SHARD_SCHEMA: pa.Schema = _with_meta(
    pa.schema(
        [
            *FACE_SHARD_SCHEMA,
            pa.field(
                "label", pa.string(), nullable=False, metadata={LABELS_METADATA_KEY: b"REAL,FAKE"}
            ),
            pa.field("source_id", pa.string(), nullable=False),
            pa.field(
                "split",
                pa.string(),
                nullable=False,
                metadata={LABELS_METADATA_KEY: b"train,val,test"},
            ),
            # Nullable only so that v1 files, which lack them, read under this schema.
            pa.field("group_id", pa.string()),
            pa.field("method", pa.string()),
        ]
    ),
    "labelled_face_shard",
    LABELLED_FACE_SHARD_SCHEMA_VERSION,
)

# What ``dfscan dataset build --videos`` gets back per video from an engine (Beam hands
# results to the driver as Parquet): the extraction's outcome, not a scored row.
EXTRACTION_OUTCOME_SCHEMA = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("faces", pa.int64(), nullable=False),
        pa.field("shard_uri", pa.string()),
    ]
)
