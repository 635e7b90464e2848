"""Warehouse DDL generated from the Arrow schemas, so no dialect can drift from them.

The Arrow schemas are the single source: ``schemas/arrow.py`` holds the ``video_scans``
row and this module adds ``scan_runs``, ``video_uris`` and ``training_runs``. Each
dialect is one entry in ``SQL_TYPES`` that maps an Arrow type to its SQL type; a column
added to an Arrow schema reaches DuckDB, PostgreSQL and BigQuery at once, and a type no
dialect knows fails at import time of the DDL, not half-way through a scan. Table names
come from users (URLs, flags), so each one passes ``validate_identifier`` before it is
put into SQL text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING

import pyarrow as pa

from pipelines.config import ConfigError
from schemas.arrow import VIDEO_SCANS_KEY, VIDEO_SCANS_SCHEMA

if TYPE_CHECKING:
    from google.cloud.bigquery import SchemaField

SCAN_RUNS_SCHEMA_VERSION = 1

RUN_STATUSES = ("running", "succeeded", "failed")

# Field metadata that turns into a CHECK (col IN (...)) constraint, so the allowed
# values of a text column are declared once, next to the column.
ENUM_METADATA_KEY = b"dfscan.enum"

SCAN_RUNS_SCHEMA: pa.Schema = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("command", pa.string(), nullable=False),
        pa.field("config", pa.string(), nullable=False),  # JSON text of the typed config
        pa.field("code_version", pa.string(), nullable=False),
        pa.field("started_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("ended_at", pa.timestamp("us", tz="UTC")),  # null while running
        pa.field(
            "status",
            pa.string(),
            nullable=False,
            metadata={ENUM_METADATA_KEY: ",".join(RUN_STATUSES).encode()},
        ),
        pa.field("videos_total", pa.int64()),  # null while running
        pa.field("counts_by_status", pa.string()),  # JSON text {"scored": 12, ...}
        pa.field("error", pa.string()),
    ]
).with_metadata(
    {"dfscan.schema": "scan_runs", "dfscan.schema_version": str(SCAN_RUNS_SCHEMA_VERSION)}
)

SCAN_RUNS_KEY = ("run_id",)

VIDEO_URIS_SCHEMA_VERSION = 1

# Every URI a video's bytes were seen under: the same content under two keys is decoded
# once (one video_scans row, under the first URI in sorted order) and both keys are
# kept here. It doubles as the hash cache of incremental scans: a listed file whose
# (uri, size_bytes, mtime) matches a row is not read again to learn its id.
VIDEO_URIS_SCHEMA: pa.Schema = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
        pa.field("size_bytes", pa.int64(), nullable=False),
        pa.field("mtime", pa.float64()),  # as listed; null when the store reports none
        pa.field("first_run_id", pa.string(), nullable=False),
        pa.field("first_seen_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("last_run_id", pa.string(), nullable=False),
        pa.field("last_seen_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
).with_metadata(
    {"dfscan.schema": "video_uris", "dfscan.schema_version": str(VIDEO_URIS_SCHEMA_VERSION)}
)

# A URI whose content was replaced gets a second row: (uri, old id) stays as history.
VIDEO_URIS_KEY = ("uri", "video_id")
# Columns a re-sighting refreshes; the first sighting is kept.
VIDEO_URIS_REFRESHED = ("size_bytes", "mtime", "last_run_id", "last_seen_at")

TRAINING_RUNS_SCHEMA_VERSION = 1

# What a training run is: `train` (one fit), `tune` (a search) or `tune-trial` (one fit
# inside a search, parent_run_id naming the search).
TRAINING_COMMANDS = ("train", "tune", "tune-trial")

# One row per training run or tuning trial: enough to compare runs and to reproduce one
# (config, data hash, code version) and to find what it produced (artifact_uri).
TRAINING_RUNS_SCHEMA: pa.Schema = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field(
            "command",
            pa.string(),
            nullable=False,
            metadata={ENUM_METADATA_KEY: ",".join(TRAINING_COMMANDS).encode()},
        ),
        pa.field("parent_run_id", pa.string()),  # the tune run of a trial; null otherwise
        pa.field(
            "status",
            pa.string(),
            nullable=False,
            metadata={ENUM_METADATA_KEY: ",".join(RUN_STATUSES).encode()},
        ),
        pa.field("config", pa.string(), nullable=False),  # JSON text of the typed config
        pa.field("data_hash", pa.string(), nullable=False),  # sha256 of keys, labels, bytes
        pa.field("code_version", pa.string(), nullable=False),
        pa.field("metrics", pa.string()),  # JSON text {"val_auc": 0.8, ...}; null while running
        pa.field("artifact_uri", pa.string()),  # the checkpoint written, if any
        pa.field("started_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("ended_at", pa.timestamp("us", tz="UTC")),  # null while running
        pa.field("error", pa.string()),
    ]
).with_metadata(
    {
        "dfscan.schema": "training_runs",
        "dfscan.schema_version": str(TRAINING_RUNS_SCHEMA_VERSION),
    }
)

TRAINING_RUNS_KEY = ("run_id",)


@dataclass(frozen=True)
class WarehouseTable:
    """One warehouse table: its Arrow schema and key, and how BigQuery lays it out.

    BigQuery has no indexes: partitioning and clustering are what keep its reads cheap,
    so they are declared here with the schema, and every writer that may create the
    table (the BigQuery warehouse, Beam's WriteToBigQuery) creates it the same way.
    A wrong column name fails at import, not when a table is created.
    """

    schema: pa.Schema
    key: tuple[str, ...]
    partition_day: str | None = None  # a UTC timestamp column: one partition per UTC day
    cluster_by: tuple[str, ...] = ()  # BigQuery takes at most four

    def __post_init__(self) -> None:
        named = [*self.key, *self.cluster_by]
        if self.partition_day is not None:
            named.append(self.partition_day)
        missing = [n for n in named if n not in self.schema.names]
        if missing:
            raise ValueError(f"columns {missing} are not in the schema")
        if self.partition_day is not None:
            kind = self.schema.field(self.partition_day).type
            if not pa.types.is_timestamp(kind):
                raise ValueError(
                    f"partition column {self.partition_day} is {kind}, not a timestamp"
                )
        if len(self.cluster_by) > 4:
            raise ValueError("BigQuery clusters by at most four columns")


# Every warehouse table by its default name; the key of each is what its upsert and
# MERGE match on.
WAREHOUSE_TABLES: dict[str, WarehouseTable] = {
    "video_scans": WarehouseTable(
        VIDEO_SCANS_SCHEMA,
        VIDEO_SCANS_KEY,
        # Dashboards and reports read by UTC day: a day's query reads one partition.
        partition_day="scanned_at",
        # Every dashboard picks a model version and most a status; video_id last, for
        # the incremental check (model_version = ? AND video_id IN ...).
        cluster_by=("model_version", "status", "video_id"),
    ),
    "scan_runs": WarehouseTable(SCAN_RUNS_SCHEMA, SCAN_RUNS_KEY),
    # The hash cache of incremental scans looks URIs up, in batches, every night.
    "video_uris": WarehouseTable(VIDEO_URIS_SCHEMA, VIDEO_URIS_KEY, cluster_by=("uri",)),
    "training_runs": WarehouseTable(TRAINING_RUNS_SCHEMA, TRAINING_RUNS_KEY),
}

# Arrow type -> SQL type, per dialect. BigQuery's names are the ones its API returns for
# a table's schema (INTEGER, FLOAT, BOOLEAN), so a stored schema compares equal to it.
SQL_TYPES: dict[str, dict[pa.DataType, str]] = {
    "duckdb": {
        pa.string(): "VARCHAR",
        pa.int16(): "SMALLINT",
        pa.int32(): "INTEGER",
        pa.int64(): "BIGINT",
        pa.float32(): "REAL",
        pa.float64(): "DOUBLE",
        pa.bool_(): "BOOLEAN",
        pa.binary(): "BLOB",
        pa.timestamp("us", tz="UTC"): "TIMESTAMPTZ",
    },
    "postgres": {
        pa.string(): "TEXT",
        pa.int16(): "SMALLINT",
        pa.int32(): "INTEGER",
        pa.int64(): "BIGINT",
        pa.float32(): "REAL",
        pa.float64(): "DOUBLE PRECISION",
        pa.bool_(): "BOOLEAN",
        pa.binary(): "BYTEA",
        pa.timestamp("us", tz="UTC"): "TIMESTAMPTZ",
    },
    "bigquery": {
        pa.string(): "STRING",
        pa.int16(): "INTEGER",
        pa.int32(): "INTEGER",
        pa.int64(): "INTEGER",
        pa.float32(): "FLOAT",
        pa.float64(): "FLOAT",
        pa.bool_(): "BOOLEAN",
        pa.binary(): "BYTES",
        pa.timestamp("us", tz="UTC"): "TIMESTAMP",
    },
}

# Dialects that take CREATE TABLE text from here; BigQuery takes a JSON schema instead.
DDL_DIALECTS = ("duckdb", "postgres")

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def validate_identifier(name: str) -> str:
    """Return ``name`` if it is a plain SQL identifier; else ConfigError.

    63 characters is PostgreSQL's limit; one rule for every dialect keeps a name that
    works on DuckDB from failing later on PostgreSQL.
    """
    if not isinstance(name, str) or not _IDENTIFIER.match(name):
        raise ConfigError(
            f"invalid table name {name!r}: use letters, digits and _ (max 63, not digit-first)"
        )
    return name


def quote_identifier(name: str) -> str:
    """Validate, then double-quote: quoting keeps a column named like a keyword legal."""
    return f'"{validate_identifier(name)}"'


def sql_type(dialect: str, arrow_type: pa.DataType) -> str:
    """The SQL type for an Arrow type; an unmapped type is a bug in this module."""
    try:
        types = SQL_TYPES[dialect]
    except KeyError:
        raise ConfigError(
            f"unknown SQL dialect {dialect!r}: choose one of {', '.join(SQL_TYPES)}"
        ) from None
    try:
        return types[arrow_type]
    except KeyError:
        raise TypeError(f"no {dialect} type for Arrow type {arrow_type}") from None


def _enum_values(field: pa.Field) -> tuple[str, ...]:
    raw = (field.metadata or {}).get(ENUM_METADATA_KEY)
    return tuple(raw.decode().split(",")) if raw else ()


def table_ddl(schema: pa.Schema, dialect: str, table: str, primary_key: Sequence[str]) -> str:
    """``CREATE TABLE IF NOT EXISTS`` for any Arrow schema: the one generator every table uses."""
    if dialect not in DDL_DIALECTS:
        raise ConfigError(
            f"no DDL for dialect {dialect!r}: choose one of {', '.join(DDL_DIALECTS)}"
            " (BigQuery: use bigquery_schema())"
        )
    missing = [k for k in primary_key if k not in schema.names]
    if missing:
        raise ValueError(f"primary key columns {missing} are not in the schema")
    lines = []
    for field in schema:
        line = f"    {quote_identifier(field.name)} {sql_type(dialect, field.type)}"
        if not field.nullable:
            line += " NOT NULL"
        values = _enum_values(field)
        if values:
            allowed = ", ".join(f"'{v}'" for v in values)
            line += f" CHECK ({quote_identifier(field.name)} IN ({allowed}))"
        lines.append(line)
    key = ", ".join(quote_identifier(k) for k in primary_key)
    lines.append(f"    PRIMARY KEY ({key})")
    body = ",\n".join(lines)
    return f"CREATE TABLE IF NOT EXISTS {quote_identifier(table)} (\n{body}\n)"


def video_scans_ddl(dialect: str, table: str = "video_scans") -> str:
    """DDL of the one-row-per-(video, model version) results table."""
    return table_ddl(VIDEO_SCANS_SCHEMA, dialect, table, VIDEO_SCANS_KEY)


def video_uris_ddl(dialect: str, table: str = "video_uris") -> str:
    """DDL of the one-row-per-(uri, video) table of every URI a video was seen under."""
    return table_ddl(VIDEO_URIS_SCHEMA, dialect, table, VIDEO_URIS_KEY)


def scan_runs_ddl(dialect: str, table: str = "scan_runs") -> str:
    """DDL of the one-row-per-run audit table."""
    return table_ddl(SCAN_RUNS_SCHEMA, dialect, table, SCAN_RUNS_KEY)


def training_runs_ddl(dialect: str, table: str = "training_runs") -> str:
    """DDL of the one-row-per-training-run (or tuning trial) table."""
    return table_ddl(TRAINING_RUNS_SCHEMA, dialect, table, TRAINING_RUNS_KEY)


def warehouse_table(name: str) -> WarehouseTable:
    """The definition of a warehouse table by its default name."""
    try:
        return WAREHOUSE_TABLES[name]
    except KeyError:
        raise ValueError(
            f"no warehouse table {name!r}: choose one of {', '.join(WAREHOUSE_TABLES)}"
        ) from None


def bigquery_schema(schema: pa.Schema | str = VIDEO_SCANS_SCHEMA) -> list[dict[str, str]]:
    """The schema as BigQuery's JSON takes it (``bq mk --schema file.json``, Beam's
    WriteToBigQuery): an Arrow schema, or a table of ``WAREHOUSE_TABLES`` by name."""
    if isinstance(schema, str):
        schema = warehouse_table(schema).schema
    return [
        {
            "name": field.name,
            "type": sql_type("bigquery", field.type),
            "mode": "NULLABLE" if field.nullable else "REQUIRED",
        }
        for field in schema
    ]


def bigquery_fields(table: pa.Schema | str) -> list[SchemaField]:
    """The same schema as the BigQuery client's ``SchemaField`` list (tables, loads).

    Built from ``bigquery_schema`` so the JSON and the client objects cannot differ;
    the client is imported here, so reading this module does not need it.
    """
    from google.cloud.bigquery import SchemaField

    return [SchemaField.from_api_repr(field) for field in bigquery_schema(table)]


# Project ids: 6-30 of a-z, 0-9 and '-', starting with a letter, not ending with '-'.
_BIGQUERY_PROJECT = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
# Dataset names: letters, digits and '_' (BigQuery allows 1024).
_BIGQUERY_DATASET = re.compile(r"^[A-Za-z0-9_]{1,1024}$")


def validate_bigquery_project(project: str) -> str:
    """Return ``project`` if it is a Google Cloud project id; else ConfigError."""
    if not isinstance(project, str) or not _BIGQUERY_PROJECT.match(project):
        raise ConfigError(
            f"invalid BigQuery project {project!r}: use the project id (6-30 of a-z, 0-9"
            " and -, starting with a letter)"
        )
    return project


def validate_bigquery_dataset(dataset: str) -> str:
    """Return ``dataset`` if it is a BigQuery dataset name; else ConfigError."""
    if not isinstance(dataset, str) or not _BIGQUERY_DATASET.match(dataset):
        raise ConfigError(
            f"invalid BigQuery dataset {dataset!r}: use letters, digits and _ (max 1024)"
        )
    return dataset


def bigquery_table_path(project: str, dataset: str, table: str) -> str:
    """The backtick-quoted ``project.dataset.table`` for BigQuery SQL, every part
    validated first, so no name from a URL or flag can close the backticks."""
    parts = (
        validate_bigquery_project(project),
        validate_bigquery_dataset(dataset),
        validate_identifier(table),
    )
    return f"`{'.'.join(parts)}`"


def bigquery_quote(name: str) -> str:
    """A validated column or table name in backticks: GoogleSQL's quoted identifier
    (double quotes there make a string, not a name)."""
    return f"`{validate_identifier(name)}`"


def upsert_sql(
    table: str,
    schema: pa.Schema,
    key: Sequence[str],
    source: str,
    update: Sequence[str] | None = None,
) -> str:
    """``INSERT ... ON CONFLICT (key) DO UPDATE SET`` every non-key column from ``source``
    (or only the ``update`` columns, so a table can keep e.g. when a row was first seen).

    DuckDB and PostgreSQL share this syntax, so both warehouses replace a row the same
    way. ``source`` is trusted SQL from the caller (``SELECT ... FROM staged`` or
    ``VALUES (...)`` with placeholders), never user text.
    """
    cols = ", ".join(quote_identifier(n) for n in schema.names)
    keys = ", ".join(quote_identifier(k) for k in key)
    updates = ",\n    ".join(
        f"{quote_identifier(n)} = EXCLUDED.{quote_identifier(n)}"
        for n in schema.names
        if n not in key and (update is None or n in update)
    )
    return (
        f"INSERT INTO {quote_identifier(table)} ({cols})\n{source}\n"
        f"ON CONFLICT ({keys}) DO UPDATE SET\n    {updates}"
    )


_VIEWS_SCANS_TABLE = "video_scans"


def _statements(text: str) -> list[str]:
    """Split on ``;`` at a line end, dropping ``--`` comment lines (so a file must keep
    semicolons out of string literals)."""
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("--")]
    chunks = re.split(r";\s*$", "\n".join(lines), flags=re.MULTILINE)
    return [c.strip() for c in chunks if c.strip()]


def view_statements(scans_table: str = _VIEWS_SCANS_TABLE) -> list[str]:
    """The dashboard views of ``schemas/sql/views.sql``, one statement per item.

    The file names the default table ``video_scans`` so it runs as-is in psql or the
    DuckDB CLI; a warehouse with another (validated) table name gets it substituted.
    """
    text = resources.files("schemas").joinpath("sql/views.sql").read_text(encoding="utf-8")
    name = validate_identifier(scans_table)
    if name != _VIEWS_SCANS_TABLE:
        text = re.sub(rf"\b{_VIEWS_SCANS_TABLE}\b", name, text)
    return _statements(text)


_BIGQUERY_NAME = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)`")


def bigquery_view_statements(
    project: str, dataset: str, scans_table: str = _VIEWS_SCANS_TABLE
) -> list[str]:
    """The same dashboard views in GoogleSQL (``schemas/sql/views_bigquery.sql``).

    A BigQuery view must name its tables with their dataset, so every backticked name
    in the file (the views and ``video_scans``) becomes the backtick-quoted
    ``project.dataset.name``.
    """
    path = resources.files("schemas").joinpath("sql/views_bigquery.sql")
    tables = {_VIEWS_SCANS_TABLE: validate_identifier(scans_table)}

    def qualify(m: re.Match[str]) -> str:
        return bigquery_table_path(project, dataset, tables.get(m[1], m[1]))

    return _statements(_BIGQUERY_NAME.sub(qualify, path.read_text(encoding="utf-8")))
