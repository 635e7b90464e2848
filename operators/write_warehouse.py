"""The warehouse: one row per (video, model version), one row per run, dashboard views.

``Warehouse`` holds every query that DuckDB and PostgreSQL share (runs, reads, the
incremental-scan check), written once with the dialect's placeholder, so two backends
cannot answer the same question differently. A backend supplies the connection, the
bulk upsert and the placeholder, and registers its URL scheme in ``WAREHOUSES``.

Upserts are keyed by ``VIDEO_SCANS_KEY`` (video_id, model_version): a rerun replaces a
video's row instead of adding one, so a crash and a retry leave one row per key.

DuckDB and processes: a DuckDB file takes one writing process at a time (a second
process that opens it for writing fails with a lock error). So the connection is opened
lazily by the process that uses it (``WarehouseWriter.setup`` on the one writer worker,
``resources.concurrency == 1``), never on the driver before the operator is shipped, and
a reader (``dfscan results``) should open, query and ``close()`` promptly rather than
hold the file while a scan wants to write.
"""

from __future__ import annotations

import abc
import contextlib
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import pyarrow as pa

from operators.base import Operator, Resources
from operators.list_videos import URI_ID_PREFIX
from operators.redact import MASK, redact
from pipelines.config import ConfigError
from schemas.arrow import VIDEO_SCANS_KEY, VIDEO_SCANS_SCHEMA
from schemas.records import TrainingRun, VideoFile, VideoRef, VideoScan, VideoStatus
from schemas.warehouse import (
    RUN_STATUSES,
    SCAN_RUNS_KEY,
    SCAN_RUNS_SCHEMA,
    TRAINING_RUNS_KEY,
    TRAINING_RUNS_SCHEMA,
    VIDEO_URIS_KEY,
    VIDEO_URIS_REFRESHED,
    VIDEO_URIS_SCHEMA,
    quote_identifier,
    scan_runs_ddl,
    training_runs_ddl,
    upsert_sql,
    validate_identifier,
    video_scans_ddl,
    video_uris_ddl,
    view_statements,
)

if TYPE_CHECKING:
    import duckdb
    import psycopg

Row = dict[str, Any]
_W = TypeVar("_W", bound="Warehouse")

# Ids per IN (...) list: well under every driver's parameter limit (PostgreSQL: 65535)
# while a 100k-video listing still takes only 100 round trips.
_KEYS_PER_QUERY = 1000
# Rows per multi-row VALUES insert: 250 x 8 columns = 2000 parameters per statement.
_ROWS_PER_INSERT = 250


def video_scans_table(rows: Sequence[VideoScan]) -> pa.Table:
    """Records as an Arrow table with the explicit warehouse schema (never inferred).

    ``scanned_at`` is epoch seconds in the record and a UTC timestamp in the table.
    """
    columns: dict[str, list[Any]] = {name: [] for name in VIDEO_SCANS_SCHEMA.names}
    for row in rows:
        for name, values in columns.items():
            values.append(getattr(row, name))
    columns["status"] = [VideoStatus(s).value for s in columns["status"]]
    columns["scanned_at"] = [
        datetime.fromtimestamp(t, tz=timezone.utc) for t in columns["scanned_at"]
    ]
    return pa.Table.from_pydict(columns, schema=VIDEO_SCANS_SCHEMA)


def _last_per_key(rows: Iterable[VideoScan]) -> list[VideoScan]:
    """One row per key, the last one given winning, as a rerun's row replaces the old.

    Needed because DuckDB's ON CONFLICT keeps the *first* of two same-key rows inside a
    single INSERT, and PostgreSQL rejects such an INSERT outright.
    """
    latest: dict[tuple[str, str], VideoScan] = {}
    for row in rows:
        latest[(row.video_id, row.model_version)] = row
    return list(latest.values())


def _status_value(status: str | VideoStatus) -> str:
    try:
        return VideoStatus(status).value
    except ValueError:
        choices = ", ".join(s.value for s in VideoStatus)
        raise ConfigError(f"unknown video status {status!r}: choose one of {choices}") from None


def _check_limit(limit: int | None) -> int | None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ConfigError(f"limit must be a non-negative integer, got {limit!r}")
    return limit


# A run id started again (a rerun of a killed run under --run-id) keeps when it first
# started: every other column of its record is reset to running.
RUN_RESTART_UPDATES = tuple(n for n in SCAN_RUNS_SCHEMA.names if n != "started_at")


def run_outcome(
    status: str,
    counts_by_status: Mapping[str, int],
    committed: Sequence[Row] = (),
) -> dict[str, Any]:
    """The columns ``finish_run`` sets, whatever the SQL dialect (``error`` apart).

    ``committed`` holds ``(status, n)`` rows of the scans table under the run id: they
    cover every attempt of a run id that was started again, which this attempt's own
    counts do not (it skipped what the killed one wrote). Per status the larger count
    is kept: another run may have replaced some of this one's rows meanwhile, and the
    record still says what this run wrote.
    """
    if status not in RUN_STATUSES or status == "running":
        raise ValueError(f"a run finishes as 'succeeded' or 'failed', not {status!r}")
    counts = {str(getattr(k, "value", k)): int(v) for k, v in counts_by_status.items()}
    for row in committed:
        counts[row["status"]] = max(counts.get(row["status"], 0), int(row["n"]))
    return {
        "ended_at": datetime.now(timezone.utc),
        "status": status,
        "videos_total": sum(counts.values()),
        "counts_by_status": json.dumps(dict(sorted(counts.items()))),
    }


class WarehouseUnavailable(ConnectionError):
    """The warehouse cannot be used right now: its file is locked by another process, or
    the server went away mid-run. Neither a bug nor a bad setting, so it is one line and
    exit 1 (an OSError, as other storage failures are): rows committed so far stay, and
    a rerun writes only what is missing. Messages carry no password."""


class Warehouse(abc.ABC):
    """Where scan results and run records live; one subclass per database.

    Subclasses implement ``_fetch``/``_execute`` (parametrised statements), the bulk
    ``upsert_scans`` and ``close``; everything else is shared SQL.
    """

    scheme: ClassVar[str]
    dialect: ClassVar[str]
    placeholder: ClassVar[str] = "?"
    # Processes that may write at once; None = no limit. The writer operator's
    # concurrency comes from here, so the engine never starts more than the DB allows.
    max_writers: ClassVar[int | None] = None

    def __init__(
        self,
        url: str,
        *,
        scans_table: str = "video_scans",
        runs_table: str = "scan_runs",
        uris_table: str = "video_uris",
        training_table: str = "training_runs",
    ) -> None:
        self.url = url
        self.scans_table = validate_identifier(scans_table)
        self.runs_table = validate_identifier(runs_table)
        self.uris_table = validate_identifier(uris_table)
        self.training_table = validate_identifier(training_table)
        # The run has used this warehouse already (its driver checked it before any
        # work): a connection refused now is an outage, not a setting to fix.
        self.reached = False

    # --- backend primitives -----------------------------------------------------------

    @abc.abstractmethod
    def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Run one parametrised statement and return its rows as dicts."""

    @abc.abstractmethod
    def _execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Run one parametrised statement that returns no rows, committed on return."""

    @abc.abstractmethod
    def upsert_scans(self, rows: list[VideoScan]) -> int:
        """Insert or replace rows by (video_id, model_version) in one transaction.

        Returns the number of distinct keys written (same-key rows in one call collapse
        to the last).
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connection; the object may connect again on next use."""

    # --- shared SQL -------------------------------------------------------------------

    def _params(self, n: int) -> str:
        return ", ".join([self.placeholder] * n)

    def ensure_schema(self) -> None:
        """Create tables and views if missing; refuse a table whose columns drifted.

        ``CREATE TABLE IF NOT EXISTS`` would silently keep an older layout, and the
        upsert would then fail on a missing column mid-scan; checking here fails at setup
        with the names of the missing columns.
        """
        self._execute(video_scans_ddl(self.dialect, self.scans_table))
        self._execute(scan_runs_ddl(self.dialect, self.runs_table))
        self._execute(video_uris_ddl(self.dialect, self.uris_table))
        self._execute(training_runs_ddl(self.dialect, self.training_table))
        for table, schema, key in (
            (self.scans_table, VIDEO_SCANS_SCHEMA, VIDEO_SCANS_KEY),
            (self.runs_table, SCAN_RUNS_SCHEMA, SCAN_RUNS_KEY),
            (self.uris_table, VIDEO_URIS_SCHEMA, VIDEO_URIS_KEY),
            (self.training_table, TRAINING_RUNS_SCHEMA, TRAINING_RUNS_KEY),
        ):
            found = {
                r["column_name"]: r
                for r in self._fetch(
                    "SELECT column_name, is_nullable, column_default"
                    " FROM information_schema.columns"
                    f" WHERE table_name = {self.placeholder}"
                    " AND table_schema = current_schema()",
                    [table],
                )
            }
            missing = [n for n in schema.names if n not in found]
            if missing:
                raise ConfigError(
                    f"warehouse table {table} lacks columns {', '.join(missing)}:"
                    " migrate it or use another database"
                )
            # A column this version does not write gets NULL: one that refuses it (left
            # by an older layout) would fail every upsert, after the decode.
            refusing = [
                n
                for n, r in found.items()
                if n not in schema.names
                and r["is_nullable"] == "NO"
                and r["column_default"] is None
            ]
            if refusing:
                raise ConfigError(
                    f"warehouse table {table} has NOT NULL columns this version does not"
                    f" write: {', '.join(sorted(refusing))}: give them a default, drop NOT NULL"
                    " or use another database"
                )
            # A table made without its key (CREATE TABLE AS, a restore that dropped
            # constraints) fails here, not at the first batch of rows, after the decode.
            # The catalog names the key our DDL declares; without it, the upsert is
            # planned on no rows, so the database itself says whether another unique
            # index serves (the probe locks the table, hence only then).
            p = self.placeholder
            keys: dict[str, set[str]] = {}
            for r in self._fetch(
                "SELECT tc.constraint_name, kcu.column_name"
                " FROM information_schema.table_constraints tc"
                " JOIN information_schema.key_column_usage kcu"
                " ON kcu.constraint_name = tc.constraint_name"
                " AND kcu.table_schema = tc.table_schema AND kcu.table_name = tc.table_name"
                f" WHERE tc.table_name = {p} AND tc.table_schema = current_schema()"
                " AND tc.constraint_type IN ('PRIMARY KEY', 'UNIQUE')",
                [table],
            ):
                keys.setdefault(r["constraint_name"], set()).add(r["column_name"])
            if set(key) in keys.values():
                continue
            cols = ", ".join(quote_identifier(n) for n in schema.names)
            probe = f"SELECT {cols} FROM {quote_identifier(table)} WHERE false"
            try:
                self._execute(upsert_sql(table, schema, key, probe))
            except self._no_conflict_key:
                raise ConfigError(
                    f"warehouse table {table} has no primary key or unique index on"
                    f" ({', '.join(key)}): add one or use another database"
                ) from None
        for statement in view_statements(self.scans_table):
            try:
                self._execute(statement)
            except self._view_mismatch as err:
                # CREATE OR REPLACE VIEW <name> AS ...: a view of another layout (an
                # older version's, a hand-edited one) cannot be replaced in place.
                view = statement.split()[4]
                raise ConfigError(
                    f"warehouse view {view} has another layout ({_pg_reason(err)}):"
                    " drop it and the next scan makes it again"
                ) from None

    @property
    def _no_conflict_key(self) -> tuple[type[Exception], ...]:
        """The error the backend raises for an ON CONFLICT target no unique key matches
        (a property: the driver is imported only when used)."""
        return ()

    @property
    def _view_mismatch(self) -> tuple[type[Exception], ...]:
        """The error the backend raises when CREATE OR REPLACE VIEW would change an
        existing view's columns (DuckDB replaces any view)."""
        return ()

    def start_run(self, run_id: str, command: str, config_json: str, code_version: str) -> None:
        """Record a run as running. A restart with the same run_id resets its row but for
        ``started_at``: the record spans every attempt."""
        values = {
            "run_id": run_id,
            "command": command,
            "config": config_json,
            "code_version": code_version,
            "started_at": datetime.now(timezone.utc),
            "ended_at": None,
            "status": "running",
            "videos_total": None,
            "counts_by_status": None,
            "error": None,
        }
        params = [values[n] for n in SCAN_RUNS_SCHEMA.names]
        source = f"VALUES ({self._params(len(params))})"
        sql = upsert_sql(
            self.runs_table, SCAN_RUNS_SCHEMA, SCAN_RUNS_KEY, source, RUN_RESTART_UPDATES
        )
        self._execute(sql, params)

    def finish_run(
        self,
        run_id: str,
        status: str,
        counts_by_status: Mapping[str, int],
        error: str | None,
    ) -> None:
        """Close a run with its outcome and per-status video counts (see run_outcome)."""
        p = self.placeholder
        committed = self._fetch(
            f"SELECT status, COUNT(*) AS n FROM {quote_identifier(self.scans_table)}"
            f" WHERE run_id = {p} GROUP BY status",
            [run_id],
        )
        values = {**run_outcome(status, counts_by_status, committed), "error": error}
        sets = ", ".join(f"{quote_identifier(n)} = {p}" for n in values)
        rows = self._fetch(
            f"UPDATE {quote_identifier(self.runs_table)} SET {sets}"
            f" WHERE run_id = {p} RETURNING run_id",
            [*values.values(), run_id],
        )
        if not rows:
            raise LookupError(f"no run {run_id!r} in {self.runs_table}: start_run was not called")

    def query_scans(
        self,
        status: str | None = None,
        limit: int | None = None,
        model_version: str | None = None,
    ) -> list[Row]:
        """Rows newest first, optionally of one status and/or one model version."""
        where: list[str] = []
        params: list[Any] = []
        if status is not None:
            where.append(f"status = {self.placeholder}")
            params.append(_status_value(status))
        if model_version is not None:
            where.append(f"model_version = {self.placeholder}")
            params.append(model_version)
        cols = ", ".join(quote_identifier(n) for n in VIDEO_SCANS_SCHEMA.names)
        sql = f"SELECT {cols} FROM {quote_identifier(self.scans_table)}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY scanned_at DESC, video_id, model_version"
        if _check_limit(limit) is not None:
            sql += f" LIMIT {self.placeholder}"
            params.append(limit)
        return self._fetch(sql, params)

    def query_runs(self, limit: int = 20) -> list[Row]:
        """Runs newest first; JSON columns (config, counts_by_status) stay text."""
        _check_limit(limit)
        cols = ", ".join(quote_identifier(n) for n in SCAN_RUNS_SCHEMA.names)
        return self._fetch(
            f"SELECT {cols} FROM {quote_identifier(self.runs_table)}"
            f" ORDER BY started_at DESC, run_id LIMIT {self.placeholder}",
            [limit],
        )

    def scanned_keys(self, model_version: str, video_ids: list[str]) -> set[str]:
        """The ids among ``video_ids`` that already have a row under ``model_version``.

        Any status counts as scanned; a caller that wants to retry errors filters the
        ids it passes (or rescans with --force).
        """
        found: set[str] = set()
        unique = list(dict.fromkeys(video_ids))
        table = quote_identifier(self.scans_table)
        for start in range(0, len(unique), _KEYS_PER_QUERY):
            chunk = unique[start : start + _KEYS_PER_QUERY]
            rows = self._fetch(
                f"SELECT video_id FROM {table} WHERE model_version = {self.placeholder}"
                f" AND video_id IN ({self._params(len(chunk))})",
                [model_version, *chunk],
            )
            found.update(r["video_id"] for r in rows)
        return found

    def latest_scans(self, video_ids: Sequence[str]) -> dict[str, Row]:
        """The newest row of each video under any model version (what a rescore carries
        over: size, header facts, frames sampled, the shard its faces are in)."""
        unique = list(dict.fromkeys(video_ids))
        cols = ", ".join(quote_identifier(n) for n in VIDEO_SCANS_SCHEMA.names)
        table = quote_identifier(self.scans_table)
        latest: dict[str, Row] = {}
        for start in range(0, len(unique), _KEYS_PER_QUERY):
            chunk = unique[start : start + _KEYS_PER_QUERY]
            rows = self._fetch(
                f"SELECT {cols} FROM {table} WHERE video_id IN ({self._params(len(chunk))})"
                " ORDER BY scanned_at, model_version",
                chunk,
            )
            for row in rows:
                latest[row["video_id"]] = row  # ascending order: the newest wins
        return latest

    def known_video_ids(self, files: Sequence[VideoFile]) -> dict[str, str]:
        """uri -> content id for listed files seen before with the same size and mtime.

        The hash cache of incremental scans: such a file is not read again. Only content
        hashes are reused; an id made from the URI (a file too large or unreadable last
        time) is worked out afresh. Files without an mtime are never cached: size alone
        cannot tell a replaced upload from the old one.
        """
        stamp = {f.uri: (f.size_bytes, f.mtime) for f in files if f.mtime is not None}
        uris = list(stamp)
        table = quote_identifier(self.uris_table)
        found: dict[str, tuple[Any, str]] = {}
        for start in range(0, len(uris), _KEYS_PER_QUERY):
            chunk = uris[start : start + _KEYS_PER_QUERY]
            rows = self._fetch(
                f"SELECT uri, video_id, size_bytes, mtime, last_seen_at FROM {table}"
                f" WHERE uri IN ({self._params(len(chunk))})",
                chunk,
            )
            for r in rows:
                if (r["size_bytes"], r["mtime"]) != stamp[r["uri"]]:
                    continue
                if r["video_id"].startswith(URI_ID_PREFIX):
                    continue
                best = found.get(r["uri"])
                if best is None or r["last_seen_at"] > best[0]:
                    found[r["uri"]] = (r["last_seen_at"], r["video_id"])
        return {uri: vid for uri, (_, vid) in found.items()}

    def record_uris(self, refs: Sequence[VideoRef], run_id: str) -> int:
        """Record that each ref's bytes were seen under its URI in this run.

        A first sighting keeps its run and time; later ones refresh size, mtime and the
        last run. Returns the number of distinct (uri, video_id) pairs written.
        """
        now = datetime.now(timezone.utc)
        latest: dict[tuple[str, str], VideoRef] = {}
        for ref in refs:
            latest[(ref.uri, ref.video_id)] = ref
        rows = [latest[k] for k in sorted(latest)]
        width = len(VIDEO_URIS_SCHEMA.names)
        for start in range(0, len(rows), _ROWS_PER_INSERT):
            chunk = rows[start : start + _ROWS_PER_INSERT]
            values = ", ".join(f"({self._params(width)})" for _ in chunk)
            params: list[Any] = []
            for ref in chunk:
                params += [ref.video_id, ref.uri, ref.size_bytes, ref.mtime]
                params += [run_id, now, run_id, now]
            sql = upsert_sql(
                self.uris_table,
                VIDEO_URIS_SCHEMA,
                VIDEO_URIS_KEY,
                f"VALUES {values}",
                update=VIDEO_URIS_REFRESHED,
            )
            self._execute(sql, params)
        return len(rows)

    def query_uris(self, video_id: str | None = None) -> list[Row]:
        """Every recorded (uri, video) sighting, by video then URI."""
        cols = ", ".join(quote_identifier(n) for n in VIDEO_URIS_SCHEMA.names)
        sql = f"SELECT {cols} FROM {quote_identifier(self.uris_table)}"
        params: list[Any] = []
        if video_id is not None:
            sql += f" WHERE video_id = {self.placeholder}"
            params.append(video_id)
        return self._fetch(sql + " ORDER BY video_id, uri", params)

    def record_training_run(self, run: TrainingRun) -> None:
        """Insert or replace one training run by run_id: written once as ``running`` when
        it starts and again when it ends, so a crashed run stays visible as running."""
        values: dict[str, Any] = {n: getattr(run, n) for n in TRAINING_RUNS_SCHEMA.names}
        values["started_at"] = datetime.fromtimestamp(run.started_at, tz=timezone.utc)
        if run.ended_at is not None:
            values["ended_at"] = datetime.fromtimestamp(run.ended_at, tz=timezone.utc)
        params = [values[n] for n in TRAINING_RUNS_SCHEMA.names]
        source = f"VALUES ({self._params(len(params))})"
        self._execute(
            upsert_sql(self.training_table, TRAINING_RUNS_SCHEMA, TRAINING_RUNS_KEY, source),
            params,
        )

    def query_training_runs(
        self, limit: int | None = 50, command: str | None = None, parent_run_id: str | None = None
    ) -> list[Row]:
        """Training runs newest first; JSON columns (config, metrics) stay text."""
        where: list[str] = []
        params: list[Any] = []
        if command is not None:
            where.append(f"command = {self.placeholder}")
            params.append(command)
        if parent_run_id is not None:
            where.append(f"parent_run_id = {self.placeholder}")
            params.append(parent_run_id)
        cols = ", ".join(quote_identifier(n) for n in TRAINING_RUNS_SCHEMA.names)
        sql = f"SELECT {cols} FROM {quote_identifier(self.training_table)}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY started_at DESC, run_id"
        if _check_limit(limit) is not None:
            sql += f" LIMIT {self.placeholder}"
            params.append(limit)
        return self._fetch(sql, params)

    def __enter__(self: _W) -> _W:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_DUCKDB_PREFIX = "duckdb://"
_STAGED = "_dfscan_staged_scans"  # per-connection Arrow view of the batch being upserted


def duckdb_path(url: str) -> str:
    """The file path of a ``duckdb://`` URL: everything after ``duckdb://``.

    As with ``file://`` URLs, ``duckdb:///data/x.duckdb`` is absolute and
    ``duckdb://out/x.duckdb`` is relative to the working directory;
    ``duckdb://:memory:`` is an in-memory database (tests, dry runs).
    """
    if not url.startswith(_DUCKDB_PREFIX):
        raise ConfigError(f"not a DuckDB URL {url!r}: use duckdb:///path/to/file.duckdb")
    path = url[len(_DUCKDB_PREFIX) :]
    if path in (":memory:", "/:memory:"):
        return ":memory:"
    if not path or path.endswith("/"):
        raise ConfigError(f"DuckDB URL {url!r} names no file: use duckdb:///path/to/file.duckdb")
    return path


class DuckDBWarehouse(Warehouse):
    """A DuckDB file (or memory). One writing process at a time: see the module docstring."""

    scheme = "duckdb"
    dialect = "duckdb"
    placeholder = "?"
    max_writers = 1  # DuckDB locks the file for one writing process

    def __init__(
        self,
        url: str,
        *,
        scans_table: str = "video_scans",
        runs_table: str = "scan_runs",
        uris_table: str = "video_uris",
    ) -> None:
        super().__init__(url, scans_table=scans_table, runs_table=runs_table, uris_table=uris_table)
        self.path = duckdb_path(url)
        self._con: duckdb.DuckDBPyConnection | None = None

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        """The connection, opened on first use in the process that uses it."""
        if self._con is None:
            import duckdb

            try:
                if self.path != ":memory:":
                    Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise ConfigError(f"cannot create warehouse {self.url}: {err.strerror}") from None
            try:
                con = duckdb.connect(self.path)
            except duckdb.IOException as err:
                raise _duckdb_open_error(self.url, err) from None
            # Timestamps come back as UTC, whatever the host's zone.
            con.execute("SET TimeZone = 'UTC'").fetchall()
            self._con = con
        return self._con

    def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        cur = self.con.execute(sql, list(params))
        names = [d[0] for d in cur.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        # Drain the result: in DuckDB 2.0 an open result holds the connection.
        self.con.execute(sql, list(params)).fetchall()

    @property
    def _no_conflict_key(self) -> tuple[type[Exception], ...]:
        import duckdb

        return (duckdb.BinderException,)

    def upsert_scans(self, rows: list[VideoScan]) -> int:
        import duckdb

        unique = _last_per_key(rows)
        if not unique:
            return 0
        con = self.con
        names = ", ".join(quote_identifier(n) for n in VIDEO_SCANS_SCHEMA.names)
        sql = upsert_sql(
            self.scans_table,
            VIDEO_SCANS_SCHEMA,
            VIDEO_SCANS_KEY,
            f"SELECT {names} FROM {quote_identifier(_STAGED)}",
        )
        con.register(_STAGED, video_scans_table(unique))
        try:
            con.begin()
            try:
                con.execute(sql).fetchall()
            except duckdb.Error:
                con.rollback()
                raise
            con.commit()
        finally:
            con.unregister(_STAGED)
        return len(unique)

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None


def _duckdb_open_error(url: str, err: Exception) -> Exception:
    """One line for a file DuckDB cannot open: held by another process (a scan, a
    ``dfscan results``, a notebook; DuckDB takes one process at a time and does not wait),
    or not a database it can read."""
    text = str(err).removeprefix("IO Error: ")
    if "Could not set lock" in text:
        holder = re.search(r"\(PID (\d+)\)", text)
        pid = f" (pid {holder.group(1)})" if holder else ""
        return WarehouseUnavailable(f"warehouse {url} is locked by another process{pid}")
    return ConfigError(f"cannot open warehouse {url}: {text.splitlines()[0]}")


_PG_STAGED = "_dfscan_staged_scans"  # per-transaction temp table the batch is COPYed into
# Key of the advisory lock that serialises ensure_schema across processes: concurrent
# CREATE TABLE IF NOT EXISTS in PostgreSQL can still fail on the catalog's unique index.
_PG_SCHEMA_LOCK = 0x64667363616E  # "dfscan"


def _redacted(url: str) -> str:
    """The URL without its password, for error messages."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    # host[:port] as written: .port would raise on a port that is not a number.
    where = parts.netloc.rpartition("@")[2]
    user = f"{parts.username}@" if parts.username else ""
    return f"{parts.scheme}://{user}{where}{parts.path}"


# libpq waits for the OS's TCP timeout (minutes) on a host that drops packets, and NAT
# or load balancers drop connections idle for a few minutes, as a writer waiting on
# decode often is. Unless the URL (or PGCONNECT_TIMEOUT) says otherwise: give up
# connecting after 10 s, and send TCP keepalives after 60 s idle.
_PG_DEFAULTS = {"connect_timeout": "10", "keepalives_idle": "60"}


def _pg_conninfo(url: str) -> str:
    """``url`` with the defaults above for what neither it nor the environment sets.

    A URL libpq cannot parse (a misspelt parameter, a bad %-escape, an unclosed ``[``)
    is a setting, one line; libpq's own message quotes the token or the whole URL, so
    the password is masked in it.
    """
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    try:
        given = conninfo_to_dict(url)
    except psycopg.ProgrammingError as err:
        reason = redact(_pg_reason(err))
        password = url.partition("://")[2].rpartition("@")[0].partition(":")[2]
        if password:
            reason = reason.replace(password, MASK)
        raise ConfigError(f"invalid warehouse URL {redact(url)}: {reason}") from None
    unset = {
        k: v
        for k, v in _PG_DEFAULTS.items()
        if k not in given and f"PG{k.upper()}" not in os.environ
    }
    return make_conninfo(url, **unset)


def _pg_reason(err: Exception) -> str:
    """libpq's first line (``connection to server at ... failed: Connection refused``);
    the rest is hints. libpq never puts the password in a message."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0].removeprefix("connection failed: ") if lines else type(err).__name__


class PostgresWarehouse(Warehouse):
    """A PostgreSQL database, ``postgresql://user:pass@host:port/db`` (libpq URL syntax).

    Many processes may write at once: rows are upserted in key order inside one
    transaction, so two writers never deadlock on each other's rows, and the last
    commit wins per key. A batch is COPYed into a temporary table and merged with one
    ``INSERT ... SELECT ... ON CONFLICT``: one round trip for the rows, not one per row.
    """

    scheme = "postgresql"
    dialect = "postgres"
    placeholder = "%s"
    max_writers = None

    def __init__(
        self,
        url: str,
        *,
        scans_table: str = "video_scans",
        runs_table: str = "scan_runs",
        uris_table: str = "video_uris",
    ) -> None:
        super().__init__(url, scans_table=scans_table, runs_table=runs_table, uris_table=uris_table)
        self._con: psycopg.Connection[Row] | None = None

    @property
    def con(self) -> psycopg.Connection[Row]:
        """The connection, opened on first use in the process that uses it, and again
        on the next use after the server closed it (a restart, an idle cut).

        A first connection that fails is a setting to check (wrong host, port, password,
        or the server is down before anything ran); failing to reconnect is a warehouse
        lost mid-run.
        """
        if self._con is None or self._con.closed:
            import psycopg
            from psycopg.rows import dict_row

            lost = self._con is not None or self.reached
            try:
                con = psycopg.connect(_pg_conninfo(self.url), autocommit=True, row_factory=dict_row)
            except psycopg.OperationalError as err:
                where = f"warehouse {_redacted(self.url)}"
                if lost:
                    raise WarehouseUnavailable(
                        f"lost {where} and cannot reconnect: {_pg_reason(err)}"
                    ) from None
                raise ConfigError(f"cannot connect to {where}: {_pg_reason(err)}") from None
            # Timestamps come back as UTC, whatever the server's or host's zone.
            con.execute("SET TimeZone = 'UTC'")
            self._con = con
        return self._con

    def _checked_con(self) -> psycopg.Connection[Row]:
        """The connection, checked with an empty statement (as psycopg_pool checks a
        pooled one): a writer idles while videos decode, and a server restart or
        failover in that time cuts its connection without a word. Found here, it is
        opened again before the batch is sent; the batch itself is never sent twice."""
        import psycopg

        con = self.con
        try:
            con.execute("")
        except psycopg.OperationalError:
            con.close()
            con = self.con  # reconnects, or says the warehouse is lost
        return con

    @contextlib.contextmanager
    def _unavailable(self) -> Iterator[None]:
        """psycopg's OperationalError (server shut down or restarted, connection cut) as
        one WarehouseUnavailable line. The server rolls back a transaction whose
        connection it lost, so nothing of it is committed."""
        import psycopg

        try:
            yield
        except psycopg.OperationalError as err:
            raise WarehouseUnavailable(
                f"warehouse {_redacted(self.url)} is unavailable: {_pg_reason(err)}"
            ) from err

    def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with self._unavailable():
            cur = self.con.execute(sql, list(params))
            return list(cur.fetchall()) if cur.description else []

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        with self._unavailable():
            self.con.execute(sql, list(params))

    @property
    def _no_conflict_key(self) -> tuple[type[Exception], ...]:
        import psycopg

        return (psycopg.errors.InvalidColumnReference,)

    @property
    def _view_mismatch(self) -> tuple[type[Exception], ...]:
        import psycopg

        return (psycopg.errors.InvalidTableDefinition,)

    def ensure_schema(self) -> None:
        """The shared schema setup, serialised across processes by an advisory lock."""
        self._execute("SELECT pg_advisory_lock(%s)", [_PG_SCHEMA_LOCK])
        try:
            super().ensure_schema()
        finally:
            self._execute("SELECT pg_advisory_unlock(%s)", [_PG_SCHEMA_LOCK])

    def upsert_scans(self, rows: list[VideoScan]) -> int:
        unique = sorted(_last_per_key(rows), key=lambda r: (r.video_id, r.model_version))
        if not unique:
            return 0
        names = VIDEO_SCANS_SCHEMA.names
        cols = ", ".join(quote_identifier(n) for n in names)
        staged = quote_identifier(_PG_STAGED)
        order = ", ".join(quote_identifier(k) for k in VIDEO_SCANS_KEY)
        merge = upsert_sql(
            self.scans_table,
            VIDEO_SCANS_SCHEMA,
            VIDEO_SCANS_KEY,
            f"SELECT {cols} FROM {staged} ORDER BY {order}",
        )
        with self._unavailable():
            con = self._checked_con()
            with con.transaction(), con.cursor() as cur:
                cur.execute(
                    # With its defaults: a column this version does not COPY gets its
                    # default here as in the table, not a NULL its NOT NULL refuses.
                    f"CREATE TEMPORARY TABLE {staged} (LIKE"
                    f" {quote_identifier(self.scans_table)} INCLUDING DEFAULTS) ON COMMIT DROP"
                )
                with cur.copy(f"COPY {staged} ({cols}) FROM STDIN") as copy:
                    for record in video_scans_table(unique).to_pylist():
                        copy.write_row([record[n] for n in names])
                cur.execute(merge)
        return len(unique)

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None


# URL scheme -> backend; a new database adds its class here.
WAREHOUSES: dict[str, type[Warehouse]] = {
    DuckDBWarehouse.scheme: DuckDBWarehouse,
    PostgresWarehouse.scheme: PostgresWarehouse,
    "postgres": PostgresWarehouse,  # libpq accepts both spellings
}
# bigquery://: a module of its own that subclasses Warehouse, so it adds itself to
# WAREHOUSES when imported here (its client is imported only when used).
import operators.warehouse_bigquery  # noqa: E402, F401


def warehouse_class(url: str) -> type[Warehouse]:
    """The backend for a URL's scheme. Errors name the scheme only: URLs carry passwords."""
    scheme, sep, _ = url.partition("://")
    if not sep or not scheme:
        raise ConfigError("warehouse URL has no scheme: use e.g. duckdb:///path/to/file.duckdb")
    try:
        return WAREHOUSES[scheme.lower()]
    except KeyError:
        raise ConfigError(
            f"unknown warehouse URL scheme {scheme!r}: choose one of {', '.join(WAREHOUSES)}"
        ) from None


def build_warehouse(url: str) -> Warehouse:
    """A warehouse for ``url``, not yet connected (it connects on first use)."""
    return warehouse_class(url)(url)


class WarehouseWriter(Operator[VideoScan, VideoScan]):
    """Upserts each batch of result rows and passes the rows on unchanged."""

    name = "write_warehouse"

    def __init__(self, url: str, rows_per_batch: int = 256) -> None:
        build_warehouse(url)  # a bad URL fails here, on the driver, not on a worker
        self.url = url
        self.rows_per_batch = rows_per_batch
        self._warehouse: Warehouse | None = None

    @property
    def resources(self) -> Resources:
        return Resources(
            cpus=0.25,  # waits on the database; leaves the cores to decode and inference
            # Rows per transaction: amortises the commit, small replay.
            batch_size=self.rows_per_batch,
            concurrency=warehouse_class(self.url).max_writers,
        )

    def setup(self) -> None:
        self._warehouse = build_warehouse(self.url)
        # The driver connected before any work; on Beam this runs after the decode,
        # where a server that went down since is exit 1 (rerun), not exit 2 (a setting).
        self._warehouse.reached = True
        self._warehouse.ensure_schema()

    def process_batch(self, items: list[VideoScan]) -> list[VideoScan]:
        if self._warehouse is None:
            raise RuntimeError("WarehouseWriter.process_batch called before setup()")
        self._warehouse.upsert_scans(items)
        return list(items)

    def teardown(self) -> None:
        if self._warehouse is not None:
            self._warehouse.close()
            self._warehouse = None
