"""The BigQuery warehouse, offline: schema, statements, idempotence, errors.

No BigQuery here. ``FakeBigQuery`` stands in for ``google.cloud.bigquery.Client``: it
records every call with its job config, reads every statement as GoogleSQL with
sqlglot (a statement BigQuery's dialect cannot parse fails the test) and runs it on
DuckDB, so reads return what the writes wrote and a MERGE that would duplicate a row
shows up as a duplicate. Parameters go through the real client's ``to_api_repr``.
The same operations on the DuckDB warehouse give the reference answers.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, cast

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlglot
from google.api_core import exceptions as api_exceptions
from google.cloud import bigquery
from google.cloud.bigquery.table import Row as BigQueryRow
from sqlglot import exp

from operators.list_videos import URI_ID_PREFIX
from operators.warehouse_bigquery import (
    BigQueryWarehouse,
    merge_sql,
    parse_bigquery_url,
)
from operators.write_warehouse import (
    DuckDBWarehouse,
    Warehouse,
    WarehouseWriter,
    build_warehouse,
    warehouse_class,
)
from pipelines.cli import main
from pipelines.config import ConfigError
from schemas.arrow import VIDEO_SCANS_KEY, VIDEO_SCANS_SCHEMA
from schemas.records import TrainingRun, VideoFile, VideoRef
from schemas.warehouse import (
    WAREHOUSE_TABLES,
    bigquery_fields,
    bigquery_schema,
    bigquery_view_statements,
)
from tests.test_write_warehouse import HOUR, MAY_1, make_scan, make_unscored

PROJECT, DATASET = "dfscan-test", "scans"
URL = f"bigquery://{PROJECT}/{DATASET}"
REPO = Path(__file__).resolve().parents[1]

# What each Arrow type must become in BigQuery (the names its API reports back).
EXPECTED_TYPES = {
    pa.string(): "STRING",
    pa.int64(): "INTEGER",
    pa.int32(): "INTEGER",
    pa.float64(): "FLOAT",
    pa.float32(): "FLOAT",
    pa.bool_(): "BOOLEAN",
    pa.timestamp("us", tz="UTC"): "TIMESTAMP",
}
DUCKDB_TYPES = {
    "STRING": "VARCHAR",
    "INTEGER": "BIGINT",
    "FLOAT": "DOUBLE",
    "BOOLEAN": "BOOLEAN",
    "TIMESTAMP": "TIMESTAMPTZ",
    "BYTES": "BLOB",
}
# Python types a query parameter of each BigQuery type may carry (None: a typed NULL).
PARAM_VALUE_TYPES: dict[str, tuple[type, ...]] = {
    "STRING": (str,),
    "INTEGER": (int,),
    "INT64": (int,),
    "FLOAT": (float, int),
    "FLOAT64": (float, int),
    "TIMESTAMP": (datetime,),
}


# --- the stand-in client ----------------------------------------------------------------


@dataclass
class Call:
    method: str
    target: str = ""  # table or dataset id
    sql: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    config: Any = None


class FakeJob:
    def __init__(self, rows: list[BigQueryRow], affected: int | None) -> None:
        self.rows = rows
        self.num_dml_affected_rows = affected

    def result(self, *args: Any, **kwargs: Any) -> list[BigQueryRow]:
        return self.rows


def _table_id(table: Any) -> str:
    if isinstance(table, str):
        return table
    return f"{table.project}.{table.dataset_id}.{table.table_id}"


def _duckdb_name(table_id: str) -> str:
    return ".".join(f'"{part}"' for part in table_id.split("."))


class FakeBigQuery:
    """Records calls; runs tables, loads and statements on DuckDB (see module doc)."""

    def __init__(self, project: str = PROJECT) -> None:
        self.project = project
        self.con = duckdb.connect()
        self.run("SET TimeZone = 'UTC'")
        self.calls: list[Call] = []
        self.datasets: dict[str, bigquery.Dataset] = {}
        self.tables: dict[str, bigquery.Table] = {}
        self.fail_statement: str | None = None  # a query starting with this fails

    # datasets and tables
    def get_dataset(self, ref: str, **kwargs: Any) -> bigquery.Dataset:
        self.calls.append(Call("get_dataset", ref, config=kwargs))
        if ref not in self.datasets:
            raise api_exceptions.NotFound(f"Dataset {ref} was not found")
        return self.datasets[ref]

    def create_dataset(
        self, dataset: bigquery.Dataset, exists_ok: bool = False, **kwargs: Any
    ) -> bigquery.Dataset:
        ref = f"{dataset.project}.{dataset.dataset_id}"
        self.calls.append(Call("create_dataset", ref, config=dataset))
        if ref in self.datasets:
            if not exists_ok:
                raise api_exceptions.Conflict(f"Dataset {ref} exists")
            return self.datasets[ref]
        catalogs = {r[0] for r in self.run("SELECT database_name FROM duckdb_databases()")}
        if dataset.project not in catalogs:
            self.run(f"ATTACH ':memory:' AS \"{dataset.project}\"")
        self.run(f'CREATE SCHEMA "{dataset.project}"."{dataset.dataset_id}"')
        self.datasets[ref] = dataset
        return dataset

    def create_table(
        self, table: bigquery.Table, exists_ok: bool = False, **kwargs: Any
    ) -> bigquery.Table:
        ref = _table_id(table)
        self.calls.append(Call("create_table", ref, config=table))
        if ref in self.tables:
            if not exists_ok:
                raise api_exceptions.Conflict(f"Table {ref} exists")
            return self.tables[ref]
        if ref.rsplit(".", 1)[0] not in self.datasets:
            raise api_exceptions.NotFound(f"Dataset of {ref} was not found")
        cols = ", ".join(
            f'"{f.name}" {DUCKDB_TYPES[f.field_type]}'
            + (" NOT NULL" if f.mode == "REQUIRED" else "")
            for f in table.schema
        )
        self.run(f"CREATE TABLE {_duckdb_name(ref)} ({cols})")
        self.tables[ref] = table
        return table

    def get_table(self, ref: str, **kwargs: Any) -> bigquery.Table:
        self.calls.append(Call("get_table", ref))
        if ref not in self.tables:
            raise api_exceptions.NotFound(f"Table {ref} was not found")
        return self.tables[ref]

    def delete_table(self, ref: str, not_found_ok: bool = False, **kwargs: Any) -> None:
        self.calls.append(Call("delete_table", ref))
        if ref not in self.tables:
            if not_found_ok:
                return
            raise api_exceptions.NotFound(f"Table {ref} was not found")
        self.run(f"DROP TABLE {_duckdb_name(ref)}")
        del self.tables[ref]

    # jobs
    def load_table_from_file(
        self,
        file_obj: io.BytesIO,
        destination: str,
        job_config: bigquery.LoadJobConfig,
        **kwargs: Any,
    ) -> FakeJob:
        self.calls.append(Call("load_table_from_file", destination, config=job_config))
        assert job_config.source_format == bigquery.SourceFormat.PARQUET
        data = pq.read_table(file_obj)
        table = self.tables[destination]  # a load into a missing table is a bug here
        assert data.schema.names == [f.name for f in table.schema]
        name = _duckdb_name(destination)
        if job_config.write_disposition == bigquery.WriteDisposition.WRITE_EMPTY:
            assert self.run(f"SELECT COUNT(*) FROM {name}") == [(0,)]
        self.con.register("_loaded", data)
        try:
            self.run(f"INSERT INTO {name} SELECT * FROM _loaded")
        finally:
            self.con.unregister("_loaded")
        return FakeJob([], data.num_rows)

    def query(
        self, sql: str, job_config: bigquery.QueryJobConfig | None = None, **kwargs: Any
    ) -> FakeJob:
        params = list(job_config.query_parameters) if job_config else []
        values: dict[str, Any] = {}
        for p in params:
            p.to_api_repr()  # the real client must be able to send it
            if isinstance(p, bigquery.ArrayQueryParameter):
                assert all(isinstance(v, str) for v in p.values)
                values[p.name] = list(p.values)
            else:
                if p.value is not None:
                    assert isinstance(p.value, PARAM_VALUE_TYPES[p.type_]), (
                        p.name,
                        p.type_,
                        p.value,
                    )
                values[p.name] = p.value
        self.calls.append(Call("query", sql=sql, params=values, config=job_config))
        if self.fail_statement and sql.startswith(self.fail_statement):
            raise api_exceptions.BadRequest("injected failure")
        tree = sqlglot.parse_one(sql, read="bigquery")
        used = {p.name for p in tree.find_all(exp.Parameter)} | {
            p.name for p in tree.find_all(exp.Placeholder)
        }
        assert used == set(values), f"parameters used {used} != given {set(values)}"
        try:
            cur = self.con.execute(tree.sql("duckdb"), values or None)
        except duckdb.CatalogException as err:  # BigQuery's word for a missing table
            raise api_exceptions.NotFound(str(err).splitlines()[0]) from None
        names = [d[0] for d in cur.description or ()]
        fetched = cur.fetchall()
        if isinstance(tree, exp.Select | exp.Union):
            index = {n: i for i, n in enumerate(names)}
            return FakeJob([BigQueryRow(r, index) for r in fetched], None)
        affected = fetched[0][0] if fetched and isinstance(fetched[0][0], int) else 0
        return FakeJob([], affected)

    def close(self) -> None:
        self.calls.append(Call("close"))

    def run(self, sql: str) -> list[tuple]:
        """DuckDB statement, drained (an open result holds the connection)."""
        return self.con.execute(sql).fetchall()

    # what the tests read
    def queries(self) -> list[Call]:
        return [c for c in self.calls if c.method == "query"]

    def rows(self, table: str) -> list[tuple]:
        return self.run(f"SELECT * FROM {_duckdb_name(f'{PROJECT}.{DATASET}.{table}')}")


def as_client(fake: FakeBigQuery) -> bigquery.Client:
    """The stand-in where the adapter takes a client (it uses only what FakeBigQuery has)."""
    return cast(bigquery.Client, fake)


@pytest.fixture
def fake() -> FakeBigQuery:
    return FakeBigQuery()


@pytest.fixture
def bq(fake: FakeBigQuery) -> Iterator[BigQueryWarehouse]:
    wh = BigQueryWarehouse(URL + "?location=EU", client=as_client(fake))
    wh.ensure_schema()
    yield wh
    wh.close()


@pytest.fixture
def ddb() -> Iterator[DuckDBWarehouse]:
    wh = DuckDBWarehouse("duckdb://:memory:")
    wh.ensure_schema()
    yield wh
    wh.close()


# --- schema -----------------------------------------------------------------------------


@pytest.mark.parametrize("table", sorted(WAREHOUSE_TABLES))
def test_schema_fields_follow_the_arrow_definition_field_by_field(table: str) -> None:
    arrow = WAREHOUSE_TABLES[table].schema
    fields = bigquery_fields(table)
    assert [f.name for f in fields] == arrow.names
    for f, a in zip(fields, arrow, strict=True):
        assert isinstance(f, bigquery.SchemaField)
        assert f.field_type == EXPECTED_TYPES[a.type], a.name
        assert f.mode == ("NULLABLE" if a.nullable else "REQUIRED"), a.name
    assert [f.to_api_repr() for f in fields] == bigquery_schema(table)


def test_ensure_schema_creates_dataset_tables_layout_and_keys(
    bq: BigQueryWarehouse, fake: FakeBigQuery
) -> None:
    (dataset,) = [c.config for c in fake.calls if c.method == "create_dataset"]
    assert (dataset.project, dataset.dataset_id, dataset.location) == (PROJECT, DATASET, "EU")
    created = {
        c.target.rsplit(".", 1)[1]: c.config for c in fake.calls if c.method == "create_table"
    }
    assert set(created) == set(WAREHOUSE_TABLES)
    for name, table in created.items():
        spec = WAREHOUSE_TABLES[name]
        assert table.schema == bigquery_fields(name)
        assert table.table_constraints.primary_key.columns == list(spec.key)
    scans = created["video_scans"]
    assert scans.time_partitioning.type_ == "DAY"
    assert scans.time_partitioning.field == "scanned_at"
    assert scans.clustering_fields == ["model_version", "status", "video_id"]
    assert created["video_uris"].clustering_fields == ["uri"]
    assert created["scan_runs"].time_partitioning is None
    views = [c.sql for c in fake.queries() if c.sql.startswith("CREATE OR REPLACE VIEW")]
    assert views == bigquery_view_statements(PROJECT, DATASET)


def test_ensure_schema_twice_creates_nothing_new_and_keeps_rows(
    bq: BigQueryWarehouse, fake: FakeBigQuery
) -> None:
    bq.upsert_scans([make_scan()])
    BigQueryWarehouse(URL, client=as_client(fake)).ensure_schema()
    assert len(fake.rows("video_scans")) == 1
    assert len([c for c in fake.calls if c.method == "create_dataset"]) == 1


def test_ensure_schema_refuses_a_table_missing_columns(fake: FakeBigQuery) -> None:
    fake.create_dataset(bigquery.Dataset(f"{PROJECT}.{DATASET}"))
    fake.create_table(
        bigquery.Table(
            f"{PROJECT}.{DATASET}.video_scans",
            schema=[bigquery.SchemaField("video_id", "STRING", "REQUIRED")],
        )
    )
    with pytest.raises(ConfigError, match="video_scans lacks columns model_version, uri"):
        BigQueryWarehouse(URL, client=as_client(fake)).ensure_schema()


def test_a_dataset_in_another_location_is_refused(fake: FakeBigQuery) -> None:
    dataset = bigquery.Dataset(f"{PROJECT}.{DATASET}")
    dataset.location = "US"
    fake.create_dataset(dataset)
    with pytest.raises(ConfigError, match="is in US, not EU as the URL says"):
        BigQueryWarehouse(URL + "?location=EU", client=as_client(fake)).ensure_schema()


def test_reading_a_missing_dataset_says_so_and_creates_nothing(fake: FakeBigQuery) -> None:
    with pytest.raises(ConfigError, match=f"no warehouse at {URL}: dataset {PROJECT}.{DATASET}"):
        BigQueryWarehouse(URL, client=as_client(fake)).query_scans()
    assert [c.method for c in fake.calls] == ["get_dataset"]


def test_reading_a_dataset_without_tables_is_a_one_line_error(fake: FakeBigQuery) -> None:
    fake.create_dataset(bigquery.Dataset(f"{PROJECT}.{DATASET}"))
    with pytest.raises(ConfigError, match=f"^BigQuery {PROJECT}.{DATASET}: .*video_scans"):
        BigQueryWarehouse(URL, client=as_client(fake)).query_scans()


# --- URLs and names ---------------------------------------------------------------------


def test_url_forms() -> None:
    t = parse_bigquery_url("bigquery://my-project/dfscan")
    assert (t.project, t.dataset, t.table, t.location, t.connect_timeout_s) == (
        "my-project",
        "dfscan",
        None,
        None,
        30.0,
    )
    t = parse_bigquery_url(
        "bigquery://my-project/dfscan.results?location=europe-west1&connect_timeout=5"
    )
    assert (t.dataset, t.table, t.location, t.connect_timeout_s) == (
        "dfscan",
        "results",
        "europe-west1",
        5.0,
    )
    # The table in the URL is the results table (as Beam's sink reads the same URL).
    wh = BigQueryWarehouse("bigquery://my-project/dfscan.results")
    assert (wh.scans_table, wh.runs_table, wh.uris_table) == ("results", "scan_runs", "video_uris")


@pytest.mark.parametrize(
    "url",
    [
        "bigquery://my-project/ds`; DROP TABLE x; --",
        "bigquery://my-project/ds.tab`le",
        "bigquery://my-project/ds.video_scans; DELETE FROM t",
        "bigquery://my-project/d s",
        "bigquery://my-project/ds/extra",
        "bigquery://my-project/",
        "bigquery://My-Project/ds",
        "bigquery://p/ds",  # project ids have 6 to 30 characters
        "bigquery://my-project`/ds",
        "bigquery://user@my-project/ds",
        "bigquery://my-project/ds?location=EU'--",
        "bigquery://my-project/ds?region=EU",
        "bigquery://my-project/ds?connect_timeout=0",
        "bigquery://my-project/ds?connect_timeout=soon",
        "bigquery://my-project/ds?location=EU&location=US",
        "bigquery://my-project/ds.1table",
    ],
)
def test_a_hostile_or_malformed_url_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError, match="^invalid (BigQuery|table name)"):
        build_warehouse(url)


@pytest.mark.parametrize("name", ["scans`", "x; DROP TABLE y", "a.b", "1abc", ""])
def test_a_hostile_table_name_is_rejected_before_any_call(name: str, fake: FakeBigQuery) -> None:
    with pytest.raises(ConfigError, match="invalid table name"):
        BigQueryWarehouse(URL, scans_table=name, client=as_client(fake))
    with pytest.raises(ConfigError):
        bigquery_view_statements(PROJECT, DATASET, name)
    assert fake.calls == []


def test_without_the_client_library_the_url_is_a_one_line_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "google.cloud.bigquery", None)
    with pytest.raises(ConfigError, match=r"pip install 'dfscan\[bigquery\]'"):
        build_warehouse(URL)


def test_every_shared_query_of_the_base_class_is_rewritten_for_bigquery() -> None:
    # The base class's SQL double-quotes names (a string in GoogleSQL) and uses "?":
    # a method added there must get a BigQuery version here too.
    shared = {n for n, v in vars(Warehouse).items() if callable(v) and not n.startswith("__")}
    inherited = shared - set(vars(BigQueryWarehouse)) - {"_params"}  # _params: "?" lists
    assert inherited == set()


def test_registry_and_writer_resources() -> None:
    assert warehouse_class(URL) is BigQueryWarehouse
    assert warehouse_class("BigQuery://my-project/ds") is BigQueryWarehouse
    writer = WarehouseWriter(URL)
    assert writer.resources.concurrency == 1  # one MERGE into today's partition at a time


def test_client_is_made_on_first_use_with_project_and_location(
    monkeypatch: pytest.MonkeyPatch, fake: FakeBigQuery
) -> None:
    made: list[dict[str, Any]] = []

    def client(**kwargs: Any) -> FakeBigQuery:
        made.append(kwargs)
        return fake

    monkeypatch.setattr(bigquery, "Client", client)
    wh = BigQueryWarehouse(URL + "?location=EU")
    assert made == []  # nothing is opened on construction (the driver pickles the writer)
    wh.ensure_schema()
    assert made == [{"project": PROJECT, "location": "EU"}]
    wh.query_runs()
    assert len(made) == 1
    wh.close()
    assert fake.calls[-1].method == "close"  # a client it made, it closes


# --- idempotent writes ------------------------------------------------------------------


def _merge_parts(sql: str) -> tuple[str, list[tuple[str, str]], list[str], list[str]]:
    """(target, ON equalities, updated columns, inserted columns) of a MERGE."""
    tree = sqlglot.parse_one(sql, read="bigquery")
    assert isinstance(tree, exp.Merge)
    target = ".".join((tree.this.catalog, tree.this.db, tree.this.name))
    on = sorted((eq.left.name, eq.right.name) for eq in tree.args["on"].find_all(exp.EQ))
    whens = tree.args["whens"].expressions
    (matched,) = [w for w in whens if w.args.get("matched")]
    (unmatched,) = [w for w in whens if not w.args.get("matched")]
    assert isinstance(matched.args["then"], exp.Update)
    updated = [e.this.name for e in matched.args["then"].expressions]
    inserted = [c.name for c in unmatched.args["then"].this.expressions]
    return target, on, updated, inserted


def test_upsert_loads_a_staging_table_and_merges_it_on_the_key(
    bq: BigQueryWarehouse, fake: FakeBigQuery
) -> None:
    fake.calls.clear()
    assert bq.upsert_scans([make_scan(video_id="v1"), make_scan(video_id="v2")]) == 2

    assert [c.method for c in fake.calls] == [
        "create_table",
        "load_table_from_file",
        "query",
        "delete_table",
    ]
    staging = fake.calls[0].target
    assert staging.startswith(f"{PROJECT}.{DATASET}._dfscan_staging_")
    assert fake.calls[0].config.expires is not None  # a killed writer's table goes away
    assert fake.calls[0].config.schema == bigquery_fields("video_scans")
    assert fake.calls[1].target == staging
    assert fake.calls[3].target == staging and staging not in fake.tables

    merge = fake.calls[2]
    assert merge.params == {}  # the rows came through the load, not the SQL text
    target, on, updated, inserted = _merge_parts(merge.sql)
    assert target == f"{PROJECT}.{DATASET}.video_scans"
    assert on == sorted((k, k) for k in VIDEO_SCANS_KEY)
    assert updated == [n for n in VIDEO_SCANS_SCHEMA.names if n not in VIDEO_SCANS_KEY]
    assert inserted == VIDEO_SCANS_SCHEMA.names
    assert f"`{staging}` AS S" in merge.sql
    assert sorted(r[0] for r in fake.rows("video_scans")) == ["v1", "v2"]


def test_rerunning_a_batch_merges_again_and_never_inserts(
    bq: BigQueryWarehouse, fake: FakeBigQuery, ddb: DuckDBWarehouse
) -> None:
    batch = [make_scan(video_id="v1"), make_unscored(video_id="v2")]
    bq.upsert_scans(batch)
    bq.upsert_scans(batch)
    bq.upsert_scans([make_scan(video_id="v1", fake_probability=0.1, label="REAL")])

    rows = bq.query_scans()
    assert sorted((r["video_id"], r["label"]) for r in rows) == [("v1", "REAL"), ("v2", None)]
    writes = [sqlglot.parse_one(c.sql, read="bigquery") for c in fake.queries()]
    merges = [t for t in writes if isinstance(t, exp.Merge)]
    assert len(merges) == 3
    assert not [t for t in writes if isinstance(t, exp.Insert)]  # no plain INSERT, ever
    # The same batches on DuckDB give the same rows.
    ddb.upsert_scans(batch)
    ddb.upsert_scans([make_scan(video_id="v1", fake_probability=0.1, label="REAL")])
    assert rows == ddb.query_scans()


def test_same_key_twice_in_one_batch_keeps_the_last(bq: BigQueryWarehouse) -> None:
    # A MERGE fails if two source rows match one target row: collapse them first.
    assert bq.upsert_scans([make_scan(score_max=0.5), make_scan(score_max=0.9)]) == 1
    assert [r["score_max"] for r in bq.query_scans()] == [0.9]


def test_a_failed_merge_drops_its_staging_table_and_writes_nothing(
    bq: BigQueryWarehouse, fake: FakeBigQuery
) -> None:
    fake.fail_statement = "MERGE"
    with pytest.raises(api_exceptions.BadRequest):  # a bug, not a user error: it raises
        bq.upsert_scans([make_scan()])
    assert fake.rows("video_scans") == []
    assert not [t for t in fake.tables if "_dfscan_staging_" in t]


def test_video_uris_keep_the_first_sighting_and_refresh_the_rest(
    bq: BigQueryWarehouse, fake: FakeBigQuery
) -> None:
    ref = VideoRef("sha-1", "s3://b/a.mp4", 10, 100.0)
    assert bq.record_uris([ref, ref], "run-1") == 1
    assert bq.record_uris([VideoRef("sha-1", "s3://b/a.mp4", 10, 200.0)], "run-2") == 1
    (row,) = bq.query_uris()
    assert (row["first_run_id"], row["last_run_id"], row["mtime"]) == ("run-1", "run-2", 200.0)
    merges = [c.sql for c in fake.queries() if c.sql.startswith("MERGE")]
    assert len(merges) == 2
    _, on, updated, _ = _merge_parts(merges[0])
    assert on == [("uri", "uri"), ("video_id", "video_id")]
    assert updated == ["size_bytes", "mtime", "last_run_id", "last_seen_at"]
    assert bq.record_uris([], "run-3") == 0


def test_run_records_merge_from_parameters(bq: BigQueryWarehouse, fake: FakeBigQuery) -> None:
    bq.start_run("run-1", "scan", '{"a": 1}', "v1")
    (first,) = bq.query_runs()
    bq.upsert_scans([make_unscored(video_id="v0")])  # the first attempt's row
    bq.start_run("run-1", "scan", '{"a": 2}', "v1")  # a restart resets the row
    bq.finish_run("run-1", "succeeded", {"scored": 2}, None)
    (run,) = bq.query_runs()
    assert (run["status"], run["videos_total"], run["config"]) == ("succeeded", 3, '{"a": 2}')
    assert json.loads(run["counts_by_status"]) == {"no_face": 1, "scored": 2}
    assert run["started_at"] == first["started_at"]
    start = [c for c in fake.queries() if c.sql.startswith("MERGE")][0]
    assert start.params["run_id"] == "run-1" and start.params["ended_at"] is None
    with pytest.raises(LookupError, match="no run 'nope'"):
        bq.finish_run("nope", "failed", {}, "boom")
    with pytest.raises(ValueError, match="not 'running'"):
        bq.finish_run("run-1", "running", {}, None)


# --- parameters -------------------------------------------------------------------------

HOSTILE = "x' OR '1'='1`; DROP TABLE video_scans; --"


def _string_literals(sql: str) -> list[str]:
    return [
        lit.this
        for lit in sqlglot.parse_one(sql, read="bigquery").find_all(exp.Literal)
        if lit.is_string
    ]


def test_every_value_goes_through_query_parameters(
    bq: BigQueryWarehouse, fake: FakeBigQuery
) -> None:
    fake.calls.clear()
    bq.start_run(HOSTILE, HOSTILE, HOSTILE, HOSTILE)
    bq.upsert_scans([make_scan(video_id=HOSTILE, model_version=HOSTILE, run_id=HOSTILE)])
    bq.record_uris([VideoRef(HOSTILE, HOSTILE, 1, 1.0)], HOSTILE)
    bq.finish_run(HOSTILE, "failed", {"scored": 1}, HOSTILE)
    bq.record_training_run(
        TrainingRun(HOSTILE, "train", "running", HOSTILE, HOSTILE, HOSTILE, started_at=MAY_1)
    )
    # Values come back intact, so they were bound, not spliced.
    scans = bq.query_scans(status="scored", model_version=HOSTILE, limit=5)
    assert [r["video_id"] for r in scans] == [HOSTILE]
    assert bq.scanned_keys(HOSTILE, [HOSTILE]) == {HOSTILE}
    assert list(bq.latest_scans([HOSTILE])) == [HOSTILE]
    assert bq.known_video_ids([VideoFile(HOSTILE, 1, 1.0)]) == {HOSTILE: HOSTILE}
    assert [r["uri"] for r in bq.query_uris(HOSTILE)] == [HOSTILE]
    assert [r["run_id"] for r in bq.query_training_runs(command="train", limit=3)] == [HOSTILE]
    assert [r["error"] for r in bq.runs(run_id=HOSTILE)] == [HOSTILE]
    assert bq.verdicts_by_run([HOSTILE]) == {HOSTILE: {"FAKE": 1}}
    assert bq.scan(HOSTILE, HOSTILE) is not None
    assert bq.other_models(HOSTILE) == [HOSTILE]
    assert bq.run_config(HOSTILE) == {}  # the hostile config is not JSON
    statements = fake.queries()
    assert len(statements) >= 16
    for call in statements:
        assert HOSTILE not in call.sql
        assert _string_literals(call.sql) == [], call.sql


def test_merge_sql_quotes_every_name_and_refuses_a_hostile_one() -> None:
    schema = pa.schema([pa.field("k", pa.string(), nullable=False), pa.field("v", pa.int64())])
    sql = merge_sql("`p-roject.d.t`", "`p-roject.d.s`", schema, ["k"])
    assert "T.`k` = S.`k`" in sql and "`v` = S.`v`" in sql
    bad = pa.schema([pa.field("k`; DROP", pa.string())])
    with pytest.raises(ConfigError, match="invalid table name"):
        merge_sql("`p-roject.d.t`", "`p-roject.d.s`", bad, ["k`; DROP"])


# --- reads: the same answers as the DuckDB warehouse -----------------------------------


def _same_writes(wh: Any) -> None:
    wh.start_run("run-1", "scan", "{}", "v1")
    wh.upsert_scans(
        [
            make_scan(video_id="f1", fake_probability=0.85, label="FAKE"),
            make_scan(video_id="f2", fake_probability=1.0, label="FAKE"),
            make_scan(video_id="r1", fake_probability=0.05, label="REAL"),
            make_unscored(video_id="n1"),
            make_scan(video_id="f3", scanned_at=MAY_1 + 30 * HOUR),  # May 2
            make_scan(video_id="f1", model_version="m2", scanned_at=MAY_1 + 40 * HOUR),
        ]
    )
    wh.record_uris(
        [
            VideoRef("f1", "s3://b/f1.mp4", 10, 100.0),
            VideoRef("f1", "s3://b/copy.mp4", 10, 100.0),
            VideoRef(f"{URI_ID_PREFIX}abc", "s3://b/big.mp4", 10, 100.0),
        ],
        "run-1",
    )
    wh.finish_run("run-1", "succeeded", {"scored": 5, "no_face": 1}, None)
    for i, command in enumerate(("tune", "tune-trial", "train")):
        wh.record_training_run(
            TrainingRun(f"t{i}", command, "succeeded", "{}", "h", "v", started_at=MAY_1 + i)
        )


def _drop_times(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows without the columns the writer stamps with the wall clock (the two warehouses
    were written moments apart)."""
    stamped = ("started_at", "ended_at", "first_seen_at", "last_seen_at")
    return [{k: v for k, v in r.items() if k not in stamped} for r in rows]


def test_reads_answer_like_the_duckdb_warehouse(
    bq: BigQueryWarehouse, ddb: DuckDBWarehouse
) -> None:
    _same_writes(bq)
    _same_writes(ddb)
    files = [
        VideoFile("s3://b/f1.mp4", 10, 100.0),  # known
        VideoFile("s3://b/copy.mp4", 10, 999.0),  # mtime changed: hash again
        VideoFile("s3://b/big.mp4", 10, 100.0),  # a uri: id is never reused
        VideoFile("s3://b/new.mp4", 10, 100.0),
    ]
    assert bq.known_video_ids(files) == ddb.known_video_ids(files) == {"s3://b/f1.mp4": "f1"}
    ids = ["f1", "f2", "n1", "zz"]
    assert bq.scanned_keys("m1", ids) == ddb.scanned_keys("m1", ids) == {"f1", "f2", "n1"}
    assert bq.latest_scans(ids) == ddb.latest_scans(ids)
    assert bq.latest_scans(ids)["f1"]["model_version"] == "m2"
    scan_filters: list[dict[str, Any]] = [
        {},
        {"status": "no_face"},
        {"model_version": "m1", "limit": 2},
    ]
    for kwargs in scan_filters:
        assert bq.query_scans(**kwargs) == ddb.query_scans(**kwargs), kwargs
    assert _drop_times(bq.query_runs()) == _drop_times(ddb.query_runs())
    assert _drop_times(bq.query_uris()) == _drop_times(ddb.query_uris())
    assert [r["uri"] for r in bq.query_uris("f1")] == ["s3://b/copy.mp4", "s3://b/f1.mp4"]
    run_filters: list[dict[str, Any]] = [{}, {"command": "tune-trial"}, {"limit": 1}]
    for kwargs in run_filters:
        assert bq.query_training_runs(**kwargs) == ddb.query_training_runs(**kwargs), kwargs


@dataclass(frozen=True)
class Filters:
    status: str | None = None
    label: str | None = None
    model: str | None = None
    run_id: str | None = None
    since_dt: datetime | None = None
    until_dt: datetime | None = None
    min_score: float | None = None
    max_score: float | None = None


def test_web_ui_reads(bq: BigQueryWarehouse) -> None:
    _same_writes(bq)
    assert bq.table_exists("video_scans") and not bq.table_exists("nope")
    assert bq.model_versions() == ["m1", "m2"]
    assert bq.verdicts_by_run(["run-1"]) == {"run-1": {"FAKE": 4, "REAL": 1}}
    found = bq.search_scans(Filters(model="m1", min_score=0.5), limit=10)
    assert [(r["video_id"], r["fake_probability"]) for r in found] == [
        ("f2", 1.0),
        ("f3", 0.85),
        ("f1", 0.85),
    ]
    may2 = datetime(2024, 5, 2, tzinfo=timezone.utc)
    assert [r["video_id"] for r in bq.search_scans(Filters(until_dt=may2), limit=10, offset=3)] == [
        "n1"
    ]  # unscored last
    newest, older = bq.scan("f1", None), bq.scan("f1", "m1")
    assert newest is not None and newest["model_version"] == "m2"
    assert older is not None and older["model_version"] == "m1"
    assert bq.scan("zz", None) is None
    assert bq.other_models("f1") == ["m1", "m2"]
    assert bq.run_config("run-1") == {} and bq.run_config("nope") == {}
    assert [r["run_id"] for r in bq.runs(since=datetime(2000, 1, 1, tzinfo=timezone.utc))] == [
        "run-1"
    ]


def _view_rows(fetch: Any, view: str, order: str) -> list[tuple]:
    rows = fetch(f"SELECT * FROM {view} ORDER BY {order}")
    return [tuple(r.values()) for r in rows]


def test_views_give_the_numbers_the_duckdb_views_give(
    bq: BigQueryWarehouse, fake: FakeBigQuery, ddb: DuckDBWarehouse
) -> None:
    _same_writes(bq)
    _same_writes(ddb)
    for view, order in (
        ("daily_status_counts", "day, status"),
        ("daily_fake_rate", "day, model_version"),
        ("score_histogram", "model_version, bucket"),
    ):
        ours = _view_rows(bq._fetch, f"`{PROJECT}.{DATASET}.{view}`", order)
        reference = _view_rows(ddb._fetch, view, order)
        assert ours == reference, view
        assert ours  # the fixture rows reach every view
    by_day = _view_rows(bq._fetch, f"`{PROJECT}.{DATASET}.daily_status_counts`", "day, status")
    assert by_day[0][:2] == (date(2024, 5, 1), "no_face")


def test_view_statements_are_the_three_views_over_the_qualified_table() -> None:
    statements = bigquery_view_statements(PROJECT, DATASET, "scans_v2")
    names = [s.split()[4] for s in statements]
    assert names == [
        f"`{PROJECT}.{DATASET}.{v}`"
        for v in ("daily_status_counts", "daily_fake_rate", "score_histogram")
    ]
    for s in statements:
        tree = sqlglot.parse_one(s, read="bigquery")
        read = {
            ".".join((t.catalog, t.db, t.name))
            for t in tree.expression.find_all(exp.Table)
            if t.db  # not a CTE
        }
        assert read == {f"{PROJECT}.{DATASET}.scans_v2"}, read


# --- the command line -------------------------------------------------------------------


def _service_account(path: Path, token_uri: str) -> None:
    """A syntactically valid service-account key whose token endpoint is ``token_uri``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    info = {
        "type": "service_account",
        "project_id": PROJECT,
        "private_key_id": "0",
        "private_key": pem,
        "client_email": f"scanner@{PROJECT}.iam.gserviceaccount.com",
        "client_id": "0",
        "token_uri": token_uri,
    }
    path.write_text(json.dumps(info))


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again on return: nothing listens there


def test_scan_with_an_unreachable_bigquery_fails_in_one_line(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    port = _closed_port()
    creds = tmp_path / "key.json"
    _service_account(creds, f"http://127.0.0.1:{port}/token")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.mp4").write_bytes(b"not a video")
    env = {
        **os.environ,
        "GOOGLE_APPLICATION_CREDENTIALS": str(creds),
        "BIGQUERY_EMULATOR_HOST": f"http://127.0.0.1:{port}",
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.cli",
            "scan",
            str(tmp_path / "in"),
            "--out",
            str(tmp_path / "out"),
            "--model",
            str(tiny_checkpoint),
            "--warehouse",
            f"bigquery://{PROJECT}/{DATASET}?connect_timeout=2",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(
        f"dfscan: error: ConnectionError: BigQuery {PROJECT}.{DATASET} unreachable: "
    )
    assert "Traceback" not in done.stderr


def test_scan_without_google_credentials_fails_in_one_line(
    tmp_path: Path,
    tiny_checkpoint: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))  # no gcloud login
    monkeypatch.setenv("NO_GCE_CHECK", "True")  # not on Google Cloud: skip the metadata server
    (tmp_path / "in").mkdir()
    code = main(
        [
            "scan",
            str(tmp_path / "in"),
            "--out",
            str(tmp_path / "out"),
            "--model",
            str(tiny_checkpoint),
            "--warehouse",
            URL,
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"dfscan: error: no Google credentials for BigQuery {PROJECT}.{DATASET}")


def test_results_with_a_hostile_dataset_is_a_one_line_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["results", "--warehouse", "bigquery://my-project/x`; DROP TABLE y"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dfscan: error: invalid BigQuery")
