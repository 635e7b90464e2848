"""Face shards: the crops of a batch of videos as one Parquet part, committed atomically.

Layout and commit protocol: ``operators/shard_layout.py``. In short, a batch is split
per (upload date, detector) into ``<faces>/dt=<date>/detector=<name>/part-<digest>.parquet``;
the digest hashes the sorted video ids and the settings that shaped the crops, so a
rerun of the same batch writes the same names (it replaces, never duplicates). Each
part is written under ``<faces>/_tmp/``, moved into place whole (a local rename is
atomic; an object-store PUT of the moved object is all-or-nothing), and only then made
visible by a commit record under ``<faces>/_commits/run=<run_id>/``. The warehouse row
comes after, so every row's shard is committed; a crash before the record leaves a part
that no reader takes. At the end of a scan the driver writes the run's summary
(``commit_run``).

Row groups hold 1024 faces (~10-20 MB of 224 px JPEGs): large enough for efficient
scans, small enough that reading one video's thumbnails does not pull a whole file;
rows are sorted by video so row-group statistics on ``video_id`` prune reads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from collections import Counter
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from operators.base import Operator, Resources
from operators.read_shards import read_face_shards, read_records
from operators.shard_layout import (
    TMP_DIR,
    CommitRecord,
    RunRecord,
    commit_path,
    part_path,
    partition_date,
    put_json,
    run_commits_dir,
    run_path,
    utc_now,
)
from schemas.arrow import FACE_SHARD_SCHEMA, FACE_SHARD_SCHEMA_VERSION
from schemas.records import VideoFaces

# read_face_shards lives with the readers; many callers import it from here.
__all__ = ["FaceShardWriter", "commit_run", "faces_table", "read_face_shards", "shard_name"]

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
    """Writes the faces of each batch to committed parts, one per (upload date, detector);
    passes the videos on with ``shard_uri`` set (videos without faces pass untouched)."""

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
        self._root = self._root.rstrip("/")

    def process_batch(self, items: list[VideoFaces]) -> list[VideoFaces]:
        groups: dict[tuple[str, str], list[VideoFaces]] = {}
        for v in items:
            if v.faces:
                key = (partition_date(v.ref.upload_time), v.detector.name)
                groups.setdefault(key, []).append(v)
        shard_of: dict[str, str] = {}
        for (date, detector), videos in sorted(groups.items()):
            uri = self.write(videos, detector, date)
            shard_of.update({v.ref.video_id: uri for v in videos})
        return [
            dataclasses.replace(v, shard_uri=shard_of[v.ref.video_id])
            if v.ref.video_id in shard_of
            else v
            for v in items
        ]

    def write(self, videos: list[VideoFaces], detector: str, date: str) -> str:
        """Write one part, move it into place, commit it; return its URI."""
        if self._fs is None:
            self.setup()
        fs, root = self._fs, self._root
        table = faces_table(videos, self.run_id, self.crop_scale)
        name = shard_name(videos, self.crop_scale)
        rel = part_path(date, detector, name)
        final = f"{root}/{rel}"
        tmp = f"{root}/{TMP_DIR}/{name}.{uuid.uuid4().hex}"
        fs.makedirs(f"{root}/{TMP_DIR}", exist_ok=True)
        fs.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
        with fs.open(tmp, "wb") as fh:
            pq.write_table(table, fh, row_group_size=ROW_GROUP_ROWS, compression="zstd")
            size = fh.tell()
        fs.mv(tmp, final)
        faces = Counter(table.column("video_id").to_pylist())
        record = CommitRecord(
            path=rel,
            rows=table.num_rows,
            bytes=int(size),
            videos=len(faces),
            faces_per_video=dict(faces),
            detector=detector,
            dt=date,
            run_id=self.run_id,
            schema_version=FACE_SHARD_SCHEMA_VERSION,
            written_at=utc_now(),
        )
        put_json(fs, root, commit_path(self.run_id, name), record.to_dict())
        return str(fs.unstrip_protocol(final))


def run_has_commits(
    faces_uri: str, run_id: str, storage_options: dict[str, Any] | None = None
) -> bool:
    """Whether ``run_id`` committed any part: a run resumed after a kill may have nothing
    left to decode and still owe its summary."""
    fs, root = fsspec.core.url_to_fs(faces_uri, **(storage_options or {}))
    return bool(fs.exists(f"{root.rstrip('/')}/{run_commits_dir(run_id)}"))


def commit_run(
    faces_uri: str, run_id: str, storage_options: dict[str, Any] | None = None
) -> RunRecord:
    """Mark ``run_id`` complete: its summary, from its commit records, under ``_runs/``.

    Called by the driver once every part of the run is committed (whatever the engine:
    the records were written by the workers, the summary is written once, here)."""
    fs, root = fsspec.core.url_to_fs(faces_uri, **(storage_options or {}))
    root = root.rstrip("/")
    commits_dir = f"{root}/{run_commits_dir(run_id)}"
    paths = sorted(p for p in fs.find(commits_dir) if p.endswith(".json"))
    records, _damaged = read_records(fs, paths)  # damaged ones: reported by `shards ls`
    commits = [c for c in records.values() if c.run_id == run_id]
    run = RunRecord.complete(run_id, commits)
    put_json(fs, root, run_path(run_id), run.to_dict())
    return run
