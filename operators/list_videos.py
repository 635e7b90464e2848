"""Find the videos to scan, and give each one an id from its content.

Listing is cheap and runs on the driver: it walks a prefix through fsspec (``file://``,
``s3://``, ``gs://``) or reads a manifest (CSV, JSONL or Parquet of URIs, as platforms
export them). Every file is listed, video or not: a non-video file gets a status
later, never silence. Hashing reads every byte, so it is an operator that engines run
on workers (``VideoHasher``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from collections.abc import Iterator
from typing import Any

import fsspec

from operators.base import Operator, Resources
from operators.uri_policy import UriPolicy
from pipelines.config import ConfigError
from schemas.records import VideoFile, VideoRef

MANIFEST_SUFFIXES = (".csv", ".jsonl", ".ndjson", ".parquet")
MANIFEST_URI_COLUMNS = ("uri", "url", "path", "video_uri", "key")
_HASH_CHUNK = 1 << 20  # 1 MiB reads: few round trips on object stores, little memory


def _mtime(info: dict[str, Any]) -> float | None:
    for key in ("mtime", "LastModified", "updated", "last_modified"):
        value = info.get(key)
        if value is None:
            continue
        if isinstance(value, dt.datetime):
            return value.timestamp()
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return None


def _hidden(path: str, root: str) -> bool:
    """A dot- or ``_``-name below ``root``. Object keys may hold literal ``.``/``..``
    segments (``a/../b.mp4`` is one S3 key, not a path): those are names, not hidden."""
    rel = path[len(root) :].lstrip("/") if path.startswith(root) else path
    return any(p.startswith((".", "_")) and p not in (".", "..") for p in rel.split("/"))


def is_manifest(uri: str) -> bool:
    return uri.lower().endswith(MANIFEST_SUFFIXES)


def read_manifest(uri: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """URIs listed in a CSV/JSONL/Parquet manifest, in file order, duplicates kept once."""
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    lower = uri.lower()
    with fsspec.open(uri, "rb", **(storage_options or {})) as fh:
        if lower.endswith(".parquet"):
            table = pq.read_table(fh)
        elif lower.endswith(".csv"):
            table = pacsv.read_csv(fh)
        else:
            table = pajson.read_json(fh)
    column = next((c for c in MANIFEST_URI_COLUMNS if c in table.column_names), None)
    if column is None:
        raise ConfigError(
            f"manifest {uri} has no URI column (expected one of {', '.join(MANIFEST_URI_COLUMNS)})"
        )
    seen: dict[str, None] = {}
    for value in table.column(column).to_pylist():
        if value:
            seen.setdefault(str(value), None)
    return list(seen)


def list_videos(
    uri: str,
    storage_options: dict[str, Any] | None = None,
    allow_prefixes: tuple[str, ...] = (),
) -> Iterator[VideoFile]:
    """Every file under ``uri`` (sorted, hidden and ``_``-prefixed names skipped), or the
    entries of a manifest, or the single file ``uri`` names.

    A manifest entry outside ``allow_prefixes`` is listed as it is written, unread (not
    even stat'ed): the hasher and the decoder refuse it again and its row says why."""
    opts = storage_options or {}
    policy = UriPolicy.build(allow_prefixes)
    if is_manifest(uri):
        for entry in read_manifest(uri, opts):
            if not policy.allows(entry):
                yield VideoFile(uri=entry, size_bytes=-1)
                continue
            fs, path = fsspec.core.url_to_fs(entry, **opts)
            try:
                info = fs.info(path)
            except FileNotFoundError:
                # Listed but gone: the row will say so (the open fails with decode_error).
                yield VideoFile(uri=fs.unstrip_protocol(path), size_bytes=-1)
                continue
            yield VideoFile(fs.unstrip_protocol(path), int(info.get("size") or 0), _mtime(info))
        return
    fs, root = fsspec.core.url_to_fs(uri, **opts)
    # info(), not exists(): exists() answers False to a refused signature, and a wrong
    # secret must not read as "no such input".
    try:
        info = fs.info(root)
    except FileNotFoundError:
        raise ConfigError(f"input {uri} does not exist") from None
    except PermissionError as err:
        raise ConfigError(
            f"input {uri} cannot be read with these credentials (--storage-options or the"
            f" AWS_* variables): {err}"
        ) from None
    if info.get("type") != "directory":
        yield VideoFile(fs.unstrip_protocol(root), int(info.get("size") or 0), _mtime(info))
        return
    found = fs.find(root, detail=True)
    for path in sorted(found):
        info = found[path]
        if info.get("type") == "directory" or _hidden(path, root):
            continue
        yield VideoFile(fs.unstrip_protocol(path), int(info.get("size") or 0), _mtime(info))


URI_ID_PREFIX = "u5-"  # marks an id made from the URI, not from the content


def uri_video_id(uri: str) -> str:
    """Id for a file whose bytes were not read (too large, unreadable): uuid5 of the URI."""
    return URI_ID_PREFIX + uuid.uuid5(uuid.NAMESPACE_URL, uri).hex


class VideoHasher(Operator[VideoFile, VideoRef]):
    """sha256 of the bytes, streamed: the same content under two names has one id."""

    name = "hash"

    def __init__(
        self,
        max_bytes: int,
        storage_options: dict[str, Any] | None = None,
        allow_prefixes: tuple[str, ...] = (),
    ) -> None:
        self.max_bytes = max_bytes
        self.storage_options = dict(storage_options or {})
        self.policy = UriPolicy.build(allow_prefixes)  # refused URIs are never opened

    @property
    def resources(self) -> Resources:
        # I/O bound: a quarter core each so hashing never starves decode of a core.
        return Resources(cpus=0.25, batch_size=16)

    def hash_one(self, video: VideoFile) -> VideoRef:
        if not self.policy.allows(video.uri):
            # Not ours to read: decode refuses it too and the row says why.
            size = max(video.size_bytes, 0)
            return VideoRef(uri_video_id(video.uri), video.uri, size, video.mtime)
        if video.size_bytes > self.max_bytes:
            return VideoRef(uri_video_id(video.uri), video.uri, video.size_bytes, video.mtime)
        digest = hashlib.sha256()
        size = 0
        try:
            with fsspec.open(video.uri, "rb", **self.storage_options) as fh:
                while chunk := fh.read(_HASH_CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
        except (FileNotFoundError, PermissionError, IsADirectoryError):
            # The open in decode fails again and records why; the id must not be content.
            return VideoRef(
                uri_video_id(video.uri), video.uri, max(video.size_bytes, 0), video.mtime
            )
        return VideoRef(digest.hexdigest(), video.uri, size, video.mtime)

    def process_batch(self, items: list[VideoFile]) -> list[VideoRef]:
        return [self.hash_one(v) for v in items]
