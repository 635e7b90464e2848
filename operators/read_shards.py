"""Rebuild each video's faces from its committed face shard, so a new model can score
them without decoding the video again (``dfscan rescore``).

The driver picks one part per video (``ShardVideo.shard_uri``); this operator reads
each part of a batch once, with a ``video_id`` filter that row-group statistics turn
into a read of only the row groups holding those videos (rows are sorted by video).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from operators.base import Operator, Resources
from schemas.arrow import FACE_SHARD_SCHEMA
from schemas.records import FaceCrop, ShardVideo, VideoFaces, VideoStatus


class DamagedShard(ValueError):
    """A shard whose content breaks its schema (nulls where none may be): found by
    fuzzing; Parquet does not enforce a schema's non-null fields on read."""


def _check_no_nulls(table: pa.Table, part: str) -> None:
    """Every value present, down to the floats inside bbox and landmarks."""
    for name in table.column_names:
        column = table.column(name)
        nulls = column.null_count
        if pa.types.is_fixed_size_list(column.type) or pa.types.is_list(column.type):
            nulls += sum(chunk.flatten().null_count for chunk in column.chunks)
        if nulls:
            raise DamagedShard(f"{part}: damaged shard, {nulls} null value(s) in column {name}")


# Everything but the columns that only locate the video (already in ShardVideo).
FACE_COLUMNS = [
    "video_id",
    "frame_index",
    "pts_s",
    "track_id",
    "bbox",
    "landmarks",
    "det_score",
    "crop",
    "crop_width",
    "crop_height",
]


class ShardFaceReader(Operator[ShardVideo, VideoFaces]):
    """ShardVideo -> VideoFaces with the faces in the order the scan wrote them."""

    name = "read_shards"

    def __init__(self, storage_options: dict[str, Any] | None = None) -> None:
        self.storage_options = dict(storage_options or {})

    @property
    def resources(self) -> Resources:
        # I/O bound; 16 videos of ~30 faces is ~500 crops (a few MB) per call.
        return Resources(cpus=0.25, batch_size=16)

    def process_batch(self, items: list[ShardVideo]) -> list[VideoFaces]:
        by_part: dict[str, list[ShardVideo]] = defaultdict(list)
        for item in items:
            by_part[item.shard_uri].append(item)
        faces: dict[tuple[str, str], list[FaceCrop]] = {}
        for part, videos in by_part.items():
            ids = sorted({v.ref.video_id for v in videos})
            for vid, crops in self.read_part(part, ids).items():
                faces[(part, vid)] = crops
        out = []
        for item in items:
            crops = faces.get((item.shard_uri, item.ref.video_id), [])
            if not crops:
                # The driver listed this video in this part: a part that lost it was
                # changed under us, which is a bug or tampering, not a video's status.
                raise RuntimeError(f"no faces of {item.ref.video_id} in {item.shard_uri}")
            out.append(
                VideoFaces(
                    ref=item.ref,
                    status=VideoStatus.SCORED,
                    detector=item.detector,
                    sampling=item.sampling,
                    meta=item.meta,
                    frames_sampled=max(item.frames_sampled, len({c.frame_index for c in crops})),
                    frames_with_face=len({c.frame_index for c in crops}),
                    faces=tuple(crops),
                    shard_uri=item.shard_uri,
                )
            )
        return out

    def read_part(self, part: str, video_ids: list[str]) -> dict[str, list[FaceCrop]]:
        """The faces of ``video_ids`` in one part, per video, in file order."""
        fs, path = fsspec.core.url_to_fs(part, **self.storage_options)
        with fs.open(path, "rb") as fh:
            table = pq.read_table(
                fh,
                columns=FACE_COLUMNS,
                filters=[("video_id", "in", video_ids)],
                schema=FACE_SHARD_SCHEMA,
            )
        _check_no_nulls(table, part)
        crops: dict[str, list[FaceCrop]] = defaultdict(list)
        for row in table.to_pylist():
            crops[row["video_id"]].append(
                FaceCrop(
                    frame_index=row["frame_index"],
                    pts_s=row["pts_s"],
                    track_id=row["track_id"],
                    bbox=tuple(row["bbox"]),
                    landmarks=tuple(row["landmarks"]),
                    det_score=row["det_score"],
                    jpeg=row["crop"],
                    crop_width=row["crop_width"],
                    crop_height=row["crop_height"],
                )
            )
        return dict(crops)
