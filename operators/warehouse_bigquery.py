"""BigQuery as a warehouse: ``bigquery://PROJECT/DATASET[.TABLE][?location=EU]``.

The same tables, keys and dashboard views as DuckDB and PostgreSQL, in BigQuery's terms:

- Tables are created from ``schemas/warehouse.py`` (``bigquery_fields``, and the
  partitioning and clustering of ``WAREHOUSE_TABLES``), each key declared as BigQuery's
  unenforced primary key. ``.TABLE`` in the URL names the results table (default
  ``video_scans``); the other tables keep their names in the same dataset.
- BigQuery enforces no key, so idempotence is the writer's: a batch is loaded (Parquet,
  typed by the Arrow schema) into a staging table of its own, then merged into the
  target with one ``MERGE`` on the key. A replayed batch updates the same rows; nothing
  is ever plainly ``INSERT``ed into a warehouse table. A single row (a run starting,
  a training run) merges from query parameters, without a staging table.
- Every value is a query parameter. Project, dataset and table names are validated and
  backtick-quoted before they are put into SQL text.
- The client is created on first use, in the process that uses it, with the URL's
  project and location and Google's default credentials (``GOOGLE_APPLICATION_
  CREDENTIALS``, ``gcloud auth application-default login``, a workload's service
  account). The first call (fetching the dataset) retries for ``connect_timeout``
  seconds only, so a wrong or unreachable endpoint fails the command in one line
  before any video is read. Tests inject a client.
- One writer at a time: concurrent MERGEs into the same (today's) partition conflict,
  and BigQuery reruns a conflicting statement only a few times.
"""

from __future__ import annotations

import importlib.util
import io
import json
import logging
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qsl, urlsplit

import pyarrow as pa

from operators.list_videos import URI_ID_PREFIX
from operators.write_warehouse import (
    RUN_RESTART_UPDATES,
    WAREHOUSES,
    Row,
    Warehouse,
    _check_limit,
    _last_per_key,
    _status_value,
    run_outcome,
    video_scans_table,
)
from pipelines.config import ConfigError
from schemas.arrow import VIDEO_SCANS_SCHEMA
from schemas.records import TrainingRun, VideoFile, VideoRef, VideoScan
from schemas.warehouse import (
    SCAN_RUNS_SCHEMA,
    TRAINING_RUNS_SCHEMA,
    VIDEO_URIS_REFRESHED,
    VIDEO_URIS_SCHEMA,
    bigquery_fields,
    bigquery_quote,
    bigquery_table_path,
    bigquery_view_statements,
    sql_type,
    validate_bigquery_dataset,
    validate_bigquery_project,
    validate_identifier,
    warehouse_table,
)

if TYPE_CHECKING:
    from google.cloud import bigquery

log = logging.getLogger(__name__)

SCHEME = "bigquery"

# How long the first call retries: long enough to ride out a network blip, short enough
# that a wrong endpoint fails before any work (the client's own default is ten
# minutes). ``?connect_timeout=`` in the URL changes it, as in libpq.
DEFAULT_CONNECT_TIMEOUT_S = 30.0
# A staging table expires on its own after this, so a writer killed between load and
# MERGE leaves nothing for long; well past how long a MERGE may wait in BigQuery's DML
# queue.
_STAGING_TTL = timedelta(days=1)
_STAGING_PREFIX = "_dfscan_staging_"
# Ids per array parameter: parameters count towards BigQuery's 10 MB request limit,
# and 10,000 ids of ~70 bytes stay near 1 MB.
_IDS_PER_QUERY = 10_000
# Region or multi-region names: US, EU, europe-west1, northamerica-northeast2, ...
_LOCATION_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")


@dataclass(frozen=True)
class BigQueryTarget:
    """Where a ``bigquery://`` URL points; every part validated."""

    project: str
    dataset: str
    table: str | None = None  # the results table, when the URL names one
    location: str | None = None  # None: the client's default (the dataset's, or US)
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S


def _url_error(url: str, reason: str) -> ConfigError:
    return ConfigError(
        f"invalid BigQuery URL {url!r}: {reason}"
        " (use bigquery://PROJECT/DATASET[.TABLE][?location=EU&connect_timeout=30])"
    )


def parse_bigquery_url(url: str) -> BigQueryTarget:
    """``bigquery://PROJECT/DATASET[.TABLE][?location=L&connect_timeout=S]`` -> target.

    ``.TABLE`` names the results table, as Beam's WriteToBigQuery sink takes it, so one
    URL serves both writers.
    """
    parts = urlsplit(url)
    if parts.scheme.lower() != SCHEME:
        raise _url_error(url, "not a bigquery:// URL")
    if parts.fragment or "@" in parts.netloc or ":" in parts.netloc:
        raise _url_error(url, "no user, port or fragment belongs in it")
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    if not parts.netloc or not path or "/" in path:
        raise _url_error(url, "name a project and a dataset")
    dataset, _, table = path.partition(".")
    try:
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise _url_error(url, "its query is not name=value pairs") from None
    options = dict(pairs)
    if len(options) != len(pairs):
        raise _url_error(url, "a parameter is given twice")
    unknown = sorted(set(options) - {"location", "connect_timeout"})
    if unknown:
        raise _url_error(url, f"unknown parameter {unknown[0]!r}")
    location = options.get("location")
    if location is not None and (
        not 2 <= len(location) <= 64 or not set(location) <= _LOCATION_CHARS
    ):
        raise _url_error(url, f"location {location!r} is not a region name")
    timeout = DEFAULT_CONNECT_TIMEOUT_S
    if "connect_timeout" in options:
        try:
            timeout = float(options["connect_timeout"])
        except ValueError:
            timeout = -1.0
        if not 0 < timeout <= 600:
            raise _url_error(url, "connect_timeout must be seconds in (0, 600]")
    return BigQueryTarget(
        project=validate_bigquery_project(parts.netloc),
        dataset=validate_bigquery_dataset(dataset),
        table=validate_identifier(table) if table else None,
        location=location,
        connect_timeout_s=timeout,
    )


def merge_sql(
    target: str,
    source: str,
    schema: pa.Schema,
    key: Sequence[str],
    update: Sequence[str] | None = None,
) -> str:
    """``MERGE target USING source ON key``: update every non-key column (or only
    ``update``) of a matched row, insert an unmatched one.

    ``target`` is a path from ``bigquery_table_path``; ``source`` is trusted SQL from
    this module (a staging table path, or a ``SELECT`` of query parameters).
    """
    q = bigquery_quote
    names = schema.names
    on = " AND ".join(f"T.{q(k)} = S.{q(k)}" for k in key)
    sets = ",\n    ".join(
        f"{q(n)} = S.{q(n)}" for n in names if n not in key and (update is None or n in update)
    )
    cols = ", ".join(q(n) for n in names)
    values = ", ".join(f"S.{q(n)}" for n in names)
    return (
        f"MERGE {target} AS T\nUSING {source} AS S\nON {on}\n"
        f"WHEN MATCHED THEN UPDATE SET\n    {sets}\n"
        f"WHEN NOT MATCHED THEN INSERT ({cols})\nVALUES ({values})"
    )


def _one_line(err: object) -> str:
    text = str(getattr(err, "message", None) or err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class ScanFilters(Protocol):
    """The video list's filters as the web UI passes them (``webui.VideoFilters``)."""

    @property
    def status(self) -> str | None: ...

    @property
    def label(self) -> str | None: ...

    @property
    def model(self) -> str | None: ...

    @property
    def run_id(self) -> str | None: ...

    @property
    def min_score(self) -> float | None: ...

    @property
    def max_score(self) -> float | None: ...

    @property
    def since_dt(self) -> datetime | None: ...

    @property
    def until_dt(self) -> datetime | None: ...


class BigQueryWarehouse(Warehouse):
    """A BigQuery dataset: see the module docstring for how writes stay idempotent."""

    scheme = SCHEME
    dialect = "bigquery"
    placeholder = "?"  # unused: every statement here takes named parameters
    # Concurrent MERGEs into today's partition conflict; one writer serialises them.
    max_writers = 1

    def __init__(
        self,
        url: str,
        *,
        scans_table: str | None = None,
        runs_table: str = "scan_runs",
        uris_table: str = "video_uris",
        training_table: str = "training_runs",
        client: bigquery.Client | None = None,
    ) -> None:
        self.target = parse_bigquery_url(url)
        if client is None and not _client_installed():
            raise ConfigError(
                "bigquery:// needs the BigQuery client: pip install 'dfscan[bigquery]'"
            )
        if scans_table is None:
            scans_table = self.target.table or "video_scans"
        super().__init__(
            url,
            scans_table=scans_table,
            runs_table=runs_table,
            uris_table=uris_table,
            training_table=training_table,
        )
        self._client = client
        self._owns_client = client is None
        self._answered = False  # BigQuery has answered this client once

    # --- the client -----------------------------------------------------------------

    @property
    def client(self) -> bigquery.Client:
        """The client, created on first use with the URL's project and location."""
        if self._client is None:
            from google.cloud import bigquery

            with self._errors():
                self._client = bigquery.Client(
                    project=self.target.project, location=self.target.location
                )
        return self._client

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Failures a user can fix or retry become one line; anything else (a bad
        statement is a bug here) raises as it is."""
        from google.api_core import exceptions as api
        from google.auth import exceptions as auth
        from requests import RequestException

        where = f"BigQuery {self.target.project}.{self.target.dataset}"
        try:
            yield
        except auth.DefaultCredentialsError:
            raise ConfigError(
                f"no Google credentials for {where}: set GOOGLE_APPLICATION_CREDENTIALS"
                " or run `gcloud auth application-default login`"
            ) from None
        except auth.RefreshError as err:
            raise ConfigError(
                f"Google refused the credentials for {where}: {_one_line(err)}"
            ) from None
        except (api.Unauthorized, api.Forbidden) as err:
            raise ConfigError(f"{where} refused access: {_one_line(err)}") from None
        except api.NotFound as err:  # e.g. `dfscan results` before any scan made the tables
            raise ConfigError(f"{where}: {_one_line(err)}") from None
        except api.RetryError as err:
            raise ConnectionError(f"{where} unreachable: {_one_line(err.cause or err)}") from None
        except (auth.TransportError, RequestException) as err:
            raise ConnectionError(f"{where} unreachable: {_one_line(err)}") from None

    def _connect(self, create: bool) -> None:
        """Check once that the dataset is there (creating it if ``create``) and in the
        URL's location. The first call to BigQuery, so it alone retries for only
        ``connect_timeout``: later calls keep the client's longer defaults, since a
        transient error mid-scan is worth waiting for."""
        if self._answered:
            return
        from google.api_core.exceptions import NotFound
        from google.cloud import bigquery

        ref = f"{self.target.project}.{self.target.dataset}"
        deadline = self.target.connect_timeout_s
        bounded: dict[str, Any] = {
            "retry": bigquery.DEFAULT_RETRY.with_deadline(deadline),
            "timeout": deadline,
        }
        client = self.client
        with self._errors():
            try:
                dataset = client.get_dataset(ref, **bounded)
            except NotFound:
                if not create:
                    raise ConfigError(
                        f"no warehouse at {self.url}: dataset {ref} does not exist"
                        " (run `dfscan scan --warehouse URL` first)"
                    ) from None
                new = bigquery.Dataset(ref)
                new.location = self.target.location
                dataset = client.create_dataset(new, exists_ok=True, **bounded)
        wanted, found = self.target.location, dataset.location
        if wanted and found and wanted.lower() != found.lower():
            raise ConfigError(f"BigQuery dataset {ref} is in {found}, not {wanted} as the URL says")
        self._answered = True

    def _path(self, table: str) -> str:
        return bigquery_table_path(self.target.project, self.target.dataset, table)

    def _ref(self, table: str) -> str:
        """The API's ``project.dataset.table`` (no backticks), validated like _path."""
        return self._path(table).strip("`")

    # --- statements -----------------------------------------------------------------

    def _run(self, sql: str, params: Sequence[Any] = ()) -> tuple[bigquery.QueryJob, list[Row]]:
        """Run one statement with named query parameters; wait for it and its rows."""
        from google.cloud import bigquery

        self._connect(create=False)
        config = bigquery.QueryJobConfig(query_parameters=list(params))
        with self._errors():
            job = self.client.query(sql, job_config=config)
            rows = [dict(row.items()) for row in job.result()]
        return job, rows

    def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return self._run(sql, params)[1]

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._run(sql, params)

    def _select(self, table: str, schema: pa.Schema) -> str:
        cols = ", ".join(bigquery_quote(n) for n in schema.names)
        return f"SELECT {cols} FROM {self._path(table)}"

    def _merge_batch(
        self, table: str, spec_name: str, rows: pa.Table, update: Sequence[str] | None = None
    ) -> None:
        """Load ``rows`` into a fresh staging table, MERGE it into ``table``, drop it.

        A staging table per batch, not per run: writers never share one, and a batch
        replayed after a crash merges the same keys again instead of adding rows.
        """
        import pyarrow.parquet as pq
        from google.api_core.exceptions import GoogleAPICallError
        from google.cloud import bigquery

        spec = warehouse_table(spec_name)
        self._connect(create=False)
        staging = self._ref(f"{_STAGING_PREFIX}{uuid.uuid4().hex}")
        temp = bigquery.Table(staging, schema=bigquery_fields(spec_name))
        temp.expires = datetime.now(timezone.utc) + _STAGING_TTL
        data = io.BytesIO()
        pq.write_table(rows, data)
        data.seek(0)
        load = bigquery.LoadJobConfig(
            source_format=bigquery.SourceFormat.PARQUET,
            # The table was just created empty with the schema; anything else is a bug.
            write_disposition=bigquery.WriteDisposition.WRITE_EMPTY,
        )
        with self._errors():
            self.client.create_table(temp)
        try:
            with self._errors():
                self.client.load_table_from_file(data, staging, job_config=load).result()
            self._execute(
                merge_sql(self._path(table), f"`{staging}`", spec.schema, spec.key, update)
            )
        finally:
            try:
                self.client.delete_table(staging, not_found_ok=True)
            except GoogleAPICallError as err:  # it expires on its own
                log.warning("staging table %s not dropped: %s", staging, _one_line(err))

    def _merge_row(
        self,
        table: str,
        spec_name: str,
        values: Mapping[str, Any],
        update: Sequence[str] | None = None,
    ) -> None:
        """MERGE one row given as typed query parameters (no staging table)."""
        spec = warehouse_table(spec_name)
        params = _row_params(spec.schema, values)
        source = (
            "(SELECT " + ", ".join(f"@{n} AS {bigquery_quote(n)}" for n in spec.schema.names) + ")"
        )
        self._execute(merge_sql(self._path(table), source, spec.schema, spec.key, update), params)

    # --- schema ---------------------------------------------------------------------

    def _tables(self) -> tuple[tuple[str, str], ...]:
        """(table name in this warehouse, its definition in WAREHOUSE_TABLES)."""
        return (
            (self.scans_table, "video_scans"),
            (self.runs_table, "scan_runs"),
            (self.uris_table, "video_uris"),
            (self.training_table, "training_runs"),
        )

    def ensure_schema(self) -> None:
        """Create the dataset, tables and views if missing; refuse a table whose columns
        drifted (a MERGE naming a missing column would fail mid-scan)."""
        from google.cloud import bigquery
        from google.cloud.bigquery.table import PrimaryKey, TableConstraints

        self._connect(create=True)
        for name, spec_name in self._tables():
            spec = warehouse_table(spec_name)
            table = bigquery.Table(self._ref(name), schema=bigquery_fields(spec_name))
            if spec.partition_day is not None:
                table.time_partitioning = bigquery.TimePartitioning(
                    type_=bigquery.TimePartitioningType.DAY, field=spec.partition_day
                )
            if spec.cluster_by:
                table.clustering_fields = list(spec.cluster_by)
            # Not enforced by BigQuery (the MERGE keeps it true); it documents the key
            # and lets the optimiser use it.
            table.table_constraints = TableConstraints(
                primary_key=PrimaryKey(columns=list(spec.key)), foreign_keys=None
            )
            with self._errors():
                found = self.client.create_table(table, exists_ok=True)
            have = {f.name for f in found.schema}
            missing = [n for n in spec.schema.names if n not in have]
            if missing:
                raise ConfigError(
                    f"warehouse table {name} lacks columns {', '.join(missing)}:"
                    " migrate it or use another dataset"
                )
        for statement in bigquery_view_statements(
            self.target.project, self.target.dataset, self.scans_table
        ):
            self._execute(statement)

    # --- runs -----------------------------------------------------------------------

    def start_run(self, run_id: str, command: str, config_json: str, code_version: str) -> None:
        """Record a run as running. A restart with the same run_id resets its row but for
        ``started_at``: the record spans every attempt."""
        self._merge_row(
            self.runs_table,
            "scan_runs",
            {
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
            },
            RUN_RESTART_UPDATES,
        )

    def finish_run(
        self,
        run_id: str,
        status: str,
        counts_by_status: Mapping[str, int],
        error: str | None,
    ) -> None:
        """Close a run with its outcome and per-status video counts (see run_outcome)."""
        committed = self._fetch(
            f"SELECT `status`, COUNT(*) AS n FROM {self._path(self.scans_table)}"
            " WHERE `run_id` = @run_id GROUP BY `status`",
            [_param("run_id", "STRING", run_id)],
        )
        values = {**run_outcome(status, counts_by_status, committed), "error": error}
        sets = ", ".join(f"{bigquery_quote(n)} = @{n}" for n in values)
        params = _row_params(SCAN_RUNS_SCHEMA, {**values, "run_id": run_id})
        job, _ = self._run(
            f"UPDATE {self._path(self.runs_table)} SET {sets} WHERE `run_id` = @run_id", params
        )
        if not job.num_dml_affected_rows:
            raise LookupError(f"no run {run_id!r} in {self.runs_table}: start_run was not called")

    def query_runs(self, limit: int = 20) -> list[Row]:
        """Runs newest first; JSON columns (config, counts_by_status) stay text."""
        _check_limit(limit)
        return self._fetch(
            self._select(self.runs_table, SCAN_RUNS_SCHEMA)
            + " ORDER BY `started_at` DESC, `run_id` LIMIT @limit",
            [_param("limit", "INT64", limit)],
        )

    # --- results --------------------------------------------------------------------

    def upsert_scans(self, rows: list[VideoScan]) -> int:
        unique = sorted(_last_per_key(rows), key=lambda r: (r.video_id, r.model_version))
        if not unique:
            return 0
        self._merge_batch(self.scans_table, "video_scans", video_scans_table(unique))
        return len(unique)

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
            where.append("`status` = @status")
            params.append(_param("status", "STRING", _status_value(status)))
        if model_version is not None:
            where.append("`model_version` = @model_version")
            params.append(_param("model_version", "STRING", model_version))
        sql = self._select(self.scans_table, VIDEO_SCANS_SCHEMA)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY `scanned_at` DESC, `video_id`, `model_version`"
        if _check_limit(limit) is not None:
            sql += " LIMIT @limit"
            params.append(_param("limit", "INT64", limit))
        return self._fetch(sql, params)

    def scanned_keys(self, model_version: str, video_ids: list[str]) -> set[str]:
        """The ids among ``video_ids`` that already have a row under ``model_version``."""
        found: set[str] = set()
        unique = list(dict.fromkeys(video_ids))
        for start in range(0, len(unique), _IDS_PER_QUERY):
            rows = self._fetch(
                f"SELECT `video_id` FROM {self._path(self.scans_table)}"
                " WHERE `model_version` = @model_version AND `video_id` IN UNNEST(@video_ids)",
                [
                    _param("model_version", "STRING", model_version),
                    _array("video_ids", unique[start : start + _IDS_PER_QUERY]),
                ],
            )
            found.update(r["video_id"] for r in rows)
        return found

    def latest_scans(self, video_ids: Sequence[str]) -> dict[str, Row]:
        """The newest row of each video under any model version."""
        unique = list(dict.fromkeys(video_ids))
        latest: dict[str, Row] = {}
        for start in range(0, len(unique), _IDS_PER_QUERY):
            rows = self._fetch(
                self._select(self.scans_table, VIDEO_SCANS_SCHEMA)
                + " WHERE `video_id` IN UNNEST(@video_ids) ORDER BY `scanned_at`, `model_version`",
                [_array("video_ids", unique[start : start + _IDS_PER_QUERY])],
            )
            for row in rows:
                latest[row["video_id"]] = row  # ascending order: the newest wins
        return latest

    # --- video URIs (the incremental scan's hash cache) ------------------------------

    def known_video_ids(self, files: Sequence[VideoFile]) -> dict[str, str]:
        """uri -> content id for listed files seen before with the same size and mtime
        (the rules of ``Warehouse.known_video_ids``)."""
        stamp = {f.uri: (f.size_bytes, f.mtime) for f in files if f.mtime is not None}
        uris = list(stamp)
        found: dict[str, tuple[Any, str]] = {}
        for start in range(0, len(uris), _IDS_PER_QUERY):
            rows = self._fetch(
                "SELECT `uri`, `video_id`, `size_bytes`, `mtime`, `last_seen_at`"
                f" FROM {self._path(self.uris_table)} WHERE `uri` IN UNNEST(@uris)",
                [_array("uris", uris[start : start + _IDS_PER_QUERY])],
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
        """Record that each ref's bytes were seen under its URI in this run; a first
        sighting keeps its run and time, later ones refresh size, mtime, last run."""
        now = datetime.now(timezone.utc)
        latest: dict[tuple[str, str], VideoRef] = {}
        for ref in refs:
            latest[(ref.uri, ref.video_id)] = ref
        if not latest:
            return 0
        records = [
            {
                "video_id": ref.video_id,
                "uri": ref.uri,
                "size_bytes": ref.size_bytes,
                "mtime": ref.mtime,
                "first_run_id": run_id,
                "first_seen_at": now,
                "last_run_id": run_id,
                "last_seen_at": now,
            }
            for ref in (latest[k] for k in sorted(latest))
        ]
        rows = pa.Table.from_pylist(records, schema=VIDEO_URIS_SCHEMA)
        self._merge_batch(self.uris_table, "video_uris", rows, update=VIDEO_URIS_REFRESHED)
        return len(records)

    def query_uris(self, video_id: str | None = None) -> list[Row]:
        """Every recorded (uri, video) sighting, by video then URI."""
        sql = self._select(self.uris_table, VIDEO_URIS_SCHEMA)
        params: list[Any] = []
        if video_id is not None:
            sql += " WHERE `video_id` = @video_id"
            params.append(_param("video_id", "STRING", video_id))
        return self._fetch(sql + " ORDER BY `video_id`, `uri`", params)

    # --- training runs --------------------------------------------------------------

    def record_training_run(self, run: TrainingRun) -> None:
        """Insert or replace one training run by run_id (written when it starts and
        again when it ends, so a crashed run stays visible as running)."""
        values: dict[str, Any] = {n: getattr(run, n) for n in TRAINING_RUNS_SCHEMA.names}
        values["started_at"] = datetime.fromtimestamp(run.started_at, tz=timezone.utc)
        if run.ended_at is not None:
            values["ended_at"] = datetime.fromtimestamp(run.ended_at, tz=timezone.utc)
        self._merge_row(self.training_table, "training_runs", values)

    def query_training_runs(
        self, limit: int | None = 50, command: str | None = None, parent_run_id: str | None = None
    ) -> list[Row]:
        """Training runs newest first; JSON columns (config, metrics) stay text."""
        where: list[str] = []
        params: list[Any] = []
        if command is not None:
            where.append("`command` = @command")
            params.append(_param("command", "STRING", command))
        if parent_run_id is not None:
            where.append("`parent_run_id` = @parent_run_id")
            params.append(_param("parent_run_id", "STRING", parent_run_id))
        sql = self._select(self.training_table, TRAINING_RUNS_SCHEMA)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY `started_at` DESC, `run_id`"
        if _check_limit(limit) is not None:
            sql += " LIMIT @limit"
            params.append(_param("limit", "INT64", limit))
        return self._fetch(sql, params)

    # --- what the web UI reads (the queries of webui.ScanQueries) --------------------

    def table_exists(self, name: str) -> bool:
        from google.api_core.exceptions import NotFound

        self._connect(create=False)
        with self._errors():
            try:
                self.client.get_table(self._ref(name))
            except NotFound:
                return False
        return True

    def runs(
        self,
        run_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 500,
    ) -> list[Row]:
        """Runs newest first, optionally one run or those started in [since, until)."""
        where: list[str] = []
        params: list[Any] = [_param("limit", "INT64", _check_limit(limit))]
        if run_id is not None:
            where.append("`run_id` = @run_id")
            params.append(_param("run_id", "STRING", run_id))
        if since is not None:
            where.append("`started_at` >= @since")
            params.append(_param("since", "TIMESTAMP", since))
        if until is not None:
            where.append("`started_at` < @until")
            params.append(_param("until", "TIMESTAMP", until))
        sql = self._select(self.runs_table, SCAN_RUNS_SCHEMA)
        if where:
            sql += " WHERE " + " AND ".join(where)
        return self._fetch(sql + " ORDER BY `started_at` DESC, `run_id` LIMIT @limit", params)

    def verdicts_by_run(self, run_ids: Sequence[str]) -> dict[str, dict[str, int]]:
        """{run_id: {"FAKE": n, "REAL": n}} of the rows each run wrote (still current)."""
        if not run_ids:
            return {}
        rows = self._fetch(
            f"SELECT `run_id`, `label`, COUNT(*) AS n FROM {self._path(self.scans_table)}"
            " WHERE `run_id` IN UNNEST(@run_ids) AND `label` IS NOT NULL"
            " GROUP BY `run_id`, `label`",
            [_array("run_ids", list(run_ids))],
        )
        out: dict[str, dict[str, int]] = {}
        for r in rows:
            out.setdefault(r["run_id"], {})[r["label"]] = int(r["n"])
        return out

    def model_versions(self) -> list[str]:
        rows = self._fetch(
            f"SELECT DISTINCT `model_version` FROM {self._path(self.scans_table)}"
            " ORDER BY `model_version`"
        )
        return [r["model_version"] for r in rows]

    def search_scans(self, f: ScanFilters, limit: int, offset: int = 0) -> list[Row]:
        """Rows matching ``f``: most fake-looking first, then newest."""
        where: list[str] = []
        params: list[Any] = [
            _param("limit", "INT64", _check_limit(limit)),
            _param("offset", "INT64", _check_limit(offset)),
        ]
        equal = (
            ("status", f.status),
            ("label", f.label),
            ("model_version", f.model),
            ("run_id", f.run_id),
        )
        for column, value in equal:
            if value is not None:
                where.append(f"{bigquery_quote(column)} = @{column}")
                params.append(_param(column, "STRING", value))
        bounds = (
            ("scanned_at", ">=", "since", "TIMESTAMP", f.since_dt),
            ("scanned_at", "<", "until", "TIMESTAMP", f.until_dt),
            ("fake_probability", ">=", "min_score", "FLOAT64", f.min_score),
            ("fake_probability", "<=", "max_score", "FLOAT64", f.max_score),
        )
        for column, op, name, kind, bound in bounds:
            if bound is not None:
                where.append(f"{bigquery_quote(column)} {op} @{name}")
                params.append(_param(name, kind, bound))
        sql = self._select(self.scans_table, VIDEO_SCANS_SCHEMA)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += (
            " ORDER BY `fake_probability` IS NULL, `fake_probability` DESC,"
            " `scanned_at` DESC, `video_id`, `model_version` LIMIT @limit OFFSET @offset"
        )
        return self._fetch(sql, params)

    def scan(self, video_id: str, model_version: str | None) -> Row | None:
        """One row; without a model version, the video's newest row."""
        sql = self._select(self.scans_table, VIDEO_SCANS_SCHEMA) + " WHERE `video_id` = @video_id"
        params = [_param("video_id", "STRING", video_id)]
        if model_version is not None:
            sql += " AND `model_version` = @model_version"
            params.append(_param("model_version", "STRING", model_version))
        rows = self._fetch(sql + " ORDER BY `scanned_at` DESC, `model_version` LIMIT 1", params)
        return rows[0] if rows else None

    def other_models(self, video_id: str) -> list[str]:
        rows = self._fetch(
            f"SELECT `model_version` FROM {self._path(self.scans_table)}"
            " WHERE `video_id` = @video_id ORDER BY `model_version`",
            [_param("video_id", "STRING", video_id)],
        )
        return [r["model_version"] for r in rows]

    def run_config(self, run_id: str) -> dict[str, Any]:
        """The typed config a run recorded (JSON), or {} if unknown or unreadable."""
        rows = self._fetch(
            f"SELECT `config` FROM {self._path(self.runs_table)} WHERE `run_id` = @run_id",
            [_param("run_id", "STRING", run_id)],
        )
        try:
            value = json.loads(rows[0]["config"]) if rows else {}
        except (TypeError, json.JSONDecodeError):
            return {}
        return value if isinstance(value, dict) else {}

    def close(self) -> None:
        """Close a client this object made (an injected one belongs to the caller)."""
        if self._client is not None and self._owns_client:
            self._client.close()
            self._client = None
        self._answered = False


def _client_installed() -> bool:
    """Whether google-cloud-bigquery is importable, without importing it (a URL is
    checked on the driver, which should not pay for the import)."""
    try:
        return importlib.util.find_spec("google.cloud.bigquery") is not None
    except ModuleNotFoundError:  # no google.cloud at all
        return False


def _param(name: str, kind: str, value: Any) -> bigquery.ScalarQueryParameter:
    from google.cloud.bigquery import ScalarQueryParameter

    return ScalarQueryParameter(name, kind, value)


def _array(name: str, values: Sequence[str]) -> bigquery.ArrayQueryParameter:
    from google.cloud.bigquery import ArrayQueryParameter

    return ArrayQueryParameter(name, "STRING", list(values))


def _row_params(
    schema: pa.Schema, values: Mapping[str, Any]
) -> list[bigquery.ScalarQueryParameter]:
    """One parameter per column in ``values``, typed from the Arrow schema (a null is
    still typed, so ``SELECT @x AS x`` has the column's type)."""
    return [
        _param(f.name, sql_type("bigquery", f.type), values[f.name])
        for f in schema
        if f.name in values
    ]


WAREHOUSES[BigQueryWarehouse.scheme] = BigQueryWarehouse
