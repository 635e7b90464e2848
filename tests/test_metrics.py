"""Scan metrics: one vocabulary, a registry per scan, textfile and push that never fail a scan."""

from __future__ import annotations

import json
import logging
import pickle
import socket
import time
from pathlib import Path

import fsspec
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from operators.list_videos import uri_video_id
from operators.metrics import (
    BYTES_READ,
    FACES_DETECTED,
    FACES_SCORED,
    FRAMES_DECODED,
    VIDEOS,
    ScanMetrics,
)
from pipelines.scan import record_row_metrics
from schemas.records import VideoStatus
from tests.test_write_warehouse import make_scan


def samples(text: str | bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Parsed exposition as {(sample name, sorted labels): value}."""
    if isinstance(text, bytes):
        text = text.decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def make_busy_metrics() -> ScanMetrics:
    """A scan that finished 3 videos (2 scored, 1 without a face) and read some data."""
    m = ScanMetrics()
    m.video_done("scored")
    m.video_done(VideoStatus.SCORED)
    m.video_done("no_face")
    m.add_frames(96)
    m.add_faces_detected(60)
    m.add_faces_scored(58)
    m.add_bytes(3_000_000)
    return m


def test_counters_show_in_exposition_with_their_values_and_labels() -> None:
    got = samples(make_busy_metrics().exposition())
    assert got[("dfscan_videos_total", (("status", "scored"),))] == 2
    assert got[("dfscan_videos_total", (("status", "no_face"),))] == 1
    assert got[("dfscan_frames_decoded_total", ())] == 96
    assert got[("dfscan_faces_detected_total", ())] == 60
    assert got[("dfscan_faces_scored_total", ())] == 58
    assert got[("dfscan_bytes_read_total", ())] == 3_000_000


def test_every_status_is_exposed_from_the_start_at_zero() -> None:
    got = samples(ScanMetrics().exposition())
    for status in VideoStatus:
        assert got[("dfscan_videos_total", (("status", status.value),))] == 0


def test_unknown_status_is_refused_rather_than_a_new_series() -> None:
    with pytest.raises(ValueError):
        ScanMetrics().video_done("fake")


def test_stage_histogram_puts_observations_in_the_right_buckets() -> None:
    m = ScanMetrics()
    m.observe_stage("decode", 0.002)
    m.observe_stage("decode", 30.0)
    m.observe_stage("score", 0.5)
    got = samples(m.exposition())
    decode = (("stage", "decode"),)
    assert got[("dfscan_stage_seconds_count", decode)] == 2
    assert got[("dfscan_stage_seconds_sum", decode)] == pytest.approx(30.002)
    assert got[("dfscan_stage_seconds_bucket", (("le", "0.001"), ("stage", "decode")))] == 0
    assert got[("dfscan_stage_seconds_bucket", (("le", "0.0025"), ("stage", "decode")))] == 1
    assert got[("dfscan_stage_seconds_bucket", (("le", "10.0"), ("stage", "decode")))] == 1
    assert got[("dfscan_stage_seconds_bucket", (("le", "600.0"), ("stage", "decode")))] == 2
    assert got[("dfscan_stage_seconds_count", (("stage", "score"),))] == 1


def test_build_info_and_gauges() -> None:
    before = time.time()
    m = ScanMetrics()
    m.set_info(model_version="resnet18-v3", detector="scrfd-500m")
    m.set_info(code_version="abc123")  # adds to, does not replace, the earlier labels
    m.set_in_flight(4)
    got = samples(m.exposition())
    info = (
        ("code_version", "abc123"),
        ("detector", "scrfd-500m"),
        ("model_version", "resnet18-v3"),
    )
    assert got[("dfscan_build_info", info)] == 1
    assert got[("dfscan_videos_in_flight", ())] == 4
    assert before <= got[("dfscan_run_start_timestamp_seconds", ())] <= time.time()
    assert got[("dfscan_last_success_timestamp_seconds", ())] == 0

    m.mark_success()
    got = samples(m.exposition())
    assert got[("dfscan_last_success_timestamp_seconds", ())] >= before


def test_each_scan_counts_in_its_own_registry() -> None:
    first, second = ScanMetrics(), ScanMetrics()
    first.add_frames(5)
    assert second.snapshot()[FRAMES_DECODED] == 0
    assert REGISTRY.get_sample_value("dfscan_frames_decoded_total") is None


def test_write_textfile_writes_parseable_text_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "textfile" / "dfscan.prom"  # parent does not exist yet
    m = make_busy_metrics()
    m.write_textfile(str(target))
    got = samples(target.read_text())
    assert got[("dfscan_videos_total", (("status", "scored"),))] == 2
    assert [p.name for p in target.parent.iterdir()] == ["dfscan.prom"]

    m.add_frames(4)
    m.write_textfile(str(target))  # replaces the earlier file
    assert samples(target.read_text())[("dfscan_frames_decoded_total", ())] == 100


def test_write_textfile_goes_through_fsspec_urls() -> None:
    uri = "memory://dfscan-test-metrics/node/dfscan.prom"
    make_busy_metrics().write_textfile(uri)
    fs = fsspec.filesystem("memory")
    try:
        with fsspec.open(uri, "rt") as f:
            got = samples(f.read())
        assert got[("dfscan_faces_scored_total", ())] == 58
        assert fs.ls("/dfscan-test-metrics/node", detail=False) == [
            "/dfscan-test-metrics/node/dfscan.prom"
        ]
    finally:
        fs.rm("/dfscan-test-metrics", recursive=True)


def _dead_port() -> int:
    """A loopback port nothing listens on: bound, read, released."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_push_to_a_dead_port_returns_false_quickly_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"http://127.0.0.1:{_dead_port()}"
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="operators.metrics"):
        ok = make_busy_metrics().push(url, job="dfscan", grouping_key={"run_id": "run-1"})
    assert ok is False
    assert time.monotonic() - start < 2.0
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert url in warnings[0].getMessage() and "\n" not in warnings[0].getMessage()


def test_push_to_a_malformed_gateway_url_returns_false() -> None:
    assert ScanMetrics().push("http://127.0.0.1:notaport", "dfscan", {"run_id": "r"}) is False


def test_merge_of_two_worker_snapshots_adds_up() -> None:
    worker_a, worker_b = make_busy_metrics(), ScanMetrics()
    worker_b.video_done("decode_error")
    worker_b.video_done("scored")
    worker_b.add_frames(4)
    worker_b.add_bytes(10)

    driver = ScanMetrics()
    for worker in (worker_a, worker_b):
        # Snapshots cross process boundaries: they must survive pickle and JSON.
        snap = pickle.loads(pickle.dumps(worker.snapshot()))
        driver.merge(json.loads(json.dumps(snap)))

    total = driver.snapshot()
    assert total[VIDEOS] == {
        "scored": 3,
        "no_face": 1,
        "decode_error": 1,
        "unsupported": 0,
        "timeout": 0,
        "too_large": 0,
    }
    assert total[FRAMES_DECODED] == 100
    assert total[FACES_DETECTED] == 60
    assert total[FACES_SCORED] == 58
    assert total[BYTES_READ] == 3_000_010
    got = samples(driver.exposition())
    assert got[("dfscan_videos_total", (("status", "scored"),))] == 3


def test_verdicts_and_fake_probability_are_counted_per_model_version() -> None:
    m = ScanMetrics()
    m.observe_verdict("m1", 0.93, "FAKE")
    m.observe_verdict("m1", 0.05, "REAL")
    m.observe_verdict("m2", 0.55, "FAKE")
    got = samples(m.exposition())
    assert got[("dfscan_verdicts_total", (("label", "FAKE"), ("model_version", "m1")))] == 1
    assert got[("dfscan_verdicts_total", (("label", "REAL"), ("model_version", "m1")))] == 1
    assert got[("dfscan_fake_probability_count", (("model_version", "m1"),))] == 2
    assert got[("dfscan_fake_probability_sum", (("model_version", "m1"),))] == pytest.approx(0.98)
    m1 = (("le", "0.1"), ("model_version", "m1"))
    assert got[("dfscan_fake_probability_bucket", m1)] == 1
    m2 = (("le", "0.5"), ("model_version", "m2"))
    assert got[("dfscan_fake_probability_bucket", m2)] == 0


def test_failure_and_backlog_gauges() -> None:
    m = ScanMetrics()
    m.set_backlog(12)
    got = samples(m.exposition())
    assert got[("dfscan_last_failure_timestamp_seconds", ())] == 0
    assert got[("dfscan_videos_backlog", ())] == 12
    before = time.time()
    m.mark_failure()
    assert samples(m.exposition())[("dfscan_last_failure_timestamp_seconds", ())] >= before


def test_bytes_read_leave_out_files_whose_bytes_were_never_read() -> None:
    """A file over --max-bytes is listed, not read: its size is no bytes read."""
    m = ScanMetrics()
    record_row_metrics(m, make_scan(video_id="a" * 64, size_bytes=1_000))
    big = "file:///up/huge.mp4"
    record_row_metrics(
        m,
        make_scan(
            video_id=uri_video_id(big),
            uri=big,
            size_bytes=50_000_000_000,
            status=VideoStatus.TOO_LARGE,
            fake_probability=None,
            label=None,
            faces=0,
            frames_sampled=0,
        ),
    )
    got = samples(m.exposition())
    assert got[("dfscan_bytes_read_total", ())] == 1_000
    assert got[("dfscan_videos_total", (("status", "too_large"),))] == 1


@pytest.mark.parametrize("interval", ["1e300", "inf", "nan", "0", "-1"])
def test_a_push_interval_the_push_thread_cannot_wait_is_a_usage_error(
    interval: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipelines.cli import main

    argv = ["scan", str(tmp_path / "in"), "--out", str(tmp_path / "out")]
    argv += ["--pushgateway", "http://127.0.0.1:9", "--push-interval", interval]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("dfscan: error: argument --push-interval:") and err.count("\n") == 1
