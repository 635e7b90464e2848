"""Where face shards live and how a part is committed: the one description of the layout
that the writer, the readers and ``dfscan shards`` share.

::

    <faces>/dt=<YYYY-MM-DD>/detector=<name>/part-<digest>.parquet   the data
    <faces>/_commits/run=<run_id>/part-<digest>.json                 one commit record per part
    <faces>/_runs/<run_id>.json                                      a finished run's summary
    <faces>/_tmp/                                                    writes in progress

Why this shape:

- ``dt`` is the UTC date the video was uploaded (``VideoRef.upload_time``: a manifest's
  ``uploaded_at``, a date-partitioned input's day, else the mtime from listing), so the nightly
  scan of yesterday's uploads lands in yesterday's partition and a backfill or a rescore
  of a date range reads only those directories. A store that reports no time puts the
  video under ``dt=__HIVE_DEFAULT_PARTITION__`` (the Hive/Spark name for "no value").
- Part names stay content-derived (a hash of the batch's video ids and crop settings),
  not ``part-<run>-<n>``: a rerun after a crash that batches alike rewrites the same
  names, so such a batch is in the dataset once, whichever run committed it. One that
  batches otherwise (another engine, workers finishing in another order) leaves a
  video in two parts; readers take its newest.
- A part exists for readers only once a commit record names it. The record is written
  after the part is moved into place, and the warehouse row after the record, so a crash
  between the move and the record leaves a file no reader takes (``dfscan shards
  vacuum`` removes it) and every warehouse row's shard is committed. Records live apart
  from the data, per run, so listing one run's work needs no scan of the data, and two
  runs committing the same part (a rerun) leave two records for one path: readers
  dedupe by path.
- Every record and summary is written under ``_tmp/`` and moved into place (a rename
  locally, one whole-object copy on object stores), so a reader never sees half of one.
  ``_``-prefixed directories are skipped by Hive-style dataset readers (pyarrow, Spark).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import posixpath
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

DEFAULT_PARTITION = "__HIVE_DEFAULT_PARTITION__"
TMP_DIR = "_tmp"
COMMITS_DIR = "_commits"
RUNS_DIR = "_runs"
# Version of the commit-record and run-summary JSON (not of the Parquet schema).
RECORD_VERSION = 1
RUN_COMPLETE = "complete"

# A data part as the writer names it, relative to the faces root. A record naming any
# other path (hand-edited, or ".." to escape the root) is refused by ``parse_commit``.
PART_PATH = re.compile(
    r"^dt=(?:\d{4}-\d{2}-\d{2}|__HIVE_DEFAULT_PARTITION__)/detector=[A-Za-z0-9._-]+"
    r"/part-[0-9a-f]+\.parquet$"
)


def partition_date(upload_time: float | None) -> str:
    """The ``dt`` of a video: the UTC date of its upload time, or the default partition."""
    if upload_time is None:
        return DEFAULT_PARTITION
    try:
        return dt.datetime.fromtimestamp(upload_time, tz=dt.timezone.utc).strftime("%Y-%m-%d")
    except (OverflowError, OSError, ValueError):  # NaN or out of range: no usable date
        return DEFAULT_PARTITION


def part_path(date: str, detector: str, name: str) -> str:
    """A part's path relative to the faces root."""
    return f"dt={date}/detector={detector}/{name}"


def _run_key(run_id: str) -> str:
    # Run ids come from the command line; quoted, one can never add or climb a directory.
    return quote(run_id, safe="-_.:") or "_"


def run_commits_dir(run_id: str) -> str:
    return f"{COMMITS_DIR}/run={_run_key(run_id)}"


def commit_path(run_id: str, part_name: str) -> str:
    """Where the commit record of ``part_name`` by ``run_id`` goes, relative to the root."""
    return f"{run_commits_dir(run_id)}/{part_name.removesuffix('.parquet')}.json"


def run_path(run_id: str) -> str:
    return f"{RUNS_DIR}/{_run_key(run_id)}.json"


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


class DamagedRecord(ValueError):
    """A commit record or run summary that is not what a writer writes."""


@dataclass(frozen=True)
class CommitRecord:
    """What one run committed in one part; the JSON of ``_commits/run=<id>/<part>.json``."""

    path: str  # relative to the faces root
    rows: int
    bytes: int
    videos: int
    faces_per_video: Mapping[str, int]  # video id -> faces (the keys are the video ids)
    detector: str
    dt: str
    run_id: str
    schema_version: int  # FACE_SHARD_SCHEMA_VERSION of the part
    written_at: str  # ISO 8601, UTC
    record_version: int = RECORD_VERSION

    @property
    def video_ids(self) -> list[str]:
        return sorted(self.faces_per_video)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["faces_per_video"] = dict(sorted(self.faces_per_video.items()))
        return d


def parse_commit(data: Any) -> CommitRecord:
    """A commit record from its JSON value; ``DamagedRecord`` if it is not one."""
    if not isinstance(data, dict):
        raise DamagedRecord("not a JSON object")
    try:
        record = CommitRecord(
            path=str(data["path"]),
            rows=int(data["rows"]),
            bytes=int(data["bytes"]),
            videos=int(data["videos"]),
            faces_per_video={str(k): int(v) for k, v in dict(data["faces_per_video"]).items()},
            detector=str(data["detector"]),
            dt=str(data["dt"]),
            run_id=str(data["run_id"]),
            schema_version=int(data["schema_version"]),
            written_at=str(data["written_at"]),
            record_version=int(data.get("record_version", RECORD_VERSION)),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise DamagedRecord(f"not a commit record: {err}") from None
    if not PART_PATH.match(record.path):
        raise DamagedRecord(f"names {record.path!r}, not a part of this layout")
    if record.path != part_path(record.dt, record.detector, posixpath.basename(record.path)):
        raise DamagedRecord(f"{record.path!r} does not match its dt and detector")
    return record


@dataclass(frozen=True)
class RunRecord:
    """A finished run's parts; the JSON of ``_runs/<run_id>.json``.

    Holds the run's commit records too, so a reader of a finished run reads one file
    instead of one record per part (hundreds of requests on an object store)."""

    run_id: str
    status: str
    parts: int
    rows: int
    bytes: int
    videos: int
    finished_at: str
    commits: tuple[CommitRecord, ...]
    record_version: int = RECORD_VERSION

    @classmethod
    def complete(cls, run_id: str, commits: list[CommitRecord]) -> RunRecord:
        commits = sorted(commits, key=lambda c: c.path)
        return cls(
            run_id=run_id,
            status=RUN_COMPLETE,
            parts=len(commits),
            rows=sum(c.rows for c in commits),
            bytes=sum(c.bytes for c in commits),
            videos=len({v for c in commits for v in c.faces_per_video}),
            finished_at=utc_now(),
            commits=tuple(commits),
        )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["commits"] = [c.to_dict() for c in self.commits]
        return d


def parse_run(data: Any) -> RunRecord:
    if not isinstance(data, dict):
        raise DamagedRecord("not a JSON object")
    try:
        return RunRecord(
            run_id=str(data["run_id"]),
            status=str(data["status"]),
            parts=int(data["parts"]),
            rows=int(data["rows"]),
            bytes=int(data["bytes"]),
            videos=int(data["videos"]),
            finished_at=str(data["finished_at"]),
            commits=tuple(parse_commit(c) for c in data["commits"]),
            record_version=int(data.get("record_version", RECORD_VERSION)),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise DamagedRecord(f"not a run summary: {err}") from None


def decode_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DamagedRecord(f"not JSON: {err}") from None


def put_json(fs: Any, root: str, rel_path: str, value: Mapping[str, Any]) -> None:
    """Write ``value`` to ``root/rel_path`` whole or not at all: under ``_tmp/``, then moved."""
    final = f"{root}/{rel_path}"
    tmp = f"{root}/{TMP_DIR}/{posixpath.basename(rel_path)}.{uuid.uuid4().hex}"
    fs.makedirs(f"{root}/{TMP_DIR}", exist_ok=True)
    fs.makedirs(posixpath.dirname(final), exist_ok=True)
    fs.pipe_file(tmp, json.dumps(value, sort_keys=True).encode())
    fs.mv(tmp, final)
