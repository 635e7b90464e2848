"""The warehouse: idempotent upserts, run records, dashboard views, generated DDL."""

from __future__ import annotations

import dataclasses
import json
import pickle
from datetime import date, datetime, timezone
from pathlib import Path

import duckdb
import pytest

from operators.write_warehouse import (
    WAREHOUSES,
    DuckDBWarehouse,
    Warehouse,
    WarehouseWriter,
    build_warehouse,
    duckdb_path,
    video_scans_table,
)
from pipelines.config import ConfigError
from schemas.arrow import VIDEO_SCANS_SCHEMA
from schemas.records import VideoScan, VideoStatus
from schemas.warehouse import (
    SCAN_RUNS_SCHEMA,
    bigquery_schema,
    scan_runs_ddl,
    validate_identifier,
    video_scans_ddl,
    view_statements,
)

MAY_1 = datetime(2024, 5, 1, tzinfo=timezone.utc).timestamp()
HOUR = 3600.0


def make_scan(**overrides: object) -> VideoScan:
    """A scored FAKE video under model m1; override what the test is about."""
    row = dict(
        video_id="v1",
        model_version="m1",
        uri="file:///data/v1.mp4",
        size_bytes=1_000_000,
        mtime=MAY_1 - 86400,
        status=VideoStatus.SCORED,
        error=None,
        frames_sampled=32,
        frames_with_face=30,
        faces=30,
        tracks=1,
        score_mean=0.7,
        score_max=0.95,
        score_confident=0.85,
        track_scores="[]",
        fake_probability=0.85,
        label="FAKE",
        threshold=0.5,
        decision_rule="track_confident_max",
        model_arch="resnet18",
        detector="scrfd-500m",
        detector_sha256="5e4447f5",
        sampling="uniform:32",
        duration_s=10.0,
        width=640,
        height=360,
        decode_s=0.4,
        detect_s=1.2,
        score_s=0.3,
        shard_uri="file:///out/faces/shard-00000.parquet",
        run_id="run-1",
        scanned_at=MAY_1 + 10 * HOUR,
    )
    row.update(overrides)
    return VideoScan(**row)  # type: ignore[arg-type]


def make_unscored(**overrides: object) -> VideoScan:
    """A video with no verdict (no face found): every score column empty."""
    base: dict[str, object] = dict(
        status=VideoStatus.NO_FACE,
        error="no face in 32 frames",
        frames_with_face=0,
        faces=0,
        tracks=0,
        score_mean=None,
        score_max=None,
        score_confident=None,
        fake_probability=None,
        label=None,
        shard_uri=None,
    )
    base.update(overrides)
    return make_scan(**base)


@pytest.fixture
def wh_url(tmp_path: Path) -> str:
    return f"duckdb://{tmp_path}/wh/scans.duckdb"


@pytest.fixture
def wh(wh_url: str):
    warehouse = DuckDBWarehouse(wh_url)
    warehouse.ensure_schema()
    yield warehouse
    warehouse.close()


# --- upserts -------------------------------------------------------------------------


def test_upsert_twice_keeps_one_row_per_key_with_the_second_values(wh: DuckDBWarehouse) -> None:
    assert wh.upsert_scans([make_scan(video_id="a"), make_scan(video_id="b")]) == 2
    rerun = make_scan(video_id="a", fake_probability=0.1, label="REAL", run_id="run-2")
    assert wh.upsert_scans([rerun]) == 1

    rows = {r["video_id"]: r for r in wh.query_scans()}
    assert sorted(rows) == ["a", "b"]
    assert rows["a"]["fake_probability"] == 0.1
    assert rows["a"]["label"] == "REAL"
    assert rows["a"]["run_id"] == "run-2"
    assert rows["b"]["run_id"] == "run-1"


def test_same_video_under_another_model_version_is_a_second_row(wh: DuckDBWarehouse) -> None:
    wh.upsert_scans([make_scan(model_version="m1"), make_scan(model_version="m2")])
    rows = wh.query_scans()
    assert sorted((r["video_id"], r["model_version"]) for r in rows) == [
        ("v1", "m1"),
        ("v1", "m2"),
    ]


def test_same_key_twice_in_one_batch_keeps_the_last(wh: DuckDBWarehouse) -> None:
    written = wh.upsert_scans([make_scan(fake_probability=0.9), make_scan(fake_probability=0.2)])
    assert written == 1
    [row] = wh.query_scans()
    assert row["fake_probability"] == 0.2


def test_upsert_round_trips_nulls_status_and_utc_time(wh: DuckDBWarehouse) -> None:
    wh.upsert_scans([make_unscored(scanned_at=MAY_1 + 1.25)])
    [row] = wh.query_scans()
    assert row["status"] == "no_face"
    assert row["fake_probability"] is None and row["label"] is None
    assert row["scanned_at"] == datetime(2024, 5, 1, 0, 0, 1, 250000, tzinfo=timezone.utc)


def test_a_failed_upsert_writes_nothing(wh: DuckDBWarehouse) -> None:
    bad = make_scan(video_id="bad", uri=None)  # NOT NULL column
    with pytest.raises(duckdb.ConstraintException, match="NOT NULL"):
        wh.upsert_scans([make_scan(video_id="good"), bad])
    assert wh.query_scans() == []
    assert wh.upsert_scans([make_scan(video_id="good")]) == 1  # connection still usable


def test_record_fields_and_arrow_columns_are_the_same_list() -> None:
    names = [f.name for f in dataclasses.fields(VideoScan)]
    assert names == VIDEO_SCANS_SCHEMA.names
    table = video_scans_table([make_scan()])
    assert table.schema == VIDEO_SCANS_SCHEMA
    assert table.column("status").to_pylist() == ["scored"]


# --- queries -------------------------------------------------------------------------


def test_query_scans_filters_by_status_and_model_newest_first_with_limit(
    wh: DuckDBWarehouse,
) -> None:
    wh.upsert_scans(
        [
            make_scan(video_id="old", scanned_at=MAY_1 + 1 * HOUR),
            make_scan(video_id="new", scanned_at=MAY_1 + 3 * HOUR),
            make_scan(video_id="mid", scanned_at=MAY_1 + 2 * HOUR),
            make_unscored(video_id="noface", scanned_at=MAY_1 + 4 * HOUR),
            make_scan(video_id="other", model_version="m2", scanned_at=MAY_1 + 5 * HOUR),
        ]
    )
    assert [r["video_id"] for r in wh.query_scans()] == ["other", "noface", "new", "mid", "old"]
    assert [r["video_id"] for r in wh.query_scans(status="scored", model_version="m1")] == [
        "new",
        "mid",
        "old",
    ]
    assert [r["video_id"] for r in wh.query_scans(status=VideoStatus.NO_FACE)] == ["noface"]
    assert [r["video_id"] for r in wh.query_scans(model_version="m1", limit=2)] == [
        "noface",
        "new",
    ]
    assert wh.query_scans(limit=0) == []
    assert set(wh.query_scans(limit=1)[0]) == set(VIDEO_SCANS_SCHEMA.names)


def test_query_scans_rejects_unknown_status_and_bad_limit(wh: DuckDBWarehouse) -> None:
    with pytest.raises(ConfigError, match="unknown video status 'fake'"):
        wh.query_scans(status="fake")
    with pytest.raises(ConfigError, match="limit"):
        wh.query_scans(limit=-1)


def test_scanned_keys_returns_only_ids_present_under_that_model_version(
    wh: DuckDBWarehouse,
) -> None:
    wh.upsert_scans(
        [
            make_scan(video_id="a"),
            make_unscored(video_id="b"),  # an error row is still a scanned video
            make_scan(video_id="c", model_version="m2"),
        ]
    )
    # More ids than one IN list holds, so the chunking is exercised too.
    asked = [f"x{i}" for i in range(2500)] + ["c", "b", "a", "a"]
    assert wh.scanned_keys("m1", asked) == {"a", "b"}
    assert wh.scanned_keys("m2", asked) == {"c"}
    assert wh.scanned_keys("m3", asked) == set()
    assert wh.scanned_keys("m1", []) == set()


# --- runs ----------------------------------------------------------------------------


def test_scan_run_lifecycle_from_running_to_succeeded(wh: DuckDBWarehouse) -> None:
    wh.start_run("run-1", "dfscan scan in/ out/", '{"frames": "uniform:32"}', "abc123")
    [running] = wh.query_runs(10)
    assert running["status"] == "running"
    assert running["ended_at"] is None and running["videos_total"] is None

    wh.finish_run("run-1", "succeeded", {VideoStatus.SCORED: 3, "no_face": 1}, None)
    [done] = wh.query_runs(10)
    assert done["status"] == "succeeded"
    assert done["videos_total"] == 4
    assert json.loads(done["counts_by_status"]) == {"no_face": 1, "scored": 3}
    assert json.loads(done["config"]) == {"frames": "uniform:32"}
    assert done["code_version"] == "abc123"
    assert done["error"] is None
    assert done["started_at"] <= done["ended_at"]


def test_failed_run_keeps_its_error_and_runs_list_newest_first(wh: DuckDBWarehouse) -> None:
    wh.start_run("run-1", "scan", "{}", "v1")
    wh.finish_run("run-1", "succeeded", {}, None)
    wh.start_run("run-2", "scan", "{}", "v1")
    wh.finish_run("run-2", "failed", {"decode_error": 2}, "RuntimeError: boom")

    runs = wh.query_runs(10)
    assert [r["run_id"] for r in runs] == ["run-2", "run-1"]
    assert runs[0]["status"] == "failed" and runs[0]["error"] == "RuntimeError: boom"
    assert [r["run_id"] for r in wh.query_runs(1)] == ["run-2"]


def test_restarting_a_run_id_resets_it_instead_of_failing(wh: DuckDBWarehouse) -> None:
    wh.start_run("run-1", "scan", "{}", "v1")
    wh.finish_run("run-1", "failed", {}, "killed")
    wh.start_run("run-1", "scan --resume", "{}", "v2")
    [run] = wh.query_runs(10)
    assert (run["status"], run["command"], run["error"]) == ("running", "scan --resume", None)


def test_a_restarted_run_id_keeps_its_start_and_counts_every_attempts_rows(
    wh: DuckDBWarehouse,
) -> None:
    # Attempt 1 commits two rows and is killed: its record stays "running", no counts.
    wh.start_run("run-1", "scan", "{}", "v1")
    [first] = wh.query_runs(10)
    wh.upsert_scans([make_scan(video_id="a"), make_unscored(video_id="b")])
    # Attempt 2 skips them (already scanned), writes the third, and counts only it.
    wh.start_run("run-1", "scan", "{}", "v1")
    wh.upsert_scans([make_scan(video_id="c"), make_scan(video_id="x", run_id="other")])
    wh.finish_run("run-1", "succeeded", {"scored": 1}, None)

    [run] = wh.query_runs(10)
    assert run["started_at"] == first["started_at"]
    assert json.loads(run["counts_by_status"]) == {"no_face": 1, "scored": 2}
    assert run["videos_total"] == 3


def test_a_run_whose_rows_another_run_replaced_still_counts_what_it_wrote(
    wh: DuckDBWarehouse,
) -> None:
    wh.start_run("run-1", "scan", "{}", "v1")
    wh.upsert_scans([make_scan(video_id="a"), make_scan(video_id="b")])
    wh.upsert_scans([make_scan(video_id="b", run_id="run-2")])  # a --rescan meanwhile
    wh.finish_run("run-1", "succeeded", {"scored": 2}, None)
    [run] = wh.query_runs(10)
    assert json.loads(run["counts_by_status"]) == {"scored": 2}


def test_finish_run_refuses_unknown_run_and_status(wh: DuckDBWarehouse) -> None:
    with pytest.raises(LookupError, match="no run 'ghost'"):
        wh.finish_run("ghost", "succeeded", {}, None)
    wh.start_run("run-1", "scan", "{}", "v1")
    with pytest.raises(ValueError, match="'running'"):
        wh.finish_run("run-1", "running", {}, None)


# --- views ---------------------------------------------------------------------------


def _view(wh: DuckDBWarehouse, sql: str) -> list[tuple]:
    return wh.con.execute(sql).fetchall()


def test_views_count_status_fake_rate_and_histogram(wh: DuckDBWarehouse) -> None:
    wh.upsert_scans(
        [
            make_scan(video_id="f1", fake_probability=0.85, label="FAKE"),
            make_scan(video_id="f2", fake_probability=1.0, label="FAKE"),
            make_scan(video_id="r1", fake_probability=0.05, label="REAL"),
            make_unscored(video_id="n1"),
            make_scan(video_id="f3", scanned_at=MAY_1 + 30 * HOUR),  # May 2
        ]
    )
    may1, may2 = date(2024, 5, 1), date(2024, 5, 2)

    assert _view(wh, "SELECT day, status, videos FROM daily_status_counts ORDER BY 1, 2") == [
        (may1, "no_face", 1),
        (may1, "scored", 3),
        (may2, "scored", 1),
    ]

    rates = _view(
        wh, "SELECT day, model_version, scored, fake, fake_rate FROM daily_fake_rate ORDER BY 1"
    )
    assert [r[:4] for r in rates] == [(may1, "m1", 3, 2), (may2, "m1", 1, 1)]
    assert round(rates[0][4], 4) == 0.6667
    assert rates[1][4] == 1.0

    histogram = dict(
        _view(wh, "SELECT bucket, videos FROM score_histogram WHERE model_version = 'm1'")
    )
    # 0.05 -> 0; 0.85 (f1, f3) -> 8; 1.0 -> 9 (top bucket is closed); every bucket present.
    assert histogram == {0: 1, 1: 0, 2: 0, 3: 0, 4: 0, 5: 0, 6: 0, 7: 0, 8: 2, 9: 1}


def test_views_group_by_utc_day_whatever_the_session_time_zone(wh: DuckDBWarehouse) -> None:
    wh.upsert_scans([make_scan(scanned_at=MAY_1 + 24 * HOUR + 2 * HOUR)])  # May 2, 02:00 UTC
    wh.con.execute("SET TimeZone = 'America/New_York'").fetchall()  # still May 1 there
    assert _view(wh, "SELECT day FROM daily_status_counts") == [(date(2024, 5, 2),)]


def test_views_file_holds_the_three_dashboard_views() -> None:
    statements = view_statements()
    assert [s.split()[4] for s in statements] == [
        "daily_status_counts",
        "daily_fake_rate",
        "score_histogram",
    ]
    assert all("FROM scans_v2" in s for s in view_statements("scans_v2")[:2])


def test_a_warehouse_with_other_table_names_gets_its_own_views(wh_url: str) -> None:
    with DuckDBWarehouse(wh_url, scans_table="scans_v2", runs_table="runs_v2") as wh:
        wh.ensure_schema()
        wh.upsert_scans([make_scan()])
        wh.start_run("r", "scan", "{}", "v")
        assert _view(wh, "SELECT videos FROM daily_status_counts") == [(1,)]
        assert len(wh.query_runs(5)) == 1


# --- schema and DDL ------------------------------------------------------------------


@pytest.mark.parametrize("dialect", ["duckdb", "postgres"])
def test_ddl_has_every_arrow_column_nullability_and_the_key(dialect: str) -> None:
    ddl = video_scans_ddl(dialect)
    assert ddl.startswith('CREATE TABLE IF NOT EXISTS "video_scans" (')
    for field in VIDEO_SCANS_SCHEMA:
        line = next(ln for ln in ddl.splitlines() if ln.strip().startswith(f'"{field.name}" '))
        assert line.rstrip(",").endswith("NOT NULL") != field.nullable, line
    assert 'PRIMARY KEY ("video_id", "model_version")' in ddl
    assert video_scans_ddl(dialect, table="scans_v2").startswith(
        'CREATE TABLE IF NOT EXISTS "scans_v2"'
    )


def test_ddl_types_follow_each_dialect() -> None:
    duck, pg = video_scans_ddl("duckdb"), video_scans_ddl("postgres")
    assert '"scanned_at" TIMESTAMPTZ NOT NULL' in duck
    assert '"scanned_at" TIMESTAMPTZ NOT NULL' in pg
    assert '"fake_probability" DOUBLE,' in duck
    assert '"fake_probability" DOUBLE PRECISION,' in pg
    assert '"uri" VARCHAR NOT NULL' in duck and '"uri" TEXT NOT NULL' in pg
    assert '"size_bytes" BIGINT NOT NULL' in pg and '"width" INTEGER,' in pg


@pytest.mark.parametrize("dialect", ["duckdb", "postgres"])
def test_scan_runs_ddl_has_every_column_the_key_and_the_status_check(dialect: str) -> None:
    ddl = scan_runs_ddl(dialect)
    for name in SCAN_RUNS_SCHEMA.names:
        assert f'"{name}" ' in ddl
    assert 'PRIMARY KEY ("run_id")' in ddl
    assert "CHECK (\"status\" IN ('running', 'succeeded', 'failed'))" in ddl
    assert SCAN_RUNS_SCHEMA.metadata[b"dfscan.schema_version"] == b"1"


def test_scan_runs_table_rejects_an_unknown_status(wh: DuckDBWarehouse) -> None:
    wh.start_run("run-1", "scan", "{}", "v1")
    with pytest.raises(duckdb.ConstraintException, match="CHECK"):
        wh.con.execute("UPDATE scan_runs SET status = 'paused'").fetchall()


def test_bigquery_schema_has_every_column_with_mode_and_type() -> None:
    schema = bigquery_schema()
    assert [c["name"] for c in schema] == VIDEO_SCANS_SCHEMA.names
    by_name = {c["name"]: c for c in schema}
    for field in VIDEO_SCANS_SCHEMA:
        assert by_name[field.name]["mode"] == ("NULLABLE" if field.nullable else "REQUIRED")
    assert by_name["scanned_at"] == {"name": "scanned_at", "type": "TIMESTAMP", "mode": "REQUIRED"}
    assert by_name["fake_probability"] == {
        "name": "fake_probability",
        "type": "FLOAT",
        "mode": "NULLABLE",
    }
    assert by_name["frames_sampled"]["type"] == "INTEGER"
    assert json.loads(json.dumps(schema)) == schema  # plain JSON, as `bq mk --schema` takes


def test_unknown_dialect_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no DDL for dialect 'mysql'"):
        video_scans_ddl("mysql")
    with pytest.raises(ConfigError, match="bigquery_schema"):
        video_scans_ddl("bigquery")


def test_ensure_schema_refuses_a_table_missing_columns(wh_url: str) -> None:
    with DuckDBWarehouse(wh_url) as wh:
        wh.con.execute("CREATE TABLE video_scans (video_id VARCHAR, model_version VARCHAR)")
        with pytest.raises(ConfigError, match="lacks columns uri, size_bytes"):
            wh.ensure_schema()


def check_a_not_null_column_it_does_not_write_is_refused(wh: Warehouse, number: str) -> None:
    """A column an older layout left behind gets NULL from every upsert: if it refuses
    NULL, setup says so, rather than the first batch of rows after the decode."""
    wh.ensure_schema()
    wh._execute(f'ALTER TABLE video_scans ADD COLUMN "legacy_score" {number} NOT NULL')
    with pytest.raises(ConfigError) as err:
        wh.ensure_schema()
    assert str(err.value) == (
        "warehouse table video_scans has NOT NULL columns this version does not write:"
        " legacy_score: give them a default, drop NOT NULL or use another database"
    )
    wh._execute('ALTER TABLE video_scans ALTER COLUMN "legacy_score" SET DEFAULT 0')
    wh.ensure_schema()  # a default fills it
    assert wh.upsert_scans([make_scan(video_id="a")]) == 1


def check_a_table_without_its_key_is_refused(wh: Warehouse) -> None:
    """A table made without its primary key (CREATE TABLE AS, a restore) would fail the
    first upsert, after the decode; setup says so instead."""
    key = ',\n    PRIMARY KEY ("video_id", "model_version")'
    wh._execute(video_scans_ddl(wh.dialect).replace(key, ""))
    with pytest.raises(ConfigError) as err:
        wh.ensure_schema()
    assert str(err.value) == (
        "warehouse table video_scans has no primary key or unique index on"
        " (video_id, model_version): add one or use another database"
    )
    wh._execute('CREATE UNIQUE INDEX by_key ON video_scans ("video_id", "model_version")')
    wh.ensure_schema()  # a unique index is a key ON CONFLICT can use
    assert wh.upsert_scans([make_scan(video_id="a"), make_scan(video_id="a")]) == 1


def test_ensure_schema_refuses_a_not_null_column_it_does_not_write(wh_url: str) -> None:
    with DuckDBWarehouse(wh_url) as wh:
        check_a_not_null_column_it_does_not_write_is_refused(wh, "DOUBLE")


def test_ensure_schema_refuses_a_table_without_its_key_before_any_row(wh_url: str) -> None:
    with DuckDBWarehouse(wh_url) as wh:
        check_a_table_without_its_key_is_refused(wh)


# --- names and URLs ------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["video_scans; DROP TABLE x", "1scans", "scans-v2", 'a"b', "", "x" * 64, "main.scans"],
)
def test_bad_table_name_is_a_config_error(name: str, wh_url: str) -> None:
    with pytest.raises(ConfigError, match="invalid table name"):
        validate_identifier(name)
    with pytest.raises(ConfigError, match="invalid table name"):
        video_scans_ddl("duckdb", table=name)
    with pytest.raises(ConfigError, match="invalid table name"):
        DuckDBWarehouse(wh_url, scans_table=name)


def test_good_table_names_pass_unchanged() -> None:
    assert validate_identifier("_scans_V2") == "_scans_V2"
    assert validate_identifier("x" * 63) == "x" * 63


def test_unknown_url_scheme_is_a_config_error_that_hides_the_password() -> None:
    with pytest.raises(ConfigError, match="unknown warehouse URL scheme 'mysql'") as err:
        build_warehouse("mysql://user:s3cret@db/scans")
    assert "s3cret" not in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="no scheme"):
        build_warehouse("scans.duckdb")
    assert set(WAREHOUSES) >= {"duckdb"}


def test_duckdb_url_forms() -> None:
    assert duckdb_path("duckdb:///srv/dfscan/scans.duckdb") == "/srv/dfscan/scans.duckdb"
    assert duckdb_path("duckdb://out/scans.duckdb") == "out/scans.duckdb"
    assert duckdb_path("duckdb://:memory:") == ":memory:"
    with pytest.raises(ConfigError, match="names no file"):
        duckdb_path("duckdb://")


def test_in_memory_warehouse_works_end_to_end() -> None:
    with build_warehouse("duckdb://:memory:") as wh:
        assert isinstance(wh, DuckDBWarehouse)
        wh.ensure_schema()
        wh.upsert_scans([make_scan()])
        assert len(wh.query_scans()) == 1


def test_ensure_schema_creates_the_parent_dir_and_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "scans.duckdb"
    with DuckDBWarehouse(f"duckdb://{path}") as wh:
        wh.ensure_schema()
        wh.upsert_scans([make_scan()])
        wh.ensure_schema()
        assert len(wh.query_scans()) == 1
    assert path.is_file()


# --- the operator --------------------------------------------------------------------


def test_warehouse_writer_lifecycle_upserts_batches_and_passes_rows_on(wh_url: str) -> None:
    writer = WarehouseWriter(wh_url)
    assert writer.resources.concurrency == 1  # DuckDB: one writing process
    writer = pickle.loads(pickle.dumps(writer))  # ships to a worker before setup
    with pytest.raises(RuntimeError, match="before setup"):
        writer.process_batch([make_scan()])

    batch = [make_scan(video_id="a"), make_unscored(video_id="b")]
    with writer:
        assert writer.process_batch(batch) == batch
        assert writer.process_batch([make_scan(video_id="a", label="REAL")]) == [
            make_scan(video_id="a", label="REAL")
        ]
        assert writer.process_batch([]) == []

    # teardown released the file: another connection can open it.
    with build_warehouse(wh_url) as wh:
        rows = {r["video_id"]: r for r in wh.query_scans()}
    assert sorted(rows) == ["a", "b"]
    assert rows["a"]["label"] == "REAL"


def test_warehouse_writer_rejects_a_bad_url_on_construction() -> None:
    with pytest.raises(ConfigError, match="unknown warehouse URL scheme 'nope'"):
        WarehouseWriter("nope://somewhere")


@pytest.mark.parametrize(
    "command",
    [
        ["scan", "videos", "--out", "out"],
        ["results"],
        ["rescore", "--faces", "out/faces", "--model", "new.pt"],
        ["ui"],
        ["report", "--out", "report.html"],
        ["runs"],
        ["train", "--data", "crops", "--out", "m.pt"],
        ["tune", "--data", "crops", "--out", "tune"],
    ],
)
def test_an_empty_warehouse_url_is_one_line_not_the_default_duckdb_file(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    """``--warehouse "$URL"`` with the variable unset: refused, so a job meant for
    PostgreSQL does not write a DuckDB file beside itself and exit 0."""
    from pipelines.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main([*command, "--warehouse", ""])
    assert exc.value.code == 2
    assert capsys.readouterr().err == (
        "dfscan: error: argument --warehouse: empty warehouse URL: leave the flag out for the"
        " default\n"
    )
    assert list(tmp_path.iterdir()) == []
