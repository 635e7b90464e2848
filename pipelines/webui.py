"""``dfscan ui`` and ``dfscan report``: a read-only view of scans for analysts.

Pages are rendered on the server from Jinja2 templates with autoescaping always on:
every value (URIs, error messages, model names) comes from uploads or from other
people's runs, so nothing is trusted as HTML. Charts are inline SVG drawn from numbers;
there is no script on any page and no CDN, so the pages work on an isolated network and
the ``report`` file opens from a ticket attachment as it is.

The warehouse is opened read-only for each request and closed at once: a DuckDB file
takes one writing process at a time, and a UI holding it would block the nightly scan.
Face thumbnails are the JPEG crops of the face shards, served as they are stored.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import functools
import hashlib
import json
import math
import socket
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from operators.write_face_shards import read_face_shards
from operators.write_warehouse import (
    DuckDBWarehouse,
    PostgresWarehouse,
    Row,
    WarehouseUnavailable,
    _duckdb_open_error,
    duckdb_path,
    warehouse_class,
)
from pipelines.config import AggregateConfig, ConfigError, TimeWindow
from pipelines.limits_cli import _within
from pipelines.window_cli import add_window_arguments, resolve_window
from schemas.arrow import VIDEO_SCANS_SCHEMA
from schemas.records import VideoStatus
from schemas.warehouse import SCAN_RUNS_SCHEMA, quote_identifier

if TYPE_CHECKING:
    import duckdb
    import jinja2
    import psycopg
    from flask import Flask

    from operators.warehouse_bigquery import BigQueryWarehouse

PAGE_SIZE = 100  # videos per list page: one screen of rows, a fast query
RUNS_PAGE = 500  # runs on the runs page, newest first: over a year of nightly scans
MAX_OFFSET = 2**63 - 1  # SQL's OFFSET is a BIGINT (DuckDB, PostgreSQL, BigQuery)
THUMBS_UI = 64  # thumbnails on a video page: enough to see every track, not a scroll-fest
THUMBS_REPORT = 12  # per video in a report: ~12 x 15 kB of base64 keeps a report mailable
REPORT_MAX_VIDEOS = 200  # videos with a full section in a report (highest scores first)
REPORT_MAX_ROWS = 10_000  # rows of a report's video table
LABELS = ("FAKE", "REAL")
# Styles inline, images from this server or data: URIs, no script, no framing.
CSP = (
    "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
REPORT_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
# Track colours: distinguishable, and readable on white.
PALETTE = (
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
    "#17becf", "#7f7f7f", "#bcbd22", "#393b79", "#ad494a", "#637939", "#843c39",
)  # fmt: skip


class FilterError(ValueError):
    """A filter value from the query string that cannot be used (shown as a 400)."""


# ---------------------------------------------------------------- reading the warehouse
class ScanQueries:
    """The UI's read queries, shared by the read-only DuckDB and PostgreSQL readers.

    Every user value goes in as a bound parameter; identifiers are the warehouse's own
    validated table names.
    """

    scans_table: str
    runs_table: str
    placeholder: str
    _fetch: Callable[..., list[Row]]

    def table_exists(self, name: str) -> bool:
        rows = self._fetch(
            "SELECT COUNT(*) AS n FROM information_schema.tables"
            f" WHERE table_name = {self.placeholder} AND table_schema = current_schema()",
            [name],
        )
        return bool(rows and rows[0]["n"])

    def runs(
        self,
        run_id: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        limit: int = 500,
    ) -> list[Row]:
        """Runs newest first, optionally one run or those started in [since, until)."""
        p = self.placeholder
        where: list[str] = []
        params: list[Any] = []
        if run_id is not None:
            where.append(f"run_id = {p}")
            params.append(run_id)
        if since is not None:
            where.append(f"started_at >= {p}")
            params.append(since)
        if until is not None:
            where.append(f"started_at < {p}")
            params.append(until)
        cols = ", ".join(quote_identifier(n) for n in SCAN_RUNS_SCHEMA.names)
        sql = f"SELECT {cols} FROM {quote_identifier(self.runs_table)}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return self._fetch(f"{sql} ORDER BY started_at DESC, run_id LIMIT {p}", [*params, limit])

    def verdicts_by_run(self, run_ids: Sequence[str]) -> dict[str, dict[str, int]]:
        """{run_id: {"FAKE": n, "REAL": n}} of the rows each run wrote (still current)."""
        if not run_ids:
            return {}
        marks = ", ".join([self.placeholder] * len(run_ids))
        rows = self._fetch(
            f"SELECT run_id, label, COUNT(*) AS n FROM {quote_identifier(self.scans_table)}"
            f" WHERE run_id IN ({marks}) AND label IS NOT NULL GROUP BY run_id, label",
            list(run_ids),
        )
        out: dict[str, dict[str, int]] = {}
        for r in rows:
            out.setdefault(r["run_id"], {})[r["label"]] = int(r["n"])
        return out

    def model_versions(self) -> list[str]:
        rows = self._fetch(
            f"SELECT DISTINCT model_version FROM {quote_identifier(self.scans_table)}"
            " ORDER BY model_version"
        )
        return [r["model_version"] for r in rows]

    def search_scans(self, f: VideoFilters, limit: int, offset: int = 0) -> list[Row]:
        """Rows matching ``f``: most fake-looking first, then newest."""
        p = self.placeholder
        where: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("status", f.status),
            ("label", f.label),
            ("model_version", f.model),
            ("run_id", f.run_id),
        ):
            if value is not None:
                where.append(f"{quote_identifier(column)} = {p}")
                params.append(value)
        if f.since_dt is not None:
            where.append(f"scanned_at >= {p}")
            params.append(f.since_dt)
        if f.until_dt is not None:
            where.append(f"scanned_at < {p}")
            params.append(f.until_dt)
        if f.min_score is not None:
            where.append(f"fake_probability >= {p}")
            params.append(f.min_score)
        if f.max_score is not None:
            where.append(f"fake_probability <= {p}")
            params.append(f.max_score)
        cols = ", ".join(quote_identifier(n) for n in VIDEO_SCANS_SCHEMA.names)
        sql = f"SELECT {cols} FROM {quote_identifier(self.scans_table)}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        # NULLs (no score) last in both dialects without NULLS LAST syntax differences.
        sql += (
            " ORDER BY CASE WHEN fake_probability IS NULL THEN 1 ELSE 0 END,"
            " fake_probability DESC, scanned_at DESC, video_id, model_version"
            f" LIMIT {p} OFFSET {p}"
        )
        return self._fetch(sql, [*params, limit, offset])

    def scan(self, video_id: str, model_version: str | None) -> Row | None:
        """One row; without a model version, the video's newest row."""
        p = self.placeholder
        cols = ", ".join(quote_identifier(n) for n in VIDEO_SCANS_SCHEMA.names)
        sql = f"SELECT {cols} FROM {quote_identifier(self.scans_table)} WHERE video_id = {p}"
        params: list[Any] = [video_id]
        if model_version is not None:
            sql += f" AND model_version = {p}"
            params.append(model_version)
        rows = self._fetch(sql + " ORDER BY scanned_at DESC, model_version LIMIT 1", params)
        return rows[0] if rows else None

    def other_models(self, video_id: str) -> list[str]:
        rows = self._fetch(
            f"SELECT model_version FROM {quote_identifier(self.scans_table)}"
            f" WHERE video_id = {self.placeholder} ORDER BY model_version",
            [video_id],
        )
        return [r["model_version"] for r in rows]

    def run_config(self, run_id: str) -> dict[str, Any]:
        """The typed config a run recorded (JSON), or {} if unknown or unreadable."""
        rows = self._fetch(
            f"SELECT config FROM {quote_identifier(self.runs_table)}"
            f" WHERE run_id = {self.placeholder}",
            [run_id],
        )
        try:
            value = json.loads(rows[0]["config"]) if rows else {}
        except (TypeError, json.JSONDecodeError):
            return {}
        return value if isinstance(value, dict) else {}


class ReadOnlyDuckDBWarehouse(ScanQueries, DuckDBWarehouse):
    """A DuckDB file opened read-only: any number of UI readers at once, no writes."""

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            import duckdb

            if self.path == ":memory:" or not Path(self.path).exists():
                raise ConfigError(f"no warehouse at {self.url}: run `dfscan scan` first")
            try:
                con = duckdb.connect(self.path, read_only=True)
            except duckdb.IOException as err:  # a scan holds it: one line, as for scans
                raise _duckdb_open_error(self.url, err) from None
            con.execute("SET TimeZone = 'UTC'").fetchall()
            self._con = con
        return self._con


class ReadOnlyPostgresWarehouse(ScanQueries, PostgresWarehouse):
    """A PostgreSQL session whose transactions are read-only: the UI cannot write."""

    @property
    def con(self) -> psycopg.Connection[Row]:
        if self._con is None:
            con = super().con
            con.execute("SET default_transaction_read_only = on")
        return super().con


# What the UI reads through: the read-only DuckDB and PostgreSQL readers and BigQuery's
# warehouse, which implements the same read queries in its own dialect.
UiReader = Union["ReadOnlyDuckDBWarehouse", "ReadOnlyPostgresWarehouse", "BigQueryWarehouse"]


def open_reader(url: str) -> UiReader:
    """A read-only warehouse for ``url`` (DuckDB, PostgreSQL or BigQuery), connected on
    first use."""
    cls = warehouse_class(url)
    if issubclass(cls, DuckDBWarehouse):
        duckdb_path(url)  # a URL naming no file fails here, with its message
        return ReadOnlyDuckDBWarehouse(url)
    if issubclass(cls, PostgresWarehouse):
        return ReadOnlyPostgresWarehouse(url)
    from operators.warehouse_bigquery import BigQueryWarehouse  # noqa: F811 (runtime)

    if issubclass(cls, BigQueryWarehouse):
        # The UI only calls its read methods; give the UI's service account the
        # BigQuery Data Viewer role so the store itself refuses writes too.
        return BigQueryWarehouse(url)
    raise ConfigError(f"the UI cannot read a {cls.__name__}")


# ---------------------------------------------------------------- filters
def _parse_date(text: str, name: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise FilterError(f"{name} must be a date like 2024-05-31, got {text!r}") from None


def _parse_score(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise FilterError(f"{name} must be a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise FilterError(f"{name} must be within [0, 1], got {text}")
    return value


def _utc_midnight(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(0), tzinfo=dt.timezone.utc)


@dataclass(frozen=True)
class VideoFilters:
    """The videos list's filters, as typed values (None: no filter)."""

    status: str | None = None
    label: str | None = None
    model: str | None = None
    run_id: str | None = None
    since: dt.date | None = None  # scanned on or after this UTC day
    until: dt.date | None = None  # scanned on or before this UTC day
    min_score: float | None = None
    max_score: float | None = None
    # The report's --since/--until, read as scan reads them: [since, until), instants.
    window: TimeWindow | None = None

    @classmethod
    def parse(cls, args: Mapping[str, str]) -> VideoFilters:
        """From a query string; empty fields mean no filter, bad ones raise FilterError."""
        get = {k: v.strip() for k, v in args.items() if isinstance(v, str) and v.strip()}
        status = get.get("status")
        if status is not None and status not in {s.value for s in VideoStatus}:
            raise FilterError(f"unknown status {status!r}")
        label = get.get("label")
        if label is not None and label not in LABELS:
            raise FilterError(f"label must be FAKE or REAL, got {label!r}")
        f = cls(
            status=status,
            label=label,
            model=get.get("model"),
            run_id=get.get("run_id"),
            since=_parse_date(get["since"], "since") if "since" in get else None,
            until=_parse_date(get["until"], "until") if "until" in get else None,
            min_score=_parse_score(get["min_score"], "min_score") if "min_score" in get else None,
            max_score=_parse_score(get["max_score"], "max_score") if "max_score" in get else None,
        )
        if f.min_score is not None and f.max_score is not None and f.min_score > f.max_score:
            raise FilterError("min_score is above max_score")
        if f.since is not None and f.until is not None and f.since > f.until:
            raise FilterError("since is after until")
        return f

    @property
    def since_dt(self) -> dt.datetime | None:
        if self.window is not None:
            return self.window.since
        return _utc_midnight(self.since) if self.since else None

    @property
    def until_dt(self) -> dt.datetime | None:
        """Exclusive end: midnight after ``until``, so the whole day is in."""
        if self.window is not None:
            return self.window.until
        return _utc_midnight(self.until + dt.timedelta(days=1)) if self.until else None

    def as_query(self) -> dict[str, str]:
        """The filters as query-string values (for links and the form)."""
        out = {}
        for name in ("status", "label", "model", "run_id", "since", "until"):
            value = getattr(self, name)
            if value is not None:
                out[name] = str(value)
        for name in ("min_score", "max_score"):
            value = getattr(self, name)
            if value is not None:
                out[name] = f"{value:g}"
        return out


# ---------------------------------------------------------------- what a video page shows
@dataclass(frozen=True)
class TrackView:
    track_id: int
    faces: int
    mean: float
    confident: float
    max: float
    frames: tuple[tuple[int, float, float], ...]  # (frame_index, pts_s, score)
    color: str
    decisive: bool = False  # counted by a per-track rule (enough faces)
    decides: bool = False  # the track whose score became the video's


@dataclass(frozen=True)
class FaceView:
    frame_index: int
    pts_s: float
    track_id: int
    det_score: float
    score: float | None
    color: str
    src: str = ""  # thumbnail URL or data: URI


@dataclass(frozen=True)
class ChartSeries:
    track_id: int
    color: str
    d: str  # SVG path data
    points: tuple[tuple[float, float, str], ...]  # (x, y, tooltip)


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    left: int
    top: int
    plot_w: int
    plot_h: int
    series: tuple[ChartSeries, ...]
    x_ticks: tuple[tuple[float, str], ...]
    y_ticks: tuple[tuple[float, str], ...]
    threshold_y: float | None


@dataclass(frozen=True)
class Decision:
    """How the stored fake_probability follows from the tracks, for the reader."""

    rule: str
    explanation: str
    recomputed: float | None  # the rule re-applied to the stored track scores
    stored: float | None
    threshold: float
    label: str | None
    min_track_faces: int

    @property
    def consistent(self) -> bool:
        if self.recomputed is None or self.stored is None:
            return self.recomputed is None and self.stored is None
        return math.isclose(self.recomputed, self.stored, abs_tol=1e-6)


def parse_tracks(text: str | None) -> list[TrackView] | None:
    """The row's ``track_scores`` JSON as typed tracks; None if it is not what the
    scan writes (a hand-edited or foreign row): the page says so instead of failing."""
    try:
        raw = json.loads(text or "[]")
        tracks = [
            TrackView(
                track_id=int(t["track_id"]),
                faces=int(t["faces"]),
                mean=float(t["mean"]),
                confident=float(t["confident"]),
                max=float(t["max"]),
                frames=tuple((int(f[0]), float(f[1]), float(f[2])) for f in t["frames"]),
                color=PALETTE[i % len(PALETTE)],
            )
            for i, t in enumerate(raw)
        ]
    except (json.JSONDecodeError, TypeError, KeyError, IndexError, ValueError):
        return None
    return tracks


# Rules that decide on per-track statistics, and which statistic.
_TRACK_RULES: dict[str, str] = {"track_confident_max": "confident", "track_mean_max": "mean"}
_VIDEO_RULES: dict[str, tuple[str, str]] = {
    "mean": ("score_mean", "the mean of all face scores"),
    "max": ("score_max", "the highest face score"),
    "confident": ("score_confident", "the confident strategy over all faces"),
}


def explain_decision(
    row: Row, tracks: list[TrackView], min_track_faces: int
) -> tuple[Decision, list[TrackView]]:
    """The decision with its inputs marked: which tracks counted, which one decided."""
    rule = str(row["decision_rule"])
    stored = row["fake_probability"]
    threshold = float(row["threshold"])
    recomputed: float | None = None
    if rule in _TRACK_RULES and tracks:
        stat = _TRACK_RULES[rule]
        long = [t for t in tracks if t.faces >= min_track_faces]
        decisive = {t.track_id for t in (long or tracks)}
        best = max((t for t in tracks if t.track_id in decisive), key=lambda t: getattr(t, stat))
        recomputed = float(getattr(best, stat))
        tracks = [
            replace(t, decisive=t.track_id in decisive, decides=t.track_id == best.track_id)
            for t in tracks
        ]
        explanation = (
            f"the highest per-track {stat} score among tracks with at least {min_track_faces}"
            f" faces (all tracks if none has): track {best.track_id}"
        )
    elif rule in _VIDEO_RULES:
        column, words = _VIDEO_RULES[rule]
        value = row[column]
        recomputed = float(value) if value is not None else None
        explanation = words
    else:
        explanation = "a rule this page does not know"
    decision = Decision(
        rule=rule,
        explanation=explanation,
        recomputed=recomputed,
        stored=float(stored) if stored is not None else None,
        threshold=threshold,
        label=row["label"],
        min_track_faces=min_track_faces,
    )
    return decision, tracks


def _nice_step(span: float, target: int = 6) -> float:
    raw = span / max(target, 1)
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    return next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)


def score_chart(
    tracks: Sequence[TrackView], threshold: float | None, duration_s: float | None = None
) -> Chart | None:
    """Score per sampled frame over video time, one line per track, as SVG geometry."""
    if not tracks or not any(t.frames for t in tracks):
        return None
    width, height, left, right, top, bottom = 720, 260, 44, 12, 12, 30
    plot_w, plot_h = width - left - right, height - top - bottom
    x_max = max([f[1] for t in tracks for f in t.frames] + [duration_s or 0.0])
    x_max = x_max if x_max > 0 else 1.0

    def x(t: float) -> float:
        return round(left + plot_w * t / x_max, 2)

    def y(score: float) -> float:
        return round(top + plot_h * (1.0 - min(max(score, 0.0), 1.0)), 2)

    series = []
    for t in tracks:
        frames = sorted(t.frames, key=lambda f: f[1])
        pts = tuple(
            (x(pts_s), y(s), f"track {t.track_id} · frame {idx} · {pts_s:.2f} s · {s:.3f}")
            for idx, pts_s, s in frames
        )
        d = " ".join(f"{'L' if i else 'M'}{px:g},{py:g}" for i, (px, py, _) in enumerate(pts))
        series.append(ChartSeries(t.track_id, t.color, d, pts))
    step = _nice_step(x_max)
    x_ticks = tuple((x(i * step), f"{i * step:g}") for i in range(int(x_max / step + 1e-9) + 1))
    y_ticks = tuple((y(v), f"{v:g}") for v in (0.0, 0.25, 0.5, 0.75, 1.0))
    return Chart(
        width,
        height,
        left,
        top,
        plot_w,
        plot_h,
        tuple(series),
        x_ticks,
        y_ticks,
        y(threshold) if threshold is not None else None,
    )


# ---------------------------------------------------------------- the browser (data access)
@dataclass
class ScanBrowser:
    """What the pages read: the warehouse (read-only, per call) and the face shards."""

    warehouse_url: str
    faces_uri: str
    storage_options: dict[str, Any] = field(default_factory=dict)

    @contextmanager
    def warehouse(self) -> Iterator[UiReader]:
        """Open, use, close: a reader never holds the file between requests."""
        wh = open_reader(self.warehouse_url)
        try:
            yield wh
        finally:
            wh.close()

    def has_scans(self, wh: UiReader) -> bool:
        return wh.table_exists("video_scans") and wh.table_exists("scan_runs")

    def faces(self, row: Row) -> list[dict[str, Any]]:
        """The face rows of a scan row (no crop bytes), in track then frame order.

        A video may sit in several shards (another detector or sampling); the row's
        own detector and sampling pick the faces its scores came from.
        """
        table = self._faces_table(str(row["video_id"]))
        out = [
            {k: v for k, v in r.items() if k != "crop"}
            for r in table
            if r["detector"] == row["detector"] and r["sampling"] == row["sampling"]
        ]
        return sorted(out, key=lambda r: (r["track_id"], r["frame_index"]))

    def crop(
        self, video_id: str, frame_index: int, track_id: int, detector: str, sampling: str
    ) -> bytes | None:
        for r in self._faces_table(video_id):
            if (r["frame_index"], r["track_id"], r["detector"], r["sampling"]) == (
                frame_index,
                track_id,
                detector,
                sampling,
            ):
                return bytes(r["crop"])
        return None

    @functools.lru_cache(maxsize=32)  # noqa: B019  # one browser per process; bounded
    def _faces_table(self, video_id: str) -> tuple[dict[str, Any], ...]:
        """A video's faces with crops, read once for its page and its thumbnails."""
        table = read_face_shards(
            self.faces_uri,
            self.storage_options or None,
            columns=[
                "video_id",
                "frame_index",
                "pts_s",
                "track_id",
                "det_score",
                "crop",
                "detector",
                "sampling",
            ],
            video_ids=[video_id],
        )
        return tuple(table.to_pylist())

    def __hash__(self) -> int:  # lru_cache keys on self
        return id(self)


def _fmt_time(value: Any) -> str:
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return "" if value is None else str(value)


def _fmt_duration(start: Any, end: Any) -> str:
    if not isinstance(start, dt.datetime) or not isinstance(end, dt.datetime):
        return ""
    seconds = (end - start).total_seconds()
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min"


def _fmt_score(value: Any) -> str:
    return "" if value is None else f"{float(value):.3f}"


def _counts(text: Any) -> dict[str, int]:
    try:
        value = json.loads(text) if text else {}
    except (TypeError, json.JSONDecodeError):
        return {}
    if not isinstance(value, dict):
        return {}
    return {str(k): int(v) for k, v in value.items() if isinstance(v, int)}


def _metrics(text: Any) -> dict[str, str]:
    """A training run's metrics JSON as short strings; {} when absent or unreadable."""
    try:
        value = json.loads(text) if text else {}
    except (TypeError, json.JSONDecodeError):
        return {}
    if not isinstance(value, dict):
        return {}
    return {
        str(k): f"{v:.4f}" if isinstance(v, float) else str(v)
        for k, v in value.items()
        if isinstance(v, (int, float, str))
    }


def template_env() -> jinja2.Environment:
    """Templates with autoescaping on for everything, and undefined names as errors."""
    import jinja2  # only the ui and report commands need it; --help stays fast

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("pipelines", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(time=_fmt_time, score=_fmt_score, counts=_counts, metrics=_metrics)
    env.globals.update(duration=_fmt_duration, statuses=[s.value for s in VideoStatus])
    return env


def anchor(video_id: str, model_version: str) -> str:
    """A stable HTML id for a (video, model) section of a report."""
    return "v-" + hashlib.sha256(f"{video_id}|{model_version}".encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Links:
    """How pages link: to the running app, or within one report file."""

    video: Callable[[Row], str]
    thumb: Callable[[Row, dict[str, Any]], str]
    videos: Callable[..., str]
    runs: str
    training: str


def video_context(
    browser: ScanBrowser,
    wh: UiReader,
    row: Row,
    links: Links,
    max_thumbs: int,
) -> dict[str, Any]:
    """Everything a video section shows: decision, tracks, chart, thumbnails."""
    config = wh.run_config(str(row["run_id"]))
    agg = config.get("aggregate")
    min_faces = (agg if isinstance(agg, dict) else {}).get(
        "min_track_faces", AggregateConfig.min_track_faces
    )
    min_faces = min_faces if isinstance(min_faces, int) else AggregateConfig.min_track_faces
    tracks = parse_tracks(row["track_scores"])
    decision, marked = explain_decision(row, tracks or [], min_faces)
    colors = {t.track_id: t.color for t in marked}
    scores = {(t.track_id, f[0]): f[2] for t in marked for f in t.frames}
    face_rows = browser.faces(row)
    faces = [
        FaceView(
            frame_index=int(r["frame_index"]),
            pts_s=float(r["pts_s"]),
            track_id=int(r["track_id"]),
            det_score=float(r["det_score"]),
            score=scores.get((int(r["track_id"]), int(r["frame_index"]))),
            color=colors.get(int(r["track_id"]), PALETTE[-1]),
            src=links.thumb(row, r),
        )
        for r in pick_faces(face_rows, scores, max_thumbs)
    ]
    return {
        "row": row,
        "anchor": anchor(str(row["video_id"]), str(row["model_version"])),
        "tracks": marked,
        "tracks_unreadable": tracks is None,
        "chart": score_chart(marked, float(row["threshold"]), row["duration_s"]),
        "decision": decision,
        "faces": faces,
        "faces_total": len(face_rows),
    }


def pick_faces(
    faces: list[dict[str, Any]], scores: Mapping[tuple[int, int], float], n: int
) -> list[dict[str, Any]]:
    """At most ``n`` faces, every track's most fake-looking face first, then the next
    highest; shown in track and frame order. A cut list still shows every track (up to
    ``n``) and the faces that drove the score, not just the first track's frames."""
    if len(faces) <= n:
        return faces

    def score(f: dict[str, Any]) -> float:
        return scores.get((int(f["track_id"]), int(f["frame_index"])), -1.0)

    ranked = sorted(faces, key=score, reverse=True)
    best: dict[int, dict[str, Any]] = {}
    for f in ranked:
        best.setdefault(int(f["track_id"]), f)
    firsts = sorted(best.values(), key=score, reverse=True)
    chosen = {id(f) for f in firsts[:n]}
    for f in ranked:
        if len(chosen) >= n:
            break
        chosen.add(id(f))
    return [f for f in faces if id(f) in chosen]


def run_views(wh: UiReader, runs: list[Row]) -> list[dict[str, Any]]:
    verdicts = wh.verdicts_by_run([str(r["run_id"]) for r in runs])
    return [{"run": r, "verdicts": verdicts.get(str(r["run_id"]), {})} for r in runs]


# ---------------------------------------------------------------- the web app
def create_app(browser: ScanBrowser) -> Flask:
    """The read-only app: runs, videos (filtered), a video, its thumbnails, training runs."""
    from flask import Flask, Response, abort, request, url_for
    from werkzeug.exceptions import HTTPException

    app = Flask(__name__)
    env = template_env()

    def links() -> Links:
        def video(row: Row) -> str:
            return url_for("video", video_id=row["video_id"], model=row["model_version"])

        def thumb(row: Row, face: dict[str, Any]) -> str:
            return url_for(
                "thumbnail",
                video_id=row["video_id"],
                frame_index=face["frame_index"],
                track_id=face["track_id"],
                detector=face["detector"],
                sampling=face["sampling"],
            )

        def videos(**query: Any) -> str:
            return url_for("videos", **query)

        return Links(video, thumb, videos, url_for("runs"), url_for("training"))

    def page(name: str, status: int = 200, **context: Any) -> Response:
        html = env.get_template(name).render(links=links(), report=False, **context)
        return Response(html, status=status, mimetype="text/html")

    @app.after_request
    def harden(resp: Response) -> Response:
        resp.headers["Content-Security-Policy"] = CSP
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Referrer-Policy"] = "no-referrer"
        return resp

    @app.errorhandler(FilterError)
    def bad_filter(err: FilterError) -> Response:
        return page("error.html", 400, title="Bad filter", message=str(err))

    @app.errorhandler(ConfigError)
    def bad_setup(err: ConfigError) -> Response:
        return page("error.html", 500, title="Warehouse unavailable", message=str(err))

    @app.errorhandler(WarehouseUnavailable)
    def busy(err: WarehouseUnavailable) -> Response:
        # Another process (a scan) holds the DuckDB file, or PostgreSQL went away.
        message = f"the warehouse is busy (a scan may be writing to it): {err}"
        return page("error.html", 503, title="Warehouse busy", message=message)

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException) -> Response:
        code = err.code or 500
        return page("error.html", code, title=f"{code} {err.name}", message=err.description or "")

    @app.get("/")
    def runs() -> Response:
        with browser.warehouse() as wh:
            # One more than is shown: the page says when older runs are left out.
            found = wh.runs(limit=RUNS_PAGE + 1) if browser.has_scans(wh) else []
            views = run_views(wh, found[:RUNS_PAGE])
        return page("runs.html", title="Scan runs", runs=views, more=len(found) > RUNS_PAGE)

    @app.get("/videos")
    def videos() -> Response:
        filters = VideoFilters.parse(request.args)
        try:
            offset = max(0, int(request.args.get("offset", "0") or 0))
        except ValueError:
            raise FilterError("offset must be an integer") from None
        if offset > MAX_OFFSET:
            raise FilterError(f"offset must be at most {MAX_OFFSET}")
        with browser.warehouse() as wh:
            if browser.has_scans(wh):
                rows = wh.search_scans(filters, PAGE_SIZE + 1, offset)
                models = wh.model_versions()
            else:
                rows, models = [], []
        return page(
            "videos.html",
            title="Videos",
            rows=rows[:PAGE_SIZE],
            filters=filters,
            query=filters.as_query(),
            models=models,
            offset=offset,
            page_size=PAGE_SIZE,
            more=len(rows) > PAGE_SIZE,
        )

    @app.get("/video/<video_id>")
    def video(video_id: str) -> Response:
        model = request.args.get("model") or None
        with browser.warehouse() as wh:
            row = wh.scan(video_id, model) if browser.has_scans(wh) else None
            if row is None:
                abort(404, description=f"no scan of video {video_id} under that model")
            context = video_context(browser, wh, row, links(), THUMBS_UI)
            models = wh.other_models(video_id)
        return page("video.html", title=str(row["uri"]), v=context, models=models)

    @app.get("/video/<video_id>/face/<int:frame_index>/<int:track_id>.jpg")
    def thumbnail(video_id: str, frame_index: int, track_id: int) -> Response:
        detector = request.args.get("detector", "")
        sampling = request.args.get("sampling", "")
        data = browser.crop(video_id, frame_index, track_id, detector, sampling)
        if data is None:
            abort(404, description="no such face in the shards")
        resp = Response(data, mimetype="image/jpeg")
        resp.headers["Cache-Control"] = "private, max-age=3600"  # crops never change
        return resp

    @app.get("/training")
    def training() -> Response:
        with browser.warehouse() as wh:
            # `dfscan train --warehouse` creates the table; an older warehouse lacks it.
            exists = wh.table_exists(wh.training_table)
            rows = wh.query_training_runs(limit=200) if exists else []
        return page("training.html", title="Training runs", exists=exists, rows=rows)

    return app


# ---------------------------------------------------------------- the report
def _data_uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def render_report(
    browser: ScanBrowser,
    run_id: str | None = None,
    window: TimeWindow | None = None,
    max_videos: int = REPORT_MAX_VIDEOS,
    generated_at: dt.datetime | None = None,
) -> str:
    """The UI's views as one HTML file: runs, videos, and a section per video with its
    thumbnails inlined as data: URIs, so it can be attached to a ticket."""
    if run_id is not None and window is not None:
        raise ConfigError("a report covers one run or a date range, not both")
    filters = VideoFilters(run_id=run_id, window=window)

    def thumb(row: Row, face: dict[str, Any]) -> str:
        data = browser.crop(
            str(row["video_id"]),
            int(face["frame_index"]),
            int(face["track_id"]),
            str(face["detector"]),
            str(face["sampling"]),
        )
        return _data_uri(data) if data is not None else ""

    links = Links(
        video=lambda row: "#" + anchor(str(row["video_id"]), str(row["model_version"])),
        thumb=thumb,
        videos=lambda **q: "#videos",
        runs="#runs",
        training="#training",
    )
    with browser.warehouse() as wh:
        if browser.has_scans(wh):
            if run_id is not None:
                runs = wh.runs(run_id=run_id)
                if not runs:
                    raise ConfigError(f"no run {run_id!r} in the warehouse")
            else:
                runs = wh.runs(
                    since=filters.since_dt, until=filters.until_dt, limit=REPORT_MAX_ROWS
                )
            # One row more than is shown: says whether the list was cut, not just full.
            rows = wh.search_scans(filters, REPORT_MAX_ROWS + 1)
        else:
            runs, rows = [], []
        truncated = len(rows) > REPORT_MAX_ROWS
        rows = rows[:REPORT_MAX_ROWS]
        # A run started before the window may have scanned videos within it: the runs
        # a listed video came from are in the runs table too.
        listed = {str(r["run_id"]) for r in runs}
        for missing in sorted({str(r["run_id"]) for r in rows} - listed):
            runs += wh.runs(run_id=missing)
        runs.sort(key=lambda r: str(r["run_id"]))
        runs.sort(key=lambda r: r["started_at"], reverse=True)  # newest first, as queried
        detailed = rows[:max_videos]  # highest fake_probability first
        videos = [video_context(browser, wh, r, links, THUMBS_REPORT) for r in detailed]
        sections = {str(v["anchor"]) for v in videos}  # rows the video table links
        run_list = run_views(wh, runs)
    scope = f"run {run_id}" if run_id else f"videos scanned in {window or TimeWindow()} (UTC)"
    return (
        template_env()
        .get_template("report.html")
        .render(
            title=f"dfscan report: {scope}",
            scope=scope,
            generated_at=_fmt_time(generated_at or dt.datetime.now(dt.timezone.utc)),
            csp=REPORT_CSP,
            links=links,
            report=True,
            runs=run_list,
            rows=rows,
            sections=sections,
            videos=videos,
            omitted=len(rows) - len(detailed),
            truncated=truncated,
        )
    )


# ---------------------------------------------------------------- command line
def register(sub: Any) -> None:
    import os

    from pipelines.cli import DEFAULT_OUT, _positive, warehouse_arg

    default_wh = os.environ.get("DFSCAN_WAREHOUSE")
    for name, help_text in (
        ("ui", "serve a read-only web UI of runs, videos and faces"),
        ("report", "write runs, videos and faces as one self-contained HTML file"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument(
            "--warehouse",
            type=warehouse_arg,
            default=default_wh,
            help=f"warehouse URL (default: duckdb://{DEFAULT_OUT}/scans.duckdb, in this directory)",
        )
        p.add_argument(
            "--faces",
            help=f"face shards URI, a scan's OUT/faces (default: {DEFAULT_OUT}/faces; the"
            " pages show no thumbnails when it holds none)",
        )
        p.add_argument("--storage-options", help="JSON object passed to fsspec (e.g. endpoint)")
        if name == "ui":
            p.add_argument("--host", default="127.0.0.1", help="address to listen on")
            p.add_argument("--port", type=_port, default=8000, help="0: any free port")
            p.set_defaults(func=run_ui_command)
        else:
            p.add_argument("--out", required=True, help="the HTML file to write")
            p.add_argument("--run-id", help="one run's videos")
            add_window_arguments(p, "scanned")
            p.add_argument(
                "--max-videos",
                type=_positive(int),
                default=REPORT_MAX_VIDEOS,
                help="videos with a full section (thumbnails, chart); the rest are listed",
            )
            p.set_defaults(func=run_report_command)


def _browser(args: argparse.Namespace) -> ScanBrowser:
    from operators.read_shards import require_faces_root
    from pipelines.cli import DEFAULT_OUT, _storage_options, default_warehouse

    url = args.warehouse or default_warehouse(DEFAULT_OUT)
    open_reader(url)  # a bad URL fails now, with one line
    options = _storage_options(args.storage_options)
    faces = args.faces or f"{DEFAULT_OUT}/faces"
    try:
        require_faces_root(faces, options)
    except ConfigError as err:
        if args.faces is not None:
            raise  # a path the user gave that names nothing is a typo, not "no faces"
        print(f"dfscan {args.command}: {err}; the pages show no thumbnails", file=sys.stderr)
    return ScanBrowser(url, faces, options)


# argparse type: a TCP port. 0 asks the OS for a free one; the banner shows which.
_port = _within(int, 0, 65535)


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on ``host:port``, or a ConfigError that says why not.

    Bound here, before the banner, because werkzeug reports a failed bind (an unknown
    host, a port in use) as a bare strerror on stderr and exits 1.
    """
    from werkzeug.serving import LISTEN_QUEUE, get_sockaddr, select_address_family

    family = select_address_family(host, port)  # werkzeug's: IPv4, IPv6 or unix://
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family in (socket.AF_INET, socket.AF_INET6):
            # As http.server does: a restart need not wait for the old socket's TIME_WAIT.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(get_sockaddr(host, port, family))
        sock.listen(LISTEN_QUEUE)
    except OSError as err:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    return sock


def run_ui_command(args: argparse.Namespace) -> int:
    from werkzeug.serving import make_server

    browser = _browser(args)
    with browser.warehouse() as wh:
        wh.table_exists("video_scans")  # fail now, not on the first request
    with listen(args.host, args.port) as sock:  # the server serves a duplicate of it
        server = make_server(
            args.host, args.port, create_app(browser), threaded=True, fd=sock.fileno()
        )
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"dfscan ui: listening on {args.host}: the UI has no login", file=sys.stderr)
    print(
        f"dfscan ui: http://{args.host}:{server.port}/ (read-only; Ctrl-C stops)",
        file=sys.stderr,
    )
    server.log_startup()
    server.serve_forever()  # returns on Ctrl-C, and closes the socket
    return 0


def run_report_command(args: argparse.Namespace) -> int:
    if args.run_id and (args.since or args.until):
        raise ConfigError("pass --run-id or --since/--until, not both")
    window = resolve_window(args.since, args.until)
    html = render_report(_browser(args), args.run_id, window, max_videos=args.max_videos)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(out)  # a reader never sees half a report
    print(f"dfscan report: wrote {out} ({len(html.encode()) / 1e6:.1f} MB)", file=sys.stderr)
    return 0
