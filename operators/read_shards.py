"""Reading the face-shard dataset: which parts are committed, and their faces.

A part is committed when a commit record names it (``operators/shard_layout.py``): a
file in the data directories without one (a crash between moving the part into place
and writing its record, or a stray file) is invisible to every reader. ``list_shards``
is the one listing every reader starts from: one recursive listing of the faces root,
one read per finished run (its summary carries its records) and one per record of a
run that has not finished. Two runs that committed the same part (a rerun) give one
part: readers dedupe by path, the content being the same by construction.

``ShardFaceReader`` rebuilds each video's faces for ``dfscan rescore``. The driver picks
one part per video (``ShardVideo.shard_uri``); it reads each part of a batch once, with
a ``video_id`` filter that row-group statistics turn into a read of only the row groups
holding those videos (rows are sorted by video).
"""

from __future__ import annotations

import contextlib
import posixpath
from collections import Counter, defaultdict
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from operators.base import Operator, Resources
from operators.list_videos import modified_time
from operators.shard_layout import (
    COMMITS_DIR,
    PART_PATH,
    RUN_COMPLETE,
    RUNS_DIR,
    TMP_DIR,
    CommitRecord,
    DamagedRecord,
    RunRecord,
    commit_path,
    decode_json,
    parse_commit,
    parse_run,
    run_commits_dir,
)
from schemas.arrow import FACE_SHARD_SCHEMA
from schemas.records import FaceCrop, ShardVideo, VideoFaces, VideoStatus


@dataclass(frozen=True)
class CommittedPart:
    """A part readers take: its newest commit record, with the size stored now."""

    uri: str
    path: str  # relative to the faces root
    dt: str
    detector: str
    rows: int
    bytes: int
    faces_per_video: Mapping[str, int]
    runs: tuple[str, ...]  # every run that committed this path (a rerun adds one)
    written_at: str

    @property
    def videos(self) -> int:
        return len(self.faces_per_video)


@dataclass(frozen=True)
class StoredFile:
    """A file that is not a committed part: uncommitted, temporary or stray."""

    uri: str
    path: str  # relative to the faces root
    bytes: int
    modified: float | None  # seconds since the epoch, when the store reports it

    @property
    def in_layout(self) -> bool:
        """Named like a part this layout writes (not some other file left here)."""
        return bool(PART_PATH.match(self.path))


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    parts: int
    rows: int
    bytes: int
    videos: int
    complete: bool  # its summary exists and covers every record it wrote
    started_at: str | None  # first commit record
    finished_at: str | None


@dataclass(frozen=True)
class ShardListing:
    parts: tuple[CommittedPart, ...]
    runs: tuple[RunInfo, ...]
    uncommitted: tuple[StoredFile, ...]  # in the data directories, no commit record
    temporary: tuple[StoredFile, ...]  # under _tmp/: writes in progress or abandoned
    missing: tuple[str, ...]  # committed paths whose file is gone
    damaged: tuple[str, ...]  # records or summaries that cannot be parsed, with why


def _read_json(fs: Any, paths: list[str]) -> dict[str, Any]:
    """Path -> decoded JSON, or the ``DamagedRecord`` saying why not; read concurrently
    on object stores (``cat_ranges`` also never expands glob characters in paths)."""
    if not paths:
        return {}
    out: dict[str, Any] = {}
    for path, raw in zip(paths, fs.cat_ranges(paths, None, None, on_error="raise"), strict=True):
        try:
            out[path] = decode_json(raw)
        except DamagedRecord as err:
            out[path] = err
    return out


def read_records(fs: Any, paths: list[str]) -> tuple[dict[str, CommitRecord], list[str]]:
    """Commit records at ``paths`` (filesystem paths); and the damaged ones, with why."""
    records: dict[str, CommitRecord] = {}
    damaged: list[str] = []
    for path, value in _read_json(fs, paths).items():
        try:
            if isinstance(value, DamagedRecord):
                raise value
            records[path] = parse_commit(value)
        except DamagedRecord as err:
            damaged.append(f"{path}: {err}")
    return records, damaged


def list_shards(faces_uri: str, storage_options: dict[str, Any] | None = None) -> ShardListing:
    """Everything under ``faces_uri``, sorted into committed parts, runs and leftovers."""
    fs, root = fsspec.core.url_to_fs(faces_uri, **(storage_options or {}))
    root = root.rstrip("/")
    prefix = root + "/"
    stored = {
        path[len(prefix) :]: info
        for path, info in fs.find(root, detail=True).items()
        if path.startswith(prefix) and info.get("type") != "directory"
    }

    def uri(rel: str) -> str:
        return str(fs.unstrip_protocol(prefix + rel))

    def stored_file(rel: str) -> StoredFile:
        info = stored[rel]
        return StoredFile(uri(rel), rel, int(info.get("size") or 0), modified_time(info))

    damaged: list[str] = []
    summaries: list[RunRecord] = []
    run_files = sorted(r for r in stored if r.startswith(f"{RUNS_DIR}/") and r.endswith(".json"))
    for path, value in _read_json(fs, [prefix + r for r in run_files]).items():
        try:
            if isinstance(value, DamagedRecord):
                raise value
            summaries.append(parse_run(value))
        except DamagedRecord as err:
            damaged.append(f"{path}: {err}")

    # Records by run directory: a finished run's come from its summary, the rest (an
    # unfinished run, or a run id reused after a crash) from the record files.
    by_dir: dict[str, list[CommitRecord]] = defaultdict(list)
    summary_of: dict[str, RunRecord] = {}
    covered: set[str] = set()
    for run in summaries:
        run_dir = run_commits_dir(run.run_id)
        summary_of[run_dir] = run
        by_dir[run_dir].extend(run.commits)
        covered.update(commit_path(run.run_id, posixpath.basename(c.path)) for c in run.commits)
    markers = sorted(
        r
        for r in stored
        if r.startswith(f"{COMMITS_DIR}/") and r.endswith(".json") and r not in covered
    )
    records, bad = read_records(fs, [prefix + r for r in markers])
    damaged.extend(bad)
    extra_dirs: set[str] = set()
    for path, record in records.items():
        run_dir = posixpath.dirname(path[len(prefix) :])
        by_dir[run_dir].append(record)
        extra_dirs.add(run_dir)

    runs: list[RunInfo] = []
    of_path: dict[str, list[CommitRecord]] = defaultdict(list)
    for run_dir, commits in by_dir.items():
        for c in commits:
            of_path[c.path].append(c)
        summary = summary_of.get(run_dir)
        started = min((c.written_at for c in commits), default=None)
        runs.append(
            RunInfo(
                run_id=summary.run_id if summary else commits[0].run_id,
                parts=len(commits),
                rows=sum(c.rows for c in commits),
                bytes=sum(c.bytes for c in commits),
                videos=len({v for c in commits for v in c.faces_per_video}),
                complete=bool(summary and summary.status == RUN_COMPLETE)
                and run_dir not in extra_dirs,
                started_at=started,
                finished_at=summary.finished_at if summary else None,
            )
        )
    runs.sort(key=lambda r: (r.started_at or r.finished_at or "", r.run_id))

    parts: list[CommittedPart] = []
    missing: list[str] = []
    for path, commits in sorted(of_path.items()):
        if path not in stored:
            missing.append(uri(path))
            continue
        newest = max(commits, key=lambda c: (c.written_at, c.run_id))
        parts.append(
            CommittedPart(
                uri=uri(path),
                path=path,
                dt=newest.dt,
                detector=newest.detector,
                rows=newest.rows,
                bytes=int(stored[path].get("size") or 0),
                faces_per_video=newest.faces_per_video,
                runs=tuple(sorted({c.run_id for c in commits})),
                written_at=newest.written_at,
            )
        )
    data = sorted(
        r
        for r in stored
        if r not in of_path and not any(s.startswith(("_", ".")) for s in r.split("/"))
    )
    temporary = sorted(r for r in stored if r.startswith(f"{TMP_DIR}/"))
    return ShardListing(
        parts=tuple(parts),
        runs=tuple(runs),
        uncommitted=tuple(stored_file(r) for r in data),
        temporary=tuple(stored_file(r) for r in temporary),
        missing=tuple(missing),
        damaged=tuple(damaged),
    )


def require_faces_root(faces_uri: str, storage_options: dict[str, Any] | None = None) -> None:
    """Refuse a faces URI that names nothing: a mistyped path, not an empty data set
    (every finished scan leaves at least its ``_runs`` record there)."""
    from pipelines.config import ConfigError

    fs, root = fsspec.core.url_to_fs(faces_uri, **(storage_options or {}))
    try:
        kind = fs.info(root).get("type")
    except FileNotFoundError:
        kind = None
    if kind != "directory":
        what = "nothing is there" if kind is None else "it is a file"
        raise ConfigError(f"no face shards at {faces_uri}: {what} (give a scan's OUT/faces)")


def committed_parts(
    faces_uri: str, storage_options: dict[str, Any] | None = None
) -> list[CommittedPart]:
    """The parts readers take under ``faces_uri``, one per path, sorted by path."""
    return list(list_shards(faces_uri, storage_options).parts)


# What makes two parts' faces of one video the same faces (cut the same way): a video in
# two parts under one key was committed twice (a rerun batched it differently after a
# crash between its part's commit and its warehouse row); under two keys it was cut
# twice on purpose (another detector, sampling or crop scale) and both count.
CUT_KEY = ("video_id", "detector_sha256", "sampling", "crop_scale")


def read_face_shards(
    faces_uri: str,
    storage_options: dict[str, Any] | None = None,
    columns: list[str] | None = None,
    video_ids: list[str] | None = None,
    once_per_cut: bool = True,
) -> pa.Table:
    """Face rows of the committed parts under ``faces_uri`` (nothing else is ever read),
    each video's faces once per cut (``CUT_KEY``): when a rerun committed a video in a
    second part, only the newest part's rows of it are returned. ``once_per_cut=False``
    returns every part's rows, for a caller that picks the part itself (rescore takes
    the part the video's warehouse row names).

    With ``video_ids``, only the parts whose records list one of them are opened."""
    import pyarrow.dataset as ds

    fs, root = fsspec.core.url_to_fs(faces_uri, **(storage_options or {}))
    parts = committed_parts(faces_uri, storage_options)
    if video_ids is not None:
        wanted = set(video_ids)
        parts = [p for p in parts if not wanted.isdisjoint(p.faces_per_video)]
    full = {p.path: f"{root.rstrip('/')}/{p.path}" for p in parts}
    dataset = ds.dataset(
        list(full.values()), schema=FACE_SHARD_SCHEMA, format="parquet", filesystem=fs
    )
    listed = Counter(v for p in parts for v in p.faces_per_video)
    wanted_columns = list(columns) if columns is not None else list(FACE_SHARD_SCHEMA.names)
    dedupe = once_per_cut and any(n > 1 for n in listed.values())
    extra = [c for c in (*CUT_KEY, "__filename") if c not in wanted_columns] if dedupe else []
    if video_ids is not None and "video_id" not in wanted_columns + extra:
        extra.append("video_id")
    # Unfiltered, then checked (check_footer says why): the parts were already chosen by
    # their records, so a filter would skip little.
    table = dataset.to_table(columns=wanted_columns + extra)
    for fragment in dataset.get_fragments():
        with refusing_bad_text(fragment.path):
            check_footer(fragment.metadata, fragment.path, wanted_columns + extra)
    if video_ids is not None:
        ids = pa.array(video_ids, pa.string())
        table = table.filter(pc.is_in(table["video_id"], value_set=ids))
    if not dedupe:
        return table.drop_columns([c for c in extra if c in table.column_names])
    # Rank the parts newest first; per (cut, video) keep the best-ranked part's rows.
    rank = {
        full[p.path]: i
        for i, p in enumerate(sorted(parts, key=lambda p: (p.written_at, p.path), reverse=True))
    }
    index = table.select([*CUT_KEY, "__filename"]).group_by([*CUT_KEY, "__filename"]).aggregate([])
    best: dict[tuple[Any, ...], str] = {}
    for row in index.to_pylist():
        key = tuple(row[c] for c in CUT_KEY)
        if key not in best or rank[row["__filename"]] < rank[best[key]]:
            best[key] = row["__filename"]
    keep_keys = pa.array([f"{k[0]}|{f}" for k, f in best.items()])
    row_keys = pc.binary_join_element_wise(table["video_id"], table["__filename"], "|")
    table = table.filter(pc.is_in(row_keys, value_set=keep_keys))
    return table.drop_columns(extra)


class DamagedShard(ValueError):
    """A shard whose footer or content breaks the face schema (a missing or mistyped
    column, footer text that is not UTF-8, nulls where none may be): each found by
    fuzzing; Parquet does not enforce a schema's non-null fields on read."""


def check_footer(metadata: pq.FileMetaData, part: str, columns: Collection[str]) -> None:
    """Every column of the face schema present by name, and every chunk of ``columns``
    stored as the type the file's schema declares.

    Call it only after Arrow's C++ reader has read ``columns`` of the file without a
    filter, as both readers here do: pyarrow's Python accessors to a column chunk's
    metadata abort the process on some damaged footers (found by fuzzing: a size
    statistic that only BYTE_ARRAY may have, on an INT32 chunk), where the C++ read
    raises an ``OSError``; so only the chunks that read cleanly are looked at here.
    A chunk stored as another type than declared (fuzzing: BOOLEAN for BYTE_ARRAY) made
    a filtered read's statistics abort, hence no filtered reads, and is refused here.
    A missing column matters because a read with an explicit schema fills a column the
    file does not have with nulls, so a renamed column would read as empty."""
    schema = metadata.schema
    missing = set(FACE_SHARD_SCHEMA.names) - set(schema.to_arrow_schema().names)
    if missing:
        raise DamagedShard(f"{part}: damaged shard, no column {', '.join(sorted(missing))}")
    read = [c for c in range(len(schema)) if schema.column(c).path.split(".")[0] in columns]
    for r in range(metadata.num_row_groups):
        group = metadata.row_group(r)
        if group.num_columns != len(schema):
            raise DamagedShard(f"{part}: damaged shard, row group {r} has the wrong columns")
        for c in read:
            chunk, declared = group.column(c), schema.column(c)
            if chunk.physical_type != declared.physical_type:
                raise DamagedShard(
                    f"{part}: damaged shard, column {declared.path} stored as"
                    f" {chunk.physical_type}, declared {declared.physical_type}"
                )


@contextlib.contextmanager
def refusing_bad_text(part: str) -> Iterator[None]:
    """Text in a footer that is not UTF-8 (column names, metadata keys) as a DamagedShard.

    Found by fuzzing: pyarrow decodes footer strings lazily and lets the
    ``UnicodeDecodeError`` escape from attribute access, which no caller expects."""
    try:
        yield
    except UnicodeDecodeError as err:
        raise DamagedShard(f"{part}: damaged shard, footer text is not UTF-8 ({err})") from err


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
        with fs.open(path, "rb") as fh, refusing_bad_text(part):
            # Unfiltered, then checked (check_footer says why); a part holds one
            # batch of videos, so the rows of the others are few.
            table = pq.read_table(fh, columns=FACE_COLUMNS, schema=FACE_SHARD_SCHEMA)
            fh.seek(0)
            check_footer(pq.ParquetFile(fh).metadata, part, FACE_COLUMNS)
        table = table.filter(
            pc.is_in(table["video_id"], value_set=pa.array(video_ids, pa.string()))
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
