"""Faults around a scan: a warehouse locked or lost, a Pushgateway down.

Each fault is caused for real (another process holding the DuckDB file, a PostgreSQL
server stopped in the middle of a transaction, a Pushgateway killed) against ``dfscan
scan`` run as a separate process (in-process where the fault must land at one exact
point), and the test pins what the user sees and what is left behind: one line on
stderr and no traceback; exit 1 for a fault (2 for a setting that cannot work);
committed rows and face shards kept, nothing half-written; and a rerun that ends with
exactly one row per video and every face once.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from psycopg.conninfo import conninfo_to_dict

from operators.read_shards import list_shards, read_face_shards
from operators.write_warehouse import WarehouseUnavailable, _pg_conninfo, build_warehouse
from pipelines.config import DetectorConfig, SamplingConfig, ScanConfig, ScorerConfig
from pipelines.scan import run_scan
from tests.conftest import REAL_VIDEOS
from tests.postgres_server import PostgresServer, PostgresUnavailable, free_port
from tests.test_kill_rerun import scan_command

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
FIRST = ("talking_head_d0.mp4", "talking_head_d3.mp4")  # scanned before the fault
LATER = ("hamilton_clip.mp4",)  # added for the run that meets the fault


# --- helpers ---------------------------------------------------------------------------


def add_videos(folder: Path, names: Sequence[str]) -> None:
    folder.mkdir(exist_ok=True)
    for name in names:
        shutil.copy(REAL_VIDEOS / name, folder / name)


def video_ids(folder: Path) -> set[str]:
    return {hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def dfscan(
    videos: Path, out: Path, checkpoint: Path, run_id: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        scan_command(videos, out, checkpoint, run_id, extra=extra),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def one_line(stderr: str) -> str:
    """The only line on stderr (no traceback, no second message)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def committed_parts(out: Path) -> set[str]:
    return {p.path for p in list_shards(str(out / "faces")).parts}


def assert_each_face_once(out: Path, faces_per_video: dict[str, int]) -> None:
    """No (video, frame, track) in two committed parts, and each video's faces there."""
    rows = read_face_shards(
        str(out / "faces"), columns=["video_id", "frame_index", "track_id"]
    ).to_pylist()
    faces = Counter((r["video_id"], r["frame_index"], r["track_id"]) for r in rows)
    assert [face for face, n in faces.items() if n > 1] == []
    assert Counter(vid for vid, _, _ in faces) == {v: n for v, n in faces_per_video.items() if n}


def duckdb_rows(out: Path) -> tuple[list[tuple[Any, ...]], dict[str, str]]:
    """(video_id, model_version, faces, run_id) of every row, and run_id -> status."""
    con = duckdb.connect(str(out / "scans.duckdb"), read_only=True)
    try:
        rows = con.execute(
            "SELECT video_id, model_version, faces, run_id FROM video_scans"
        ).fetchall()
        runs = dict(con.execute("SELECT run_id, status FROM scan_runs").fetchall())
    finally:
        con.close()
    return rows, runs


def assert_one_row_per_video(rows: list[tuple[Any, ...]], expected: set[str]) -> None:
    keys = Counter((vid, model) for vid, model, *_ in rows)
    assert {vid for vid, _ in keys} == expected
    assert set(keys.values()) == {1} and len({m for _, m in keys}) == 1


@contextlib.contextmanager
def duckdb_held_open(path: Path) -> Iterator[int]:
    """Another process with the DuckDB file open for writing, as a second scan or a
    notebook would have it; yields its pid and lets go on exit."""
    code = (
        "import duckdb, sys; con = duckdb.connect(sys.argv[1]);"
        " print('held', flush=True); sys.stdin.read()"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == "held"
        yield proc.pid
    finally:
        proc.stdin.close()  # end of input: the holder exits and DuckDB lets go
        assert proc.wait(timeout=60) == 0


def pushing_scan(
    videos: Path, out: Path, checkpoint: Path, run_id: str, gateway: str
) -> subprocess.Popen[str]:
    """``dfscan scan`` in its own process, pushing to ``gateway`` every 0.2 s."""
    extra = ("--pushgateway", gateway, "--push-interval", "0.2")
    return subprocess.Popen(
        scan_command(videos, out, checkpoint, run_id, extra=extra),
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(what: str, check: Any, timeout_s: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (value := check()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.1)
    return value


# --- DuckDB locked -----------------------------------------------------------------------


def test_a_locked_duckdb_warehouse_fails_before_any_work_and_the_rerun_completes(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    videos, out = tmp_path / "videos", tmp_path / "out"
    add_videos(videos, FIRST)
    assert dfscan(videos, out, tiny_checkpoint, "first").returncode == 0
    parts = committed_parts(out)
    assert parts
    add_videos(videos, LATER)

    warehouse = out.resolve() / "scans.duckdb"
    with duckdb_held_open(warehouse) as holder:
        locked = dfscan(videos, out, tiny_checkpoint, "locked")
    assert locked.returncode == 1
    assert one_line(locked.stderr) == (
        f"dfscan: error: warehouse duckdb://{warehouse} is locked by another process (pid {holder})"
    )
    # The warehouse is opened first: nothing was decoded, the earlier shards stand as
    # they were, and the failed run left no record.
    assert committed_parts(out) == parts
    assert "locked" not in duckdb_rows(out)[1]

    rerun = dfscan(videos, out, tiny_checkpoint, "rerun")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    rows, runs = duckdb_rows(out)
    assert_one_row_per_video(rows, video_ids(videos))
    assert runs == {"first": "succeeded", "rerun": "succeeded"}
    assert {run for *_, run in rows} == {"first", "rerun"}  # the first rows were skipped
    assert_each_face_once(out, {vid: faces for vid, _, faces, _ in rows})


def open_from_another_process(path: Path) -> str:
    """What a dashboard or ``dfscan results`` gets opening the file now: "opened", or
    DuckDB's lock error."""
    code = (
        "import duckdb, sys\n"
        "try:\n"
        "    duckdb.connect(sys.argv[1], read_only=True).close(); print('opened')\n"
        "except duckdb.IOException as err:\n"
        "    print(err)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


def test_the_scan_holds_its_duckdb_file_from_planning_to_the_run_record(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    """The driver keeps the file after planning: a reader that comes then is refused,
    rather than taking the file and failing the scan when its writer opens it (on Beam,
    after every video is decoded)."""
    videos, out = tmp_path / "videos", tmp_path / "out"
    add_videos(videos, FIRST)
    warehouse = out / "scans.duckdb"
    cfg = ScanConfig(
        input_uri=str(videos),
        out_uri=str(out),
        warehouse_url=f"duckdb://{warehouse}",
        run_id="held",
        sampling=SamplingConfig.parse("uniform:4"),
        detector=DetectorConfig.build("scrfd-500m"),
        scorer=ScorerConfig(checkpoint=str(tiny_checkpoint)),
        progress=False,
    )
    attempts: list[str] = []
    run_scan(cfg, on_listed=lambda todo: attempts.append(open_from_another_process(warehouse)))
    assert len(attempts) == 1 and "Could not set lock" in attempts[0], attempts
    assert open_from_another_process(warehouse) == "opened"  # and lets go at the end
    rows, runs = duckdb_rows(out)
    assert_one_row_per_video(rows, video_ids(videos))
    assert runs == {"held": "succeeded"}


# --- PostgreSQL unreachable or lost --------------------------------------------------------


def test_a_postgres_warehouse_on_a_closed_port_is_one_line_before_any_work(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    videos, out = tmp_path / "videos", tmp_path / "out"
    add_videos(videos, FIRST[:1])
    port = free_port()  # bound and released: nothing listens there
    url = f"postgresql://dfscan:not-to-be-shown@127.0.0.1:{port}/dfscan"
    done = dfscan(videos, out, tiny_checkpoint, "closed", "--warehouse", url)
    assert done.returncode == 2
    assert one_line(done.stderr) == (
        f"dfscan: error: cannot connect to warehouse postgresql://dfscan@127.0.0.1:{port}"
        f'/dfscan: connection to server at "127.0.0.1", port {port} failed: Connection refused'
    )
    assert not out.exists()  # nothing listed, decoded or written


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    """A server of this module's own: the test below stops it mid-run."""
    try:
        server = PostgresServer().init()
    except PostgresUnavailable as err:
        pytest.fail(str(err))
    try:
        yield server
    finally:
        server.destroy()


def test_postgres_connections_time_out_and_keep_alive_unless_the_url_says_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PGCONNECT_TIMEOUT", raising=False)
    plain = conninfo_to_dict(_pg_conninfo("postgresql://u:pw@db.example:5432/scans"))
    assert (plain["connect_timeout"], plain["keepalives_idle"], plain["host"]) == (
        "10",
        "60",
        "db.example",
    )
    given = "postgresql://u:pw@db/scans?connect_timeout=3&keepalives_idle=5"
    assert conninfo_to_dict(_pg_conninfo(given))["connect_timeout"] == "3"
    assert conninfo_to_dict(_pg_conninfo(given))["keepalives_idle"] == "5"
    monkeypatch.setenv("PGCONNECT_TIMEOUT", "7")  # libpq reads it when the URL is silent
    assert "connect_timeout" not in conninfo_to_dict(_pg_conninfo("postgresql://u@db/scans"))


@pytest.mark.services
def test_a_postgres_warehouse_reports_a_lost_server_and_reconnects_once_it_is_back(
    postgres: PostgresServer,
) -> None:
    warehouse = build_warehouse(postgres.url)
    where = f"warehouse postgresql://dfscan@127.0.0.1:{postgres.port}/dfscan"
    try:
        warehouse.ensure_schema()
        postgres.stop()
        try:
            with pytest.raises(WarehouseUnavailable, match=f"^{re.escape(where)} is unavailable: "):
                warehouse.query_runs()
            with pytest.raises(
                WarehouseUnavailable,
                match=f"^lost {re.escape(where)} and cannot reconnect: .*Connection refused$",
            ):
                warehouse.query_runs()
        finally:
            postgres.start()
        assert warehouse.query_runs() == []  # the same object, a new connection
    finally:
        warehouse.close()


@pytest.mark.services
def test_a_postgres_restart_while_the_writer_idles_costs_no_batch(
    postgres: PostgresServer,
) -> None:
    """The writer waits on decode between batches; a server restart (maintenance, a
    failover) in that time cut its connection, and the next batch failed the scan
    against a server that was up again."""
    from tests.test_write_warehouse import make_scan

    warehouse = build_warehouse(postgres.url)
    try:
        warehouse.ensure_schema()
        warehouse.upsert_scans([make_scan(video_id="before")])
        postgres.stop()
        postgres.start()
        assert warehouse.upsert_scans([make_scan(video_id="after")]) == 1
        assert sorted(r["video_id"] for r in warehouse.query_scans()) == ["after", "before"]
    finally:
        warehouse.close()


def pg_rows(url: str) -> tuple[list[tuple[Any, ...]], dict[str, str]]:
    with psycopg.connect(url) as con:
        rows = con.execute(
            "SELECT video_id, model_version, faces, run_id FROM video_scans"
        ).fetchall()
        runs: dict[str, str] = dict(con.execute("SELECT run_id, status FROM scan_runs").fetchall())
    return rows, runs


@pytest.mark.services
@pytest.mark.parametrize("runner", ["local", "ray"])
def test_postgres_stopped_inside_the_write_commits_nothing_of_it_and_the_rerun_completes(
    tmp_path: Path, tiny_checkpoint: Path, postgres: PostgresServer, runner: str
) -> None:
    # On Ray the writer runs on actors: the error must still reach the CLI as itself.
    videos, out = tmp_path / "videos", tmp_path / "out"
    add_videos(videos, FIRST)
    db = f"stopped_{runner}"  # its own rows: the other runner's case shares the server
    url = postgres.fresh_database(db)
    first = dfscan(videos, out, tiny_checkpoint, "first", "--warehouse", url)
    assert first.returncode == 0, first.stderr[-3000:]
    first_rows, _ = pg_rows(url)
    add_videos(videos, LATER)

    # Hold a lock that lets the scan plan (reads, run record, URIs) but makes its upsert
    # wait inside its transaction; stop the server while it waits there.
    blocker = psycopg.connect(url)
    blocker.execute("LOCK TABLE video_scans IN EXCLUSIVE MODE")
    scan = subprocess.Popen(
        scan_command(
            videos, out, tiny_checkpoint, "stopped", extra=("--warehouse", url, "--runner", runner)
        ),
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with psycopg.connect(url, autocommit=True) as watcher:
            wait_for(
                "the scan's upsert to wait on the lock",
                lambda: (
                    scan.poll() is not None
                    or watcher.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                        " AND query ILIKE 'INSERT INTO%video_scans%'"
                    ).fetchone()
                    == (1,)
                ),
            )
        postgres.stop()
        _, stderr = scan.communicate(timeout=120)
    finally:
        if scan.poll() is None:
            scan.kill()
            scan.wait()
        blocker.close()
        if postgres.proc is None:
            postgres.start()
    assert scan.returncode == 1, stderr[-3000:]
    if runner == "local":
        line = one_line(stderr)
    else:
        # Ray's own logs (its executor reporting the failed task) share stderr; the
        # CLI's message is still exactly one line, the operator's error as itself.
        [line] = [ln for ln in stderr.splitlines() if ln.startswith("dfscan: ")]
    print(line)
    assert re.fullmatch(
        rf"dfscan: error: warehouse postgresql://dfscan@127\.0\.0\.1:{postgres.port}/{db}"
        r" is unavailable: .+",
        line,
    ), line
    assert "dfscan-test-secret" not in stderr

    rows, runs = pg_rows(url)
    assert sorted(rows) == sorted(first_rows)  # nothing of the stopped transaction
    assert runs == {"first": "succeeded", "stopped": "running"}  # as a killed run's
    new = video_ids(videos) - {vid for vid, *_ in first_rows}
    shard_videos = set(
        read_face_shards(str(out / "faces"), columns=["video_id"]).column("video_id").to_pylist()
    )
    assert new <= shard_videos  # the faces written before the failure stay committed

    rerun = dfscan(videos, out, tiny_checkpoint, "rerun", "--warehouse", url)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    rows, runs = pg_rows(url)
    assert_one_row_per_video(rows, video_ids(videos))
    assert {vid for vid, *_, run in rows if run == "rerun"} == new
    assert runs["rerun"] == "succeeded"
    assert_each_face_once(out, {vid: faces for vid, _, faces, _ in rows})


# --- Pushgateway down ----------------------------------------------------------------------


def assert_scan_finished_despite_the_gateway(
    done_rc: int, stderr: str, gateway: str, out: Path, videos: Path
) -> None:
    """Exit 0, one warning line for the whole outage, every row, the textfile written."""
    assert done_rc == 0, stderr[-3000:]
    assert one_line(stderr).startswith(f"metrics push to {gateway} failed: ")
    rows, runs = duckdb_rows(out)
    assert_one_row_per_video(rows, video_ids(videos))
    assert set(runs.values()) == {"succeeded"}
    families = text_string_to_metric_families((out / "metrics.prom").read_text())
    scored = {
        s.labels["status"]: s.value
        for f in families
        if f.name == "dfscan_videos"
        for s in f.samples
        if s.name == "dfscan_videos_total"
    }
    assert scored["scored"] == len(rows)


def test_a_pushgateway_on_a_closed_port_costs_one_warning_line(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    videos, out = tmp_path / "videos", tmp_path / "out"
    add_videos(videos, FIRST)
    gateway = f"http://127.0.0.1:{free_port()}"
    done = dfscan(
        videos,
        out,
        tiny_checkpoint,
        "no-gateway",
        "--pushgateway",
        gateway,
        "--push-interval",
        "0.2",
    )
    assert_scan_finished_despite_the_gateway(done.returncode, done.stderr, gateway, out, videos)


@pytest.fixture
def pushgateway(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Debian's prometheus-pushgateway on a free loopback port: (URL, process)."""
    binary = shutil.which("prometheus-pushgateway")
    if binary is None:
        pytest.skip("prometheus-pushgateway not found: apt-get install prometheus-pushgateway")
    address = f"127.0.0.1:{free_port()}"
    with (tmp_path / "pushgateway.log").open("wb") as log:
        proc = subprocess.Popen(
            [binary, f"--web.listen-address={address}", "--log.level=warn"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"http://{address}/-/ready", timeout=2):
                return True
        except OSError:
            return proc.poll() is not None  # exited: fail below rather than wait

    try:
        wait_for("the Pushgateway", ready, timeout_s=30)
        assert proc.poll() is None, (tmp_path / "pushgateway.log").read_text()
        yield f"http://{address}", proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@pytest.mark.services
def test_a_pushgateway_that_dies_mid_run_costs_one_warning_line(
    tmp_path: Path, tiny_checkpoint: Path, pushgateway: tuple[str, subprocess.Popen[bytes]]
) -> None:
    gateway, gateway_proc = pushgateway
    videos, out = tmp_path / "videos", tmp_path / "out"
    add_videos(videos, FIRST)
    scan = pushing_scan(videos, out, tiny_checkpoint, "gateway-dies", gateway)

    def pushed() -> bool:
        with urllib.request.urlopen(f"{gateway}/metrics", timeout=5) as resp:
            return 'run_id="gateway-dies"' in resp.read().decode()

    try:
        wait_for("the scan's first push", lambda: scan.poll() is not None or pushed())
        assert scan.poll() is None, "the scan ended before the gateway could be stopped"
        gateway_proc.kill()
        gateway_proc.wait()
        _, stderr = scan.communicate(timeout=300)
    finally:
        if scan.poll() is None:
            scan.kill()
            scan.wait()
    assert_scan_finished_despite_the_gateway(scan.returncode, stderr, gateway, out, videos)


@pytest.mark.services
def test_a_sigterm_ends_the_scan_as_a_failed_run_that_says_so(
    tmp_path: Path, tiny_checkpoint: Path, pushgateway: tuple[str, subprocess.Popen[bytes]]
) -> None:
    """What Kubernetes sends at a Job's activeDeadlineSeconds: the run is recorded failed,
    its failure reaches the gateway (DfscanJobFailed) and metrics.prom, in one line."""
    gateway, _ = pushgateway
    videos, out = tmp_path / "videos", tmp_path / "out"
    add_videos(videos, (*FIRST, *LATER))
    scan = pushing_scan(videos, out, tiny_checkpoint, "terminated", gateway)

    def gateway_value(name: str) -> float | None:
        with urllib.request.urlopen(f"{gateway}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == name and s.labels.get("run_id") == "terminated":
                    return s.value
        return None

    try:
        wait_for(
            "the scan's first push",
            lambda: scan.poll() is not None or gateway_value("dfscan_videos_backlog"),
        )
        assert scan.poll() is None, "the scan ended before it could be terminated"
        scan.send_signal(signal.SIGTERM)
        _, stderr = scan.communicate(timeout=120)
    finally:
        if scan.poll() is None:
            scan.kill()
            scan.wait()
    assert scan.returncode == 128 + signal.SIGTERM
    assert stderr.strip().splitlines()[-1] == "dfscan: terminated"
    assert "Traceback" not in stderr
    con = duckdb.connect(str(out / "scans.duckdb"), read_only=True)
    try:
        ((status, error),) = con.execute("SELECT status, error FROM scan_runs").fetchall()
    finally:
        con.close()
    assert (status, error) == ("failed", "Terminated: SIGTERM")
    assert (gateway_value("dfscan_last_failure_timestamp_seconds") or 0) > 0
    assert gateway_value("dfscan_last_success_timestamp_seconds") == 0
    written = (out / "metrics.prom").read_text()
    assert re.search(r"^dfscan_last_failure_timestamp_seconds [1-9]", written, re.MULTILINE)
