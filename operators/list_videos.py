"""Find the videos to scan, and give each one an id from its content.

Listing is cheap and runs on the driver: it walks a prefix through fsspec (``file://``,
``s3://``, ``gs://``) or reads a manifest (CSV, JSONL or Parquet of URIs, as platforms
export them). Every file is listed, video or not: a non-video file gets a status
later, never silence. Hashing reads every byte, so it is an operator that engines run
on workers (``VideoHasher``).

Incremental scans narrow the listing to a time window (``--since``/``--until``): by the
store's modification time, by a manifest's ``uploaded_at`` column, or, for a
date-partitioned input (``s3://uploads/dt={date}/``), by listing only the window's
day prefixes. A file a window leaves out for want of a time is counted and logged.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
import math
import re
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import fsspec

from operators.base import Operator, Resources
from operators.uri_policy import UriPolicy
from pipelines.config import ConfigError, TimeWindow
from schemas.records import VideoFile, VideoRef

log = logging.getLogger(__name__)

MANIFEST_SUFFIXES = (".csv", ".jsonl", ".ndjson", ".parquet")
MANIFEST_URI_COLUMNS = ("uri", "url", "path", "video_uri", "key")
MANIFEST_TIME_COLUMN = "uploaded_at"  # optional: when the platform received the upload
_HASH_CHUNK = 1 << 20  # 1 MiB reads: few round trips on object stores, little memory

# `{date}` (ISO day) or `{date:<strftime>}` in an input URI: one prefix per UTC day.
DATE_FIELD = re.compile(r"\{date(?::([^{}]*))?\}")
# Ten years of days: a mistyped year (1026) must fail at once, not list 365,000 prefixes.
MAX_TEMPLATE_DAYS = 3660
# Days one apart in day, month or year: a template must tell them all apart.
_PROBE_DAYS = (dt.date(2000, 1, 1), dt.date(2000, 1, 2), dt.date(2000, 2, 1), dt.date(2001, 1, 1))


@dataclass
class ListingReport:
    """What listing found and what a window left out, so no file is dropped silently."""

    listed: int = 0  # files yielded
    outside_window: int = 0  # upload time known and outside --since/--until
    no_time: int = 0  # a window was given but the file has no upload time: left out
    no_uri: int = 0  # manifest entries with an empty URI cell: nothing to scan, warned
    days: list[str] = field(default_factory=list)  # expanded template prefixes, in order
    empty_days: list[str] = field(default_factory=list)  # of those, the ones with no file

    def admit(self, window: TimeWindow | None, when: float | None) -> bool:
        """Whether a file uploaded at ``when`` is listed, counting the ones left out."""
        if window is None:
            return True
        if when is None:
            self.no_time += 1
            return False
        if not window.contains(when):
            self.outside_window += 1
            return False
        return True


def modified_time(info: Mapping[str, Any]) -> float | None:
    """A listing entry's modification time in seconds since the epoch, from whichever key
    the store uses (local mtime, s3fs LastModified, gcsfs updated); None when absent."""
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


def _video_file(fs: Any, path: str, info: Mapping[str, Any]) -> VideoFile:
    return VideoFile(fs.unstrip_protocol(path), int(info.get("size") or 0), modified_time(info))


def _hidden(path: str, root: str) -> bool:
    """A dot- or ``_``-name below ``root``. Object keys may hold literal ``.``/``..``
    segments (``a/../b.mp4`` is one S3 key, not a path): those are names, not hidden."""
    rel = path[len(root) :].lstrip("/") if path.startswith(root) else path
    return any(p.startswith((".", "_")) and p not in (".", "..") for p in rel.split("/"))


def is_manifest(uri: str) -> bool:
    return uri.lower().endswith(MANIFEST_SUFFIXES)


def is_date_template(uri: str) -> bool:
    """Whether ``uri`` names its partitions by day (``dt={date}``, ``{date:%Y/%m/%d}``)."""
    return DATE_FIELD.search(uri) is not None


def template_root(uri: str) -> str:
    """The folder above a template's first date field (``s3://uploads/dt={date}/`` ->
    ``s3://uploads/``): the input's own prefix when allowed prefixes are defaulted."""
    match = DATE_FIELD.search(uri)
    if match is None:
        return uri
    head = uri[: match.start()]
    return head[: head.rfind("/") + 1] if "/" in head else head


def _format_day(template: str, day: dt.date) -> str:
    def field_text(match: re.Match[str]) -> str:
        spec = match.group(1)
        try:
            return day.strftime(spec) if spec else day.isoformat()
        except ValueError as err:
            raise ConfigError(f"bad date format in {match.group(0)}: {err}") from None

    return DATE_FIELD.sub(field_text, template)


def template_days(window: TimeWindow | None) -> list[dt.date]:
    """The UTC days of a template's window: a partition is a whole day, so the window
    must start and end on UTC midnights."""
    if window is None or window.since is None or window.until is None:
        raise ConfigError(
            "a date-partitioned input ({date}) needs --since and --until: the days to list"
        )
    for name, bound in (("since", window.since), ("until", window.until)):
        if bound.timetz().replace(tzinfo=None) != dt.time():
            raise ConfigError(
                f"--{name} {bound.isoformat()} is not a UTC midnight: a date-partitioned"
                " input lists whole days (give a date, today or yesterday)"
            )
    first, stop = window.since.date(), window.until.date()
    count = (stop - first).days
    if count > MAX_TEMPLATE_DAYS:
        raise ConfigError(
            f"--since/--until span {count} days; a date-partitioned input lists at most"
            f" {MAX_TEMPLATE_DAYS}"
        )
    return [first + dt.timedelta(days=i) for i in range(count)]


def expand_date_template(template: str, window: TimeWindow | None) -> list[str]:
    """One URI per UTC day in the window, oldest first."""
    probes = {_format_day(template, day) for day in _PROBE_DAYS}
    if len(probes) != len(_PROBE_DAYS):
        raise ConfigError(
            f"input {template} does not name the day: use {{date}} or {{date:%Y/%m/%d}}"
        )
    return [_format_day(template, day) for day in template_days(window)]


def _upload_time(value: object, manifest: str) -> float | None:
    """An ``uploaded_at`` cell as seconds since the epoch; a time without a zone is UTC
    (what exporters write), a bare date is its UTC midnight, an empty cell is unknown."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            raise ConfigError(
                f"manifest {manifest}: {MANIFEST_TIME_COLUMN} {value!r} is not an ISO date or"
                " date-time"
            ) from None
    if isinstance(value, dt.datetime):
        aware = value if value.tzinfo is not None else value.replace(tzinfo=dt.timezone.utc)
        return aware.timestamp()
    if isinstance(value, dt.date):
        return dt.datetime.combine(value, dt.time(), dt.timezone.utc).timestamp()
    # Numbers are refused: seconds or milliseconds since the epoch cannot be told apart.
    raise ConfigError(
        f"manifest {manifest}: {MANIFEST_TIME_COLUMN} must hold ISO dates or timestamps,"
        f" not {type(value).__name__} ({value!r})"
    )


@dataclass(frozen=True)
class Manifest:
    """A manifest's URIs in file order (duplicates kept once), with their upload times
    when it has an ``uploaded_at`` column (None when it has none)."""

    uris: tuple[str, ...]
    uploaded_at: dict[str, float | None] | None = None
    # Rows (1 = the first entry, as a spreadsheet numbers them below the header) whose
    # URI cell is empty: nothing to scan, but said, not dropped in silence.
    blank_rows: tuple[int, ...] = ()


def read_manifest(uri: str, storage_options: dict[str, Any] | None = None) -> Manifest:
    """The entries of a CSV/JSONL/Parquet manifest; the first row of a duplicated URI wins."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    lower = uri.lower()
    with fsspec.open(uri, "rb", **(storage_options or {})) as fh:
        try:
            if lower.endswith(".parquet"):
                table = pq.read_table(fh)
            elif lower.endswith(".csv"):
                # Times as text, parsed below: Arrow infers a type from the first block and
                # would fail on a later row written another (valid ISO) way.
                as_text = pacsv.ConvertOptions(column_types={MANIFEST_TIME_COLUMN: pa.string()})
                table = pacsv.read_csv(fh, convert_options=as_text)
            else:
                table = pajson.read_json(fh)
        except pa.ArrowInvalid as err:
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else "unreadable"
            raise ConfigError(f"manifest {uri} cannot be read: {first_line}") from None
    column = next((c for c in MANIFEST_URI_COLUMNS if c in table.column_names), None)
    if column is None:
        raise ConfigError(
            f"manifest {uri} has no URI column (expected one of {', '.join(MANIFEST_URI_COLUMNS)})"
        )
    has_time = MANIFEST_TIME_COLUMN in table.column_names
    times = table.column(MANIFEST_TIME_COLUMN).to_pylist() if has_time else []
    seen: dict[str, float | None] = {}
    blank: list[int] = []
    for i, value in enumerate(table.column(column).to_pylist()):
        if value is None or not str(value).strip():
            blank.append(i + 1)
        elif str(value) not in seen:
            seen[str(value)] = _upload_time(times[i], uri) if has_time else None
    return Manifest(tuple(seen), seen if has_time else None, tuple(blank))


def _stat(uri: str, opts: dict[str, Any]) -> VideoFile:
    fs, path = fsspec.core.url_to_fs(uri, **opts)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        # Listed but gone: the row will say so (the open fails with decode_error).
        return VideoFile(uri=fs.unstrip_protocol(path), size_bytes=-1)
    return _video_file(fs, path, info)


def _list_manifest(
    uri: str,
    opts: dict[str, Any],
    policy: UriPolicy,
    window: TimeWindow | None,
    report: ListingReport,
    missing_ok: bool = False,
) -> Iterator[VideoFile]:
    """A manifest's entries; with a window, by ``uploaded_at`` when the manifest has it
    (entries outside are not even stat'ed), else by the store's modification time.
    ``missing_ok``: a missing manifest is an empty listing."""
    try:
        manifest = read_manifest(uri, opts)
    except FileNotFoundError:
        if missing_ok:  # a day nothing was uploaded on may have no manifest
            return
        raise ConfigError(f"manifest {uri} does not exist") from None
    if manifest.blank_rows:
        report.no_uri += len(manifest.blank_rows)
        shown = ", ".join(map(str, manifest.blank_rows[:10]))
        more = ", ..." if len(manifest.blank_rows) > 10 else ""
        log.warning(
            "manifest %s: %d entr%s with no URI, not scanned (entries %s%s)",
            uri,
            len(manifest.blank_rows),
            "y" if len(manifest.blank_rows) == 1 else "ies",
            shown,
            more,
        )
    for entry in manifest.uris:
        uploaded = None  # no column: the store's mtime stands in
        if manifest.uploaded_at is not None:
            when = manifest.uploaded_at[entry]
            if not report.admit(window, when):
                continue
            # An empty cell: no upload time, for the shard partition as for the window.
            uploaded = math.nan if when is None else when
        if not policy.allows(entry):
            # Not stat'ed, so its mtime is unknown: a window by mtime cannot admit it.
            if manifest.uploaded_at is None and not report.admit(window, None):
                continue
            yield VideoFile(uri=entry, size_bytes=-1, uploaded_at=uploaded)
            continue
        video = _stat(entry, opts)
        if manifest.uploaded_at is None and not report.admit(window, video.mtime):
            continue
        yield dataclasses.replace(video, uploaded_at=uploaded)


def _list_prefix(
    uri: str,
    opts: dict[str, Any],
    window: TimeWindow | None,
    report: ListingReport,
    missing_ok: bool = False,
) -> Iterator[VideoFile]:
    """Every file under a folder or prefix (or the one file ``uri`` names), by mtime
    when a window is given. ``missing_ok``: a missing prefix is an empty listing."""
    fs, root = fsspec.core.url_to_fs(uri, **opts)
    # info(), not exists(): exists() answers False to a refused signature, and a wrong
    # secret must not read as "no such input".
    try:
        info = fs.info(root)
    except FileNotFoundError:
        if missing_ok:
            return
        raise ConfigError(f"input {uri} does not exist") from None
    except PermissionError as err:
        raise ConfigError(
            f"input {uri} cannot be read with these credentials (--storage-options or the"
            f" AWS_* variables): {err}"
        ) from None
    if info.get("type") != "directory":
        video = _video_file(fs, root, info)
        if report.admit(window, video.mtime):
            yield video
        return
    found = fs.find(root, detail=True)
    for path in sorted(found):
        info = found[path]
        if info.get("type") == "directory" or _hidden(path, root):
            continue
        video = _video_file(fs, path, info)
        if report.admit(window, video.mtime):
            yield video


def _list_template(
    template: str,
    opts: dict[str, Any],
    policy: UriPolicy,
    window: TimeWindow | None,
    report: ListingReport,
) -> Iterator[VideoFile]:
    """Each day's prefix (or manifest) of the window, oldest first. The partition is the
    date, so no time filter applies inside it; a day nothing was uploaded on may have no
    prefix at all, and is an empty day."""
    days = expand_date_template(template, window)
    for day_uri in days:  # all checked before any is listed: a refusal lists nothing
        if (why := policy.refusal(day_uri)) is not None:
            raise ConfigError(f"input {day_uri} is not allowed: {why}")
    for day, day_uri in zip(template_days(window), days, strict=True):
        # The partition is the upload day (a day manifest's own uploaded_at is finer).
        midnight = dt.datetime.combine(day, dt.time(), dt.timezone.utc).timestamp()
        report.days.append(day_uri)
        before = report.listed
        if is_manifest(day_uri):
            videos = list(_list_manifest(day_uri, opts, policy, None, report, missing_ok=True))
        else:
            videos = list(_list_prefix(day_uri, opts, None, report, missing_ok=True))
        for video in videos:
            report.listed += 1
            if video.uploaded_at is None or math.isnan(video.uploaded_at):
                video = dataclasses.replace(video, uploaded_at=midnight)
            yield video
        if report.listed == before:
            report.empty_days.append(day_uri)
            log.info("no uploads under %s", day_uri)


def list_videos(
    uri: str,
    storage_options: dict[str, Any] | None = None,
    allow_prefixes: tuple[str, ...] = (),
    window: TimeWindow | None = None,
    report: ListingReport | None = None,
) -> Iterator[VideoFile]:
    """Every file under ``uri`` (sorted, hidden and ``_``-prefixed names skipped), or the
    entries of a manifest, or the single file ``uri`` names; with a ``{date}`` field in
    ``uri``, the same for each UTC day of ``window``.

    With a ``window``, only files uploaded in it: by ``uploaded_at`` for a manifest that
    has the column, else by the store's modification time; files without a time are left
    out, counted in ``report`` and logged once. A manifest entry outside
    ``allow_prefixes`` is listed as it is written, unread (not even stat'ed): the hasher
    and the decoder refuse it again and its row says why."""
    opts = storage_options or {}
    policy = UriPolicy.build(allow_prefixes)
    report = report if report is not None else ListingReport()
    if is_date_template(uri):
        yield from _list_template(uri, opts, policy, window, report)
        return
    if is_manifest(uri):
        videos = _list_manifest(uri, opts, policy, window, report)
    else:
        videos = _list_prefix(uri, opts, window, report)
    for video in videos:
        report.listed += 1
        yield video
    if window is not None:
        log.info(
            "window %s: %d listed, %d uploaded outside it",
            window,
            report.listed,
            report.outside_window,
        )
    if report.no_time:
        log.warning(
            "%d file(s) under %s have no upload time (no modification time in the store, or"
            " an empty %s): left out of the window %s",
            report.no_time,
            uri,
            MANIFEST_TIME_COLUMN,
            window,
        )


def _ref(video: VideoFile, video_id: str, size_bytes: int) -> VideoRef:
    return VideoRef(video_id, video.uri, size_bytes, video.mtime, video.uploaded_at)


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
            return _ref(video, uri_video_id(video.uri), max(video.size_bytes, 0))
        if video.size_bytes > self.max_bytes:
            return _ref(video, uri_video_id(video.uri), video.size_bytes)
        digest = hashlib.sha256()
        size = 0
        try:
            with fsspec.open(video.uri, "rb", **self.storage_options) as fh:
                while chunk := fh.read(_HASH_CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
        except (FileNotFoundError, PermissionError, IsADirectoryError):
            # The open in decode fails again and records why; the id must not be content.
            return _ref(video, uri_video_id(video.uri), max(video.size_bytes, 0))
        return _ref(video, digest.hexdigest(), size)

    def process_batch(self, items: list[VideoFile]) -> list[VideoRef]:
        return [self.hash_one(v) for v in items]
