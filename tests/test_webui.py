"""The read-only web UI and the HTML report, on a real scan's warehouse and face shards.

App-level tests pin status codes, filters and escaping (a row whose URI and error are
HTML); a browser test drives the pages in Debian's headless Chromium through its
chromedriver (Selenium), checks that thumbnails decode and the chart draws, and saves the
screenshot the README shows.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import re
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from operators.write_face_shards import read_face_shards
from operators.write_warehouse import DuckDBWarehouse, build_warehouse
from pipelines import webui
from pipelines.cli import main
from pipelines.config import DetectorConfig, SamplingConfig, ScanConfig, ScorerConfig, TimeWindow
from pipelines.scan import ScanSummary, run_scan
from pipelines.webui import (
    THUMBS_REPORT,
    ScanBrowser,
    TrackView,
    create_app,
    open_reader,
    pick_faces,
    render_report,
    score_chart,
)
from schemas.records import TrainingRun, VideoScan, VideoStatus
from tests.conftest import REAL_VIDEOS
from tests.test_write_warehouse import make_scan

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
# The README's screenshot is refreshed only on request, so a test run leaves the tree clean.
DOCS_SCREENSHOT = ROOT / "docs" / "ui-screenshot.png"
RUN_ID = "ui-run-1"
EVIL_URI = 's3://uploads/<script>alert("uri")</script>.mp4'
EVIL_ERROR = "<img src=x onerror=alert('error')>"
EVIL_RUN = 'evil"><script>alert("run")</script>'
EVIL_RUN_ERROR = "<script>alert('run error')</script>"
EVIL_ID = "e" * 64


@dataclass
class Scanned:
    out: Path
    summary: ScanSummary
    warehouse: str
    faces: str
    rows: dict[str, dict[str, Any]]  # file name -> warehouse row (of the real scan)


def _rows(url: str) -> list[dict[str, Any]]:
    wh = build_warehouse(url)
    try:
        return wh.query_scans()
    finally:
        wh.close()


def _evil_row(model_version: str) -> VideoScan:
    """A row as a hostile upload could make it: HTML in the URI and the error."""
    return VideoScan(
        video_id=EVIL_ID,
        model_version=model_version,
        uri=EVIL_URI,
        size_bytes=10,
        mtime=None,
        status=VideoStatus.DECODE_ERROR,
        error=EVIL_ERROR,
        frames_sampled=0,
        frames_with_face=0,
        faces=0,
        tracks=0,
        score_mean=None,
        score_max=None,
        score_confident=None,
        track_scores='[{"track_id": "<b>x</b>"}]',  # not what a scan writes
        fake_probability=None,
        label=None,
        threshold=0.5,
        decision_rule="track_confident_max",
        model_arch="mobilenet_v2",
        detector="scrfd-500m",
        detector_sha256="0" * 64,
        sampling="uniform:8",
        duration_s=None,
        width=None,
        height=None,
        decode_s=0.0,
        detect_s=0.0,
        score_s=0.0,
        shard_uri=None,
        run_id=EVIL_RUN,
        scanned_at=dt.datetime.now(dt.timezone.utc).timestamp(),
    )


@pytest.fixture(scope="module")
def scanned(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Scanned:
    """Two real videos and a text file scanned with uniform:8, plus a hostile row and a
    failed run with HTML in its id and error."""
    videos = tmp_path_factory.mktemp("ui_videos")
    for name in ("talking_head_d0.mp4", "hamilton_clip.mp4"):
        shutil.copy(REAL_VIDEOS / name, videos / name)
    (videos / "notes.mp4").write_text("not a video\n" * 50)
    out = tmp_path_factory.mktemp("ui_out")
    url = f"duckdb://{out}/scans.duckdb"
    cfg = ScanConfig(
        input_uri=str(videos),
        out_uri=str(out),
        warehouse_url=url,
        run_id=RUN_ID,
        sampling=SamplingConfig.parse("uniform:8"),
        detector=DetectorConfig.build("scrfd-500m"),
        scorer=ScorerConfig(checkpoint=str(tiny_checkpoint)),
        progress=False,
    )
    summary = run_scan(cfg)
    wh = build_warehouse(url)
    try:
        wh.start_run(EVIL_RUN, "scan", "{}", "test")
        wh.finish_run(EVIL_RUN, "failed", {"decode_error": 1}, EVIL_RUN_ERROR)
        wh.upsert_scans([_evil_row(summary.model_version)])
    finally:
        wh.close()
    rows = {Path(r["uri"]).name: r for r in _rows(url) if r["run_id"] == RUN_ID}
    return Scanned(out, summary, url, str(out / "faces"), rows)


@pytest.fixture(scope="module")
def browser(scanned: Scanned) -> ScanBrowser:
    return ScanBrowser(scanned.warehouse, scanned.faces)


@pytest.fixture(scope="module")
def client(browser: ScanBrowser) -> Any:
    return create_app(browser).test_client()


def video_links(html: str) -> list[str]:
    return re.findall(r'<a class="video-link" href="([^"]+)"', html)


# ---------------------------------------------------------------- pages
def test_scan_gave_the_rows_the_pages_show(scanned: Scanned) -> None:
    assert dict(scanned.summary.counts) == {"scored": 2, "unsupported": 1}
    assert scanned.rows["hamilton_clip.mp4"]["tracks"] > 1


def test_runs_page_lists_each_run_with_its_counts(client: Any, scanned: Scanned) -> None:
    resp = client.get("/")
    assert resp.status_code == 200 and resp.mimetype == "text/html"
    html = resp.get_data(as_text=True)
    assert f'href="/videos?run_id={RUN_ID}"' in html
    assert '<span class="badge status">scored 2</span>' in html
    assert '<span class="badge status">unsupported 1</span>' in html
    for label, n in scanned.summary.labels.items():
        assert f'<span class="badge {label}">{label} {n}</span>' in html


def test_videos_filters_select_the_matching_rows(client: Any, scanned: Scanned) -> None:
    def count(query: str) -> int:
        resp = client.get(f"/videos?{query}")
        assert resp.status_code == 200, query
        return len(video_links(resp.get_data(as_text=True)))

    s = scanned.summary
    assert count("") == 4  # the scan's three and the hostile row
    assert count(f"run_id={RUN_ID}") == 3
    assert count("status=scored") == 2
    assert count("status=unsupported") == 1
    assert count("status=decode_error") == 1
    assert count("label=FAKE") == s.labels.get("FAKE", 0)
    assert count("label=REAL") == s.labels.get("REAL", 0)
    assert count(f"model={s.model_version}") == 4
    assert count("model=nope") == 0
    probs = sorted(r["fake_probability"] for r in scanned.rows.values() if r["fake_probability"])
    middle = (probs[0] + probs[1]) / 2
    assert count(f"min_score={middle:.6f}") == 1 and count(f"max_score={middle:.6f}") == 1
    assert count("min_score=0&max_score=1") == 2  # rows without a score are out
    today = dt.datetime.now(dt.timezone.utc).date()
    assert count(f"since={today}&until={today}") == 4
    assert count(f"since={today + dt.timedelta(days=1)}") == 0
    assert count(f"until={today - dt.timedelta(days=1)}") == 0


def test_videos_are_ordered_most_fake_looking_first(client: Any, scanned: Scanned) -> None:
    html = client.get("/videos?status=scored").get_data(as_text=True)
    shown = [float(x) for x in re.findall(r'<td class="num">(0\.\d{3})</td>', html)]
    assert shown == sorted(shown, reverse=True) and len(shown) == 2


@pytest.mark.parametrize(
    "query",
    ["min_score=abc", "min_score=2", "status=bogus", "label=maybe", "since=yesterday",
     "min_score=0.9&max_score=0.1", "offset=x", "offset=99999999999999999999999"],
)  # fmt: skip
def test_a_bad_filter_is_a_400_page(client: Any, query: str) -> None:
    resp = client.get(f"/videos?{query}")
    assert resp.status_code == 400
    assert "Bad filter" in resp.get_data(as_text=True)


def test_video_page_shows_decision_inputs_chart_and_thumbnails(
    client: Any, scanned: Scanned
) -> None:
    row = scanned.rows["hamilton_clip.mp4"]
    resp = client.get(f"/video/{row['video_id']}?model={row['model_version']}")
    assert resp.status_code == 200
    html = resp.get_data(as_text=True)
    tracks = json.loads(row["track_scores"])
    assert html.count('<img class="thumb"') == min(row["faces"], 64)
    assert html.count('<g class="track">') == len(tracks)
    assert len(re.findall(r'<path d="M[\d.]+,[\d.]+', html)) == len(tracks)
    assert html.count("<tr class=") == len(tracks)  # one aggregation-input row per track
    assert html.count('<tr class="decides">') == 1
    assert f'<span class="{row["label"]}">{row["label"]}</span>' in html
    assert f"P(fake) = {row['fake_probability']:.3f}" in html
    assert 'class="warn"' not in html  # the rule re-applied gives the stored probability
    assert 'class="threshold"' in html


def test_video_without_model_shows_its_newest_row(client: Any, scanned: Scanned) -> None:
    row = scanned.rows["talking_head_d0.mp4"]
    html = client.get(f"/video/{row['video_id']}").get_data(as_text=True)
    assert row["model_version"] in html and row["uri"] in html


def test_thumbnail_is_the_stored_jpeg(client: Any, scanned: Scanned) -> None:
    row = scanned.rows["talking_head_d0.mp4"]
    html = client.get(f"/video/{row['video_id']}").get_data(as_text=True)
    src = re.search(r'<img class="thumb" src="([^"]+)"', html).group(1).replace("&amp;", "&")
    resp = client.get(src)
    assert resp.status_code == 200 and resp.mimetype == "image/jpeg"
    face = read_face_shards(scanned.faces, video_ids=[row["video_id"]]).to_pylist()
    frame, track = (int(x) for x in re.search(r"/face/(\d+)/(\d+)\.jpg", src).groups())
    (stored,) = [f["crop"] for f in face if (f["frame_index"], f["track_id"]) == (frame, track)]
    assert resp.data == stored and resp.data[:2] == b"\xff\xd8"


def test_unknown_video_and_face_are_404(client: Any, scanned: Scanned) -> None:
    assert client.get("/video/nope").status_code == 404
    vid = scanned.rows["talking_head_d0.mp4"]["video_id"]
    assert client.get(f"/video/{vid}/face/99999/0.jpg?detector=x&sampling=y").status_code == 404


def test_hostile_values_are_escaped_everywhere(client: Any) -> None:
    pages = {
        "/": client.get("/"),
        "/videos": client.get("/videos"),
        "/video": client.get(f"/video/{EVIL_ID}"),
        "/videos?run_id": client.get("/videos", query_string={"run_id": EVIL_RUN}),
    }
    for name, resp in pages.items():
        assert resp.status_code == 200, name
        html = resp.get_data(as_text=True)
        assert "<script" not in html and "<img src=x" not in html, name
        assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
    assert "&lt;script&gt;alert(&#34;uri&#34;)&lt;/script&gt;" in pages["/videos"].get_data(
        as_text=True
    )
    assert "&lt;img src=x onerror=alert(&#39;error&#39;)&gt;" in pages["/video"].get_data(
        as_text=True
    )
    runs = pages["/"].get_data(as_text=True)
    assert "&lt;script&gt;alert(&#39;run error&#39;)&lt;/script&gt;" in runs
    assert 'href="/videos?run_id=evil%22%3E%3Cscript%3E' in runs  # quoted in the URL
    assert "track scores are not readable" in pages["/video"].get_data(as_text=True)
    assert len(video_links(pages["/videos?run_id"].get_data(as_text=True))) == 1


def test_training_page_says_none_yet_then_lists_a_recorded_run(
    client: Any, scanned: Scanned, tmp_path: Path
) -> None:
    html = client.get("/training").get_data(as_text=True)
    assert "None yet" in html
    copy = tmp_path / "with_training.duckdb"
    shutil.copy(scanned.out / "scans.duckdb", copy)
    wh = build_warehouse(f"duckdb://{copy}")
    try:
        wh.ensure_schema()
        wh.record_training_run(
            TrainingRun(
                run_id="train-<1>",
                command="train",
                status="succeeded",
                config="{}",
                data_hash="a" * 64,
                code_version="test",
                started_at=1_700_000_000.0,
                ended_at=1_700_000_600.0,
                metrics=json.dumps({"val_auc": 0.91234, "epochs_run": 3}),
                artifact_uri="/models/m.pt",
            )
        )
    finally:
        wh.close()
    other = create_app(ScanBrowser(f"duckdb://{copy}", scanned.faces)).test_client()
    html = other.get("/training").get_data(as_text=True)
    assert "train-&lt;1&gt;" in html and "val_auc 0.9123" in html and "10.0 min" in html


def test_the_ui_reader_cannot_write(scanned: Scanned) -> None:
    import duckdb

    wh = open_reader(scanned.warehouse)
    try:
        assert wh.table_exists("video_scans")
        with pytest.raises(duckdb.InvalidInputException, match="read-only"):
            wh._execute("DELETE FROM video_scans")
    finally:
        wh.close()
    assert len(_rows(scanned.warehouse)) == 4


def test_a_missing_warehouse_is_a_clear_error_page(tmp_path: Path) -> None:
    app = create_app(ScanBrowser(f"duckdb://{tmp_path}/none.duckdb", str(tmp_path)))
    resp = app.test_client().get("/")
    assert resp.status_code == 500
    assert "no warehouse at" in resp.get_data(as_text=True)


def test_pages_read_a_postgresql_warehouse(postgres_url: str, scanned: Scanned) -> None:
    """The same pages on PostgreSQL: the read-only session, the dialect's placeholders."""
    rows = _rows(scanned.warehouse)
    pg = build_warehouse(postgres_url)
    try:
        pg.ensure_schema()
        pg.start_run(RUN_ID, "scan", "{}", "test")
        pg.finish_run(RUN_ID, "succeeded", dict(scanned.summary.counts), None)
        pg.upsert_scans([_row_to_record(r) for r in rows])
    finally:
        pg.close()
    import psycopg

    reader = open_reader(postgres_url)
    try:
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            reader._execute("DELETE FROM video_scans")
    finally:
        reader.close()
    client = create_app(ScanBrowser(postgres_url, scanned.faces)).test_client()
    assert '<span class="badge status">scored 2</span>' in client.get("/").get_data(as_text=True)
    html = client.get("/videos?status=scored&min_score=0").get_data(as_text=True)
    assert len(video_links(html)) == 2
    row = scanned.rows["hamilton_clip.mp4"]
    html = client.get(f"/video/{row['video_id']}").get_data(as_text=True)
    assert html.count('<img class="thumb"') == min(row["faces"], 64)


def _row_to_record(row: dict[str, Any]) -> VideoScan:
    values = dict(row)
    values["status"] = VideoStatus(values["status"])
    values["scanned_at"] = values["scanned_at"].timestamp()
    return VideoScan(**{f.name: values[f.name] for f in dataclasses.fields(VideoScan)})


def test_a_cut_face_list_keeps_every_track_and_the_top_scores() -> None:
    faces = [{"track_id": t, "frame_index": i} for t in range(3) for i in range(10)]
    scores = {(t, i): t * 0.01 + i * 0.001 for t in range(3) for i in range(10)}
    scores[(0, 4)] = 0.99  # track 0's best face, and the best overall
    picked = pick_faces(faces, scores, 5)
    assert [(f["track_id"], f["frame_index"]) for f in picked] == [
        (0, 4), (1, 9), (2, 7), (2, 8), (2, 9),
    ]  # fmt: skip
    assert pick_faces(faces, scores, 64) == faces


def test_score_chart_puts_time_on_x_and_score_on_y() -> None:
    track = TrackView(0, 2, 0.5, 0.5, 1.0, ((0, 0.0, 0.0), (30, 2.0, 1.0)), "#000")
    chart = score_chart([track], threshold=0.5, duration_s=4.0)
    assert chart is not None
    right = chart.left + chart.plot_w
    assert (chart.left, chart.top, chart.plot_w, chart.plot_h) == (44, 12, 664, 218)
    assert chart.series[0].d == "M44,230 L376,12"  # (0 s, 0.0) and (2 s of 4, 1.0)
    assert chart.threshold_y == chart.top + chart.plot_h / 2
    assert chart.x_ticks[0] == (chart.left, "0") and chart.x_ticks[-1] == (right, "4")
    assert score_chart([], threshold=0.5) is None


def test_runs_page_says_when_older_runs_are_left_out(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(webui, "RUNS_PAGE", 2)  # the fixture's two runs: all shown
    html = client.get("/").get_data(as_text=True)
    assert html.count('class="run-link"') == 2 and "older ones are left out" not in html
    monkeypatch.setattr(webui, "RUNS_PAGE", 1)
    html = client.get("/").get_data(as_text=True)
    assert html.count('class="run-link"') == 1
    assert "The newest 1 runs; older ones are left out" in html


# ---------------------------------------------------------------- report
def test_report_of_a_run_is_one_self_contained_file(browser: ScanBrowser, scanned: Scanned) -> None:
    html = render_report(browser, run_id=RUN_ID)
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # nothing fetched
    assert "/video/" not in html  # no links into a running app
    assert "Content-Security-Policy" in html
    thumbs = re.findall(r'<img class="thumb" src="data:image/jpeg;base64,[A-Za-z0-9+/=]+"', html)
    assert len(thumbs) == sum(min(r["faces"], THUMBS_REPORT) for r in scanned.rows.values())
    for name in scanned.rows:
        assert name in html
    assert len(re.findall(r'<a class="video-link" href="#v-[0-9a-f]{16}"', html)) == 3
    assert html.count('<section class="video"') == 3
    assert EVIL_URI not in html  # another run: not in this report


def test_report_command_writes_a_date_range(
    scanned: Scanned, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    today = dt.datetime.now(dt.timezone.utc).date()
    out = tmp_path / "r" / "report.html"
    args = ["report", "--warehouse", scanned.warehouse, "--faces", scanned.faces]
    assert main([*args, "--out", str(out), "--since", "today"]) == 0
    html = out.read_text()
    assert html.count('<section class="video"') == 4  # every row scanned today
    assert f"[{today.isoformat()}T00:00:00+00:00, +inf)" in html
    assert "&lt;script&gt;alert(&#34;uri&#34;)" in html and "<script" not in html
    # The window reads as scan's: [since, until), so yesterday's report has none of today.
    assert main([*args, "--out", str(out), "--since", "yesterday", "--until", "today"]) == 0
    html = out.read_text()
    assert '<section class="video"' not in html
    yesterday = (today - dt.timedelta(days=1)).isoformat()
    assert (  # not "no runs in the warehouse": there are, outside this window
        f"No scan runs for videos scanned in [{yesterday}T00:00:00+00:00,"
        f" {today.isoformat()}T00:00:00+00:00) (UTC)."
    ) in html
    tomorrow = (today + dt.timedelta(days=1)).isoformat()
    assert main([*args, "--out", str(out), "--since", str(today), "--until", tomorrow]) == 0
    assert out.read_text().count('<section class="video"') == 4
    capsys.readouterr()
    assert main([*args, "--out", str(out), "--since", "today", "--until", "today"]) == 2
    assert "the window is empty" in capsys.readouterr().err
    assert main([*args, "--out", str(out), "--run-id", RUN_ID, "--since", "today"]) == 2
    assert main([*args, "--out", str(out), "--run-id", "no-such-run"]) == 2


def test_report_says_the_list_was_cut_only_when_rows_were_left_out(
    browser: ScanBrowser, scanned: Scanned, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(webui, "REPORT_MAX_ROWS", 4)  # exactly the warehouse's rows
    html = render_report(browser, max_videos=1)
    assert '<h2 id="videos">Videos (4)</h2>' in html
    monkeypatch.setattr(webui, "REPORT_MAX_ROWS", 3)
    html = render_report(browser, max_videos=1)
    assert '<h2 id="videos">Videos (3, list cut at that many)</h2>' in html
    assert html.count('<td class="uri">') == 3


def test_report_of_a_day_lists_the_run_of_its_videos_that_started_the_day_before(
    tmp_path: Path,
) -> None:
    url = f"duckdb://{tmp_path}/scans.duckdb"
    started = dt.datetime(2026, 12, 1, 23, 59, tzinfo=dt.timezone.utc)
    with DuckDBWarehouse(url) as wh:
        wh.ensure_schema()
        wh.start_run("late-run", "scan", "{}", "v1")
        wh._execute("UPDATE scan_runs SET started_at = ? WHERE run_id = 'late-run'", [started])
        wh.finish_run("late-run", "succeeded", {"scored": 1}, None)
        scanned_at = (started + dt.timedelta(minutes=5)).timestamp()  # on 2 December
        wh.upsert_scans([make_scan(video_id="a", run_id="late-run", scanned_at=scanned_at)])
    day = TimeWindow(
        dt.datetime(2026, 12, 2, tzinfo=dt.timezone.utc),
        dt.datetime(2026, 12, 3, tzinfo=dt.timezone.utc),
    )
    html = render_report(ScanBrowser(url, str(tmp_path / "faces")), window=day)
    assert '<h2 id="videos">Videos (1)</h2>' in html
    assert '<a class="run-link" href="#videos">late-run</a>' in html
    assert "No scan runs" not in html


# ---------------------------------------------------------------- `dfscan ui` flags
@pytest.fixture
def empty_scan(tmp_path: Path) -> list[str]:
    """--warehouse and --faces of a scan that wrote nothing yet: a DuckDB file with no
    scans and an empty faces folder, enough for `dfscan ui` to get as far as listening."""
    import duckdb

    duckdb.connect(str(tmp_path / "scans.duckdb")).close()
    (tmp_path / "faces").mkdir()
    return ["--warehouse", f"duckdb://{tmp_path}/scans.duckdb", "--faces", str(tmp_path / "faces")]


def test_a_warehouse_a_scan_holds_is_one_line_for_report_and_a_503_page(
    empty_scan: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A scan holds its DuckDB file from start to end: `dfscan report` then says so in
    one line (it raised DuckDB's IOException, a traceback), the UI with a 503 page."""
    from tests.test_faults import duckdb_held_open

    warehouse = empty_scan[1]
    with duckdb_held_open(Path(warehouse.removeprefix("duckdb://"))) as holder:
        assert main(["report", *empty_scan, "--out", str(tmp_path / "r.html")]) == 1
        locked = f"warehouse {warehouse} is locked by another process (pid {holder})"
        assert capsys.readouterr().err == f"dfscan: error: {locked}\n"
        resp = create_app(ScanBrowser(warehouse, str(tmp_path))).test_client().get("/")
        assert resp.status_code == 503
        assert locked in resp.get_data(as_text=True)


@pytest.mark.parametrize("port", ["-1", "65536", "70000"])
def test_a_port_outside_0_to_65535_is_an_argparse_error(
    port: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["ui", "--port", port])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err == f"dfscan: error: argument --port: must be within [0, 65535], got {port}\n"


def test_a_port_in_use_is_one_line_and_no_banner(
    empty_scan: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        code = _exit_code(["ui", *empty_scan, "--port", str(port)])
    assert code == 2
    err = capsys.readouterr().err
    assert err == f"dfscan: error: cannot listen on 127.0.0.1:{port}: Address already in use\n"


def test_a_host_it_cannot_listen_on_is_one_line_and_no_banner(
    empty_scan: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # 192.0.2.1 is TEST-NET-1 (RFC 5737): on no interface, and no DNS lookup to wait for.
    argv = ["ui", *empty_scan, "--host", "192.0.2.1", "--port", "8000"]
    assert _exit_code(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("dfscan: error: cannot listen on 192.0.2.1:8000: ")
    assert err.count("\n") == 1  # and no "dfscan ui: http://..." banner before it


@pytest.mark.parametrize("command", ["ui", "report"])
def test_a_faces_path_that_names_nothing_is_refused_unless_it_is_the_default(
    command: str,
    empty_scan: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # ui: an address it cannot listen on, so a missed check ends at once, not serving.
    rest = ["--out", str(tmp_path / "r.html")]
    if command == "ui":
        rest = ["--host", "192.0.2.1", "--port", "8000"]
    typo = [*empty_scan[:2], "--faces", str(tmp_path / "facse")]
    assert _exit_code([command, *typo, *rest]) == 2
    err = capsys.readouterr().err
    where = tmp_path / "facse"
    assert err == (
        f"dfscan: error: no face shards at {where}: nothing is there (give a scan's OUT/faces)\n"
    )
    if command == "report":  # the default (./out/faces) may be absent: said, not refused
        monkeypatch.chdir(tmp_path)
        assert main([command, *empty_scan[:2], *rest]) == 0
        assert "no face shards at out/faces: nothing is there" in capsys.readouterr().err


def _exit_code(argv: list[str]) -> int | str | None:
    """`main`'s return, or the code werkzeug or argparse exits with."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


# ---------------------------------------------------------------- headless Chromium
def _chromium() -> tuple[str, str]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.skip("chromium/chromedriver not found: apt-get install chromium chromium-driver")
    return chromium, driver


@pytest.fixture(scope="module")
def served(browser: ScanBrowser) -> Iterator[str]:
    """The app on a free loopback port, in a thread, for the browser."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, create_app(browser), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def chrome() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = _chromium()
    profile = tempfile.mkdtemp(prefix="dfscan-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1280,900",
        "--hide-scrollbars",
    ):
        opts.add_argument(arg)
    driver = webdriver.Chrome(options=opts, service=Service(driver_path))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


LOADED_THUMBS_JS = """
return Array.from(document.querySelectorAll('img.thumb'))
    .map(img => img.complete ? img.naturalWidth : -1);
"""


def test_browser_clicks_from_runs_to_a_video_and_sees_faces_and_chart(
    chrome: Any, served: str, scanned: Scanned, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    chrome.get(served + "/")
    assert chrome.title.startswith("Scan runs")
    chrome.find_element(By.LINK_TEXT, RUN_ID).click()
    WebDriverWait(chrome, 10).until(lambda d: "/videos" in d.current_url)
    assert len(chrome.find_elements(By.CSS_SELECTOR, "a.video-link")) == 3
    chrome.find_element(By.PARTIAL_LINK_TEXT, "hamilton_clip.mp4").click()
    WebDriverWait(chrome, 10).until(lambda d: "/video/" in d.current_url)
    widths = WebDriverWait(chrome, 15).until(
        lambda d: (w := d.execute_script(LOADED_THUMBS_JS)) and all(x >= 0 for x in w) and w
    )
    row = scanned.rows["hamilton_clip.mp4"]
    assert len(widths) == min(row["faces"], 64) and all(w > 0 for w in widths)
    lengths = chrome.execute_script(
        "return Array.from(document.querySelectorAll('svg.chart path'))"
        ".map(p => p.getTotalLength());"
    )
    assert len(lengths) == row["tracks"] and max(lengths) > 0
    height = chrome.execute_script("return document.documentElement.scrollHeight")
    chrome.set_window_size(1280, min(int(height) + 40, 2400))
    shot = DOCS_SCREENSHOT if os.environ.get("DFSCAN_UPDATE_SCREENSHOT") else tmp_path / "ui.png"
    assert chrome.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    chrome.set_window_size(1280, 900)


def test_browser_renders_the_report_file_with_inline_thumbnails(
    chrome: Any, browser: ScanBrowser, scanned: Scanned, tmp_path: Path
) -> None:
    report = tmp_path / "report.html"
    report.write_text(render_report(browser, run_id=RUN_ID))
    chrome.get(report.as_uri())
    widths = chrome.execute_script(LOADED_THUMBS_JS)
    assert widths and all(w > 0 for w in widths)
    assert chrome.execute_script("return document.querySelectorAll('svg.chart path').length") > 0
