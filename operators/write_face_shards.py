"""Face shards: the crops of a batch of videos as one Parquet file, committed atomically.

Layout: ``<faces>/detector=<name>/part-<digest>.parquet``. The digest is a hash of the
sorted video ids and the settings that shaped the crops, so a rerun of the same batch
writes the same name (it replaces, never duplicates). A part is written under
``<faces>/_tmp/`` and moved into place only when complete: a local rename is atomic and
an object-store PUT of the moved object is all-or-nothing, so a crash never leaves a
half shard where readers look. Readers (pyarrow datasets) skip ``_``-prefixed paths.

Row groups hold 1024 faces (~10-20 MB of 224 px JPEGs): large enough for efficient
scans, small enough that reading one video's thumbnails does not pull a whole file;
rows are sorted by video so row-group statistics on ``video_id`` prune reads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from operators.base import Operator, Resources
from schemas.arrow import FACE_SHARD_SCHEMA
from schemas.records import VideoFaces

ROW_GROUP_ROWS = 1024


def shard_name(videos: list[VideoFaces], crop_scale: float) -> str:
    keys = sorted(
        f"{v.ref.video_id}|{v.sampling}|{v.detector.sha256}|{crop_scale:g}" for v in videos
    )
    digest = hashlib.sha256("\n".join(keys).encode()).hexdigest()[:24]
    return f"part-{digest}.parquet"


def faces_table(videos: list[VideoFaces], run_id: str, crop_scale: float) -> pa.Table:
    """The faces of ``videos`` as an Arrow table with the explicit shard schema."""
    cols: dict[str, list[Any]] = {f.name: [] for f in FACE_SHARD_SCHEMA}
    for v in sorted(videos, key=lambda v: v.ref.video_id):
        for face in v.faces:
            cols["video_id"].append(v.ref.video_id)
            cols["source_uri"].append(v.ref.uri)
            cols["frame_index"].append(face.frame_index)
            cols["pts_s"].append(face.pts_s)
            cols["track_id"].append(face.track_id)
            cols["bbox"].append(list(face.bbox))
            cols["landmarks"].append(list(face.landmarks))
            cols["det_score"].append(face.det_score)
            cols["crop"].append(face.jpeg)
            cols["crop_width"].append(face.crop_width)
            cols["crop_height"].append(face.crop_height)
            cols["crop_scale"].append(crop_scale)
            cols["sampling"].append(v.sampling)
            cols["detector"].append(v.detector.name)
            cols["detector_sha256"].append(v.detector.sha256)
            cols["run_id"].append(run_id)
    return pa.Table.from_pydict(cols, schema=FACE_SHARD_SCHEMA)


class FaceShardWriter(Operator[VideoFaces, VideoFaces]):
    """Writes the faces of each batch to one committed part; passes the videos on with
    ``shard_uri`` set (videos without faces pass through untouched)."""

    name = "write_shards"

    def __init__(
        self,
        faces_uri: str,
        run_id: str,
        crop_scale: float,
        storage_options: dict[str, Any] | None = None,
        videos_per_shard: int = 64,
    ) -> None:
        self.faces_uri = faces_uri.rstrip("/")
        self.run_id = run_id
        self.crop_scale = crop_scale
        self.storage_options = dict(storage_options or {})
        self.videos_per_shard = videos_per_shard
        self._fs: Any = None
        self._root = ""

    @property
    def resources(self) -> Resources:
        # I/O bound; a shard of 64 videos is ~2k faces, ~20-40 MB.
        return Resources(cpus=0.25, batch_size=self.videos_per_shard)

    def setup(self) -> None:
        self._fs, self._root = fsspec.core.url_to_fs(self.faces_uri, **self.storage_options)

    def process_batch(self, items: list[VideoFaces]) -> list[VideoFaces]:
        with_faces = [v for v in items if v.faces]
        if not with_faces:
            return list(items)
        by_detector: dict[str, list[VideoFaces]] = {}
        for v in with_faces:
            by_detector.setdefault(v.detector.name, []).append(v)
        shard_of: dict[str, str] = {}
        for detector, videos in sorted(by_detector.items()):
            uri = self.write(videos, detector)
            shard_of.update({v.ref.video_id: uri for v in videos})
        return [
            dataclasses.replace(v, shard_uri=shard_of[v.ref.video_id])
            if v.ref.video_id in shard_of
            else v
            for v in items
        ]

    def write(self, videos: list[VideoFaces], detector: str) -> str:
        """Write one part and commit it by moving it into place; return its URI."""
        if self._fs is None:
            self.setup()
        fs = self._fs
        table = faces_table(videos, self.run_id, self.crop_scale)
        name = shard_name(videos, self.crop_scale)
        final = f"{self._root}/detector={detector}/{name}"
        tmp = f"{self._root}/_tmp/{name}.{uuid.uuid4().hex}"
        fs.makedirs(f"{self._root}/_tmp", exist_ok=True)
        fs.makedirs(f"{self._root}/detector={detector}", exist_ok=True)
        with fs.open(tmp, "wb") as fh:
            pq.write_table(table, fh, row_group_size=ROW_GROUP_ROWS, compression="zstd")
        fs.mv(tmp, final)
        return str(fs.unstrip_protocol(final))


def read_face_shards(
    faces_uri: str,
    storage_options: dict[str, Any] | None = None,
    columns: list[str] | None = None,
    video_ids: list[str] | None = None,
) -> pa.Table:
    """Committed face rows under ``faces_uri`` (temporary files are never read)."""
    import pyarrow.dataset as ds

    fs, root = fsspec.core.url_to_fs(faces_uri, **(storage_options or {}))
    if not fs.exists(root):
        return FACE_SHARD_SCHEMA.empty_table()
    dataset = ds.dataset(
        root,
        schema=FACE_SHARD_SCHEMA,
        format="parquet",
        filesystem=fs,
        ignore_prefixes=[".", "_"],
    )
    flt = ds.field("video_id").isin(video_ids) if video_ids is not None else None
    return dataset.to_table(columns=columns, filter=flt)
