"""The PostgreSQL warehouse against a real server (the session's ``postgres_url``).

Each test gets its own schema (``search_path`` in the URL), so tests share one server
but never each other's rows, and the shared SQL of ``Warehouse`` is exercised as-is.
"""

from __future__ import annotations

import pickle
import threading
import uuid
from collections.abc import Iterator
from datetime import date, datetime, timezone
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest

from operators.write_warehouse import (
    WAREHOUSES,
    PostgresWarehouse,
    WarehouseUnavailable,
    WarehouseWriter,
    build_warehouse,
)
from pipelines.cli import main
from pipelines.config import ConfigError
from schemas.arrow import VIDEO_SCANS_SCHEMA
from tests.test_write_warehouse import (
    HOUR,
    MAY_1,
    check_a_not_null_column_it_does_not_write_is_refused,
    check_a_table_without_its_key_is_refused,
    make_scan,
    make_unscored,
)

pytestmark = pytest.mark.services


@pytest.fixture
def pg_url(postgres_url: str) -> Iterator[str]:
    """The server's URL with a fresh, empty schema first on the search path."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as con:
        con.execute(f'CREATE SCHEMA "{schema}"')
    yield f"{postgres_url}?options={quote(f'-c search_path={schema}')}"
    with psycopg.connect(postgres_url, autocommit=True) as con:
        con.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def wh(pg_url: str) -> Iterator[PostgresWarehouse]:
    warehouse = build_warehouse(pg_url)
    assert isinstance(warehouse, PostgresWarehouse)
    warehouse.ensure_schema()
    yield warehouse
    warehouse.close()


def _view(wh: PostgresWarehouse, sql: str) -> list[tuple]:
    return [tuple(r.values()) for r in wh._fetch(sql)]


# --- wiring --------------------------------------------------------------------------


def test_both_url_spellings_pick_the_postgres_backend() -> None:
    assert WAREHOUSES["postgresql"] is PostgresWarehouse
    assert WAREHOUSES["postgres"] is PostgresWarehouse
    assert isinstance(build_warehouse("postgres://u:p@127.0.0.1:1/db"), PostgresWarehouse)


def test_writer_pickles_without_a_connection_and_may_run_many_copies(wh, pg_url: str) -> None:
    writer = WarehouseWriter(pg_url)
    assert writer.resources.concurrency is None  # PostgreSQL takes concurrent writers
    clone = pickle.loads(pickle.dumps(writer))
    with clone:
        assert clone.process_batch([make_scan()]) == [make_scan()]
    assert [r["video_id"] for r in wh.query_scans()] == ["v1"]


def test_a_wrong_password_is_one_config_error_that_hides_the_password(postgres_url: str) -> None:
    bad = postgres_url.replace("dfscan-test-secret", "not-the-password")
    with pytest.raises(ConfigError) as err:
        build_warehouse(bad).ensure_schema()
    message = str(err.value)
    assert "not-the-password" not in message and "dfscan-test-secret" not in message
    assert message.startswith("cannot connect to warehouse postgresql://dfscan@127.0.0.1:")
    assert "password authentication failed" in message


def test_a_port_that_is_not_a_number_is_one_line_without_the_password(capsys) -> None:
    url = "postgresql://u:not-to-be-shown@127.0.0.1:notaport/db?sslmode=disable"
    assert main(["results", "--warehouse", url]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "dfscan: error: cannot connect to warehouse postgresql://u@127.0.0.1:notaport/db: "
    )
    assert err.count("\n") == 1 and "not-to-be-shown" not in err


def test_a_refused_connection_is_a_setting_first_and_an_outage_once_the_run_reached_it(
    free_tcp_port: int,
) -> None:
    url = f"postgresql://dfscan:pw@127.0.0.1:{free_tcp_port}/dfscan"  # nothing listens
    with pytest.raises(ConfigError, match="cannot connect to warehouse"):
        PostgresWarehouse(url).ensure_schema()
    # A writer's setup comes after the driver's check (on Beam, after the decode): the
    # server went away meanwhile, so exit 1 and rerun, not exit 2 and fix a setting.
    writer = WarehouseWriter(url)
    with pytest.raises(WarehouseUnavailable, match="cannot reconnect"):
        writer.setup()


@pytest.mark.parametrize(
    "url, reason",
    [
        (
            "postgresql://u:not%zz-to-be-shown@127.0.0.1:5432/db",
            'invalid percent-encoded token: "***"',
        ),
        (
            "postgresql://u:not-to-be-shown@[::1/db",
            'end of string reached when looking for matching "]" in IPv6 host address in URI:'
            ' "postgresql://u:***@[::1/db"',
        ),
        (
            "postgresql://u:not-to-be-shown@127.0.0.1:5432/db?sslmod=require",
            'invalid URI query parameter: "sslmod"',
        ),
    ],
)
def test_a_url_libpq_cannot_parse_is_one_line_without_the_password(
    url: str, reason: str, capsys
) -> None:
    assert main(["results", "--warehouse", url]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dfscan: error: invalid warehouse URL postgresql://u:***@")
    assert err.endswith(f": {reason}\n") and err.count("\n") == 1
    assert "not-to-be-shown" not in err and "not%zz-to-be-shown" not in err


# --- upserts -------------------------------------------------------------------------


def test_upsert_twice_keeps_one_row_per_key_with_the_second_values(wh) -> None:
    batch = [make_scan(video_id="a"), make_scan(video_id="b"), make_unscored(video_id="c")]
    assert wh.upsert_scans(batch) == 3
    assert wh.upsert_scans(batch) == 3  # a replayed batch (a retry) changes nothing
    rerun = make_scan(video_id="a", fake_probability=0.1, label="REAL", run_id="run-2")
    assert wh.upsert_scans([rerun]) == 1

    rows = {r["video_id"]: r for r in wh.query_scans()}
    assert sorted(rows) == ["a", "b", "c"]
    assert (rows["a"]["fake_probability"], rows["a"]["label"]) == (0.1, "REAL")
    assert rows["a"]["run_id"] == "run-2" and rows["b"]["run_id"] == "run-1"
    assert _view(wh, "SELECT COUNT(*) FROM video_scans") == [(3,)]


def test_same_key_twice_in_one_batch_keeps_the_last(wh) -> None:
    assert wh.upsert_scans([make_scan(fake_probability=0.9), make_scan(fake_probability=0.2)]) == 1
    [row] = wh.query_scans()
    assert row["fake_probability"] == 0.2


def test_same_video_under_another_model_version_is_a_second_row(wh) -> None:
    wh.upsert_scans([make_scan(model_version="m1"), make_scan(model_version="m2")])
    keys = sorted((r["video_id"], r["model_version"]) for r in wh.query_scans())
    assert keys == [("v1", "m1"), ("v1", "m2")]


def test_upsert_round_trips_every_column_nulls_and_utc_time(wh) -> None:
    row = make_unscored(scanned_at=MAY_1 + 1.25, mtime=None, width=None, uri="s3://b/ü x.mp4")
    wh.upsert_scans([row])
    [got] = wh.query_scans()
    assert list(got) == VIDEO_SCANS_SCHEMA.names
    assert got["status"] == "no_face" and got["error"] == "no face in 32 frames"
    assert got["fake_probability"] is None and got["label"] is None and got["width"] is None
    assert got["uri"] == "s3://b/ü x.mp4"
    assert got["scanned_at"] == datetime(2024, 5, 1, 0, 0, 1, 250000, tzinfo=timezone.utc)


def test_a_failed_upsert_writes_nothing_and_the_connection_recovers(wh) -> None:
    with pytest.raises(psycopg.errors.NotNullViolation):
        wh.upsert_scans([make_scan(video_id="good"), make_scan(video_id="bad", uri=None)])
    assert wh.query_scans() == []
    assert wh.upsert_scans([make_scan(video_id="good")]) == 1


def test_concurrent_writers_with_overlapping_keys_leave_one_row_per_key(wh, pg_url: str) -> None:
    ids = [f"v{i:03d}" for i in range(200)]
    errors: list[BaseException] = []

    def write(run: str, order: list[str]) -> None:
        with build_warehouse(pg_url) as mine:
            try:
                mine.ensure_schema()
                for start in range(0, len(order), 50):
                    mine.upsert_scans(
                        [make_scan(video_id=v, run_id=run) for v in order[start:][:50]]
                    )
            except BaseException as exc:  # noqa: B036 - collected and re-raised in the test
                errors.append(exc)

    threads = [
        threading.Thread(target=write, args=("fwd", ids)),
        threading.Thread(target=write, args=("rev", ids[::-1])),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    rows = wh.query_scans()
    assert sorted(r["video_id"] for r in rows) == ids
    assert {r["run_id"] for r in rows} <= {"fwd", "rev"}


def test_scanned_keys_returns_only_ids_present_under_that_model_version(wh) -> None:
    wh.upsert_scans(
        [
            make_scan(video_id="a"),
            make_unscored(video_id="b"),
            make_scan(video_id="c", model_version="m2"),
        ]
    )
    asked = [f"x{i}" for i in range(2500)] + ["c", "b", "a", "a"]  # more than one IN list
    assert wh.scanned_keys("m1", asked) == {"a", "b"}
    assert wh.scanned_keys("m2", asked) == {"c"}
    assert wh.scanned_keys("m1", []) == set()


def test_run_lifecycle_and_newest_first(wh) -> None:
    wh.start_run("run-1", "scan", '{"frames": "uniform:32"}', "abc")
    wh.finish_run("run-1", "succeeded", {"scored": 3, "no_face": 1}, None)
    wh.start_run("run-2", "scan", "{}", "abc")
    [newest, oldest] = wh.query_runs(10)
    assert (newest["run_id"], newest["status"], newest["ended_at"]) == ("run-2", "running", None)
    assert (oldest["status"], oldest["videos_total"]) == ("succeeded", 4)
    assert oldest["counts_by_status"] == '{"no_face": 1, "scored": 3}'
    with pytest.raises(LookupError, match="no run 'ghost'"):
        wh.finish_run("ghost", "failed", {}, "x")


def test_ensure_schema_twice_and_other_table_names(pg_url: str) -> None:
    with PostgresWarehouse(pg_url, scans_table="scans_v2", runs_table="runs_v2") as wh:
        wh.ensure_schema()
        wh.ensure_schema()  # idempotent: views are replaced, tables kept
        wh.upsert_scans([make_scan()])
        assert _view(wh, "SELECT videos FROM daily_status_counts") == [(1,)]


def test_ensure_schema_refuses_a_table_missing_columns(pg_url: str) -> None:
    with PostgresWarehouse(pg_url) as wh:
        wh._execute("CREATE TABLE video_scans (video_id TEXT, model_version TEXT)")
        with pytest.raises(ConfigError, match="lacks columns uri, size_bytes"):
            wh.ensure_schema()


def test_ensure_schema_refuses_a_not_null_column_it_does_not_write(pg_url: str) -> None:
    with PostgresWarehouse(pg_url) as wh:
        check_a_not_null_column_it_does_not_write_is_refused(wh, "DOUBLE PRECISION")


def test_ensure_schema_refuses_a_table_without_its_key_before_any_row(pg_url: str) -> None:
    with PostgresWarehouse(pg_url) as wh:
        check_a_table_without_its_key_is_refused(wh)


def test_a_dashboard_view_of_another_layout_is_one_line_at_setup(pg_url: str) -> None:
    """PostgreSQL cannot CREATE OR REPLACE a view whose columns change: an older or
    hand-edited view was a psycopg traceback out of every scan's setup."""
    with PostgresWarehouse(pg_url) as wh:
        wh.ensure_schema()
        wh._execute("DROP VIEW daily_status_counts")
        wh._execute(
            "CREATE VIEW daily_status_counts AS SELECT status, COUNT(*) AS n"
            " FROM video_scans GROUP BY status"
        )
        with pytest.raises(ConfigError) as err:
            wh.ensure_schema()
        assert str(err.value) == (
            "warehouse view daily_status_counts has another layout (cannot change name of"
            ' view column "status" to "day"): drop it and the next scan makes it again'
        )
        wh._execute("DROP VIEW daily_status_counts")
        wh.ensure_schema()
        assert _view(wh, "SELECT * FROM daily_status_counts") == []


# --- views ---------------------------------------------------------------------------


def test_views_count_status_fake_rate_and_histogram(wh) -> None:
    wh.upsert_scans(
        [
            make_scan(video_id="f1", fake_probability=0.85, label="FAKE"),
            make_scan(video_id="f2", fake_probability=1.0, label="FAKE"),
            make_scan(video_id="r1", fake_probability=0.05, label="REAL"),
            make_unscored(video_id="n1"),
            make_scan(video_id="f3", scanned_at=MAY_1 + 30 * HOUR),  # May 2
            make_scan(video_id="f1", model_version="m2", fake_probability=0.45, label="REAL"),
        ]
    )
    may1, may2 = date(2024, 5, 1), date(2024, 5, 2)
    assert _view(wh, "SELECT day, status, videos FROM daily_status_counts ORDER BY 1, 2") == [
        (may1, "no_face", 1),
        (may1, "scored", 4),
        (may2, "scored", 1),
    ]
    rates = _view(
        wh,
        "SELECT day, model_version, scored, fake, fake_rate FROM daily_fake_rate ORDER BY 1, 2",
    )
    assert [r[:4] for r in rates] == [(may1, "m1", 3, 2), (may1, "m2", 1, 0), (may2, "m1", 1, 1)]
    assert rates[0][4] == pytest.approx(2 / 3) and rates[1][4] == 0.0 and rates[2][4] == 1.0
    histogram = _view(wh, "SELECT model_version, bucket, videos FROM score_histogram ORDER BY 1, 2")
    m1 = {b: n for m, b, n in histogram if m == "m1"}
    m2 = {b: n for m, b, n in histogram if m == "m2"}
    # 0.05 -> 0; 0.85 (f1, f3) -> 8; 1.0 -> 9 (the top bucket is closed); all ten present.
    assert m1 == {0: 1, 1: 0, 2: 0, 3: 0, 4: 0, 5: 0, 6: 0, 7: 0, 8: 2, 9: 1}
    assert m2 == {b: int(b == 4) for b in range(10)}


def test_views_group_by_utc_day_whatever_the_session_time_zone(wh) -> None:
    wh.upsert_scans([make_scan(scanned_at=MAY_1 + 26 * HOUR)])  # May 2, 02:00 UTC
    wh._execute("SET TimeZone = 'America/New_York'")  # still May 1 there
    assert _view(wh, "SELECT day FROM daily_status_counts") == [(date(2024, 5, 2),)]


# --- a whole scan --------------------------------------------------------------------


@pytest.mark.slow
def test_a_local_scan_into_postgres_gives_one_row_per_video(
    pg_url: str, tmp_path: Path, tiny_checkpoint: Path
) -> None:
    from pipelines.config import DetectorConfig, SamplingConfig, ScanConfig, ScorerConfig
    from pipelines.scan import run_scan
    from tests.conftest import REAL_VIDEOS

    videos = tmp_path / "videos"
    videos.mkdir()
    names = ["hamilton_clip.mp4", "talking_head_d0.mp4", "talking_head_d3.mp4"]
    for name in names:
        (videos / name).symlink_to(REAL_VIDEOS / name)
    cfg = ScanConfig(
        input_uri=str(videos),
        out_uri=str(tmp_path / "out"),
        warehouse_url=pg_url,
        run_id="pg-run",
        sampling=SamplingConfig.parse("uniform:4"),
        detector=DetectorConfig.build("scrfd-500m"),
        scorer=ScorerConfig(checkpoint=str(tiny_checkpoint)),
        progress=False,
    )
    summary = run_scan(cfg)
    assert summary.videos == 3
    with build_warehouse(pg_url) as wh:
        rows = wh.query_scans()
        [run] = wh.query_runs(5)
    assert sorted(Path(r["uri"]).name for r in rows) == names
    assert len({r["video_id"] for r in rows}) == 3
    assert {r["status"] for r in rows} == {"scored"}
    assert all(0.0 <= r["fake_probability"] <= 1.0 for r in rows)
    assert (run["run_id"], run["status"], run["videos_total"]) == ("pg-run", "succeeded", 3)
