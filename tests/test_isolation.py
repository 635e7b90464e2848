"""Crash and hang isolation: a decoder that dies or hangs costs one video, not the run.

A real decoder crash cannot be produced on demand, so these tests use the worker's
test-only hook (``DFSCAN_TEST_FAULTS``): it makes the worker ``os.abort()``, read
address 0, or sleep forever on a URI with a given mark, exactly where a decoder bug
would strike (inside the worker, on that video).
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from operators.detect_faces import cpu_threads
from operators.extract_faces import FaceExtractor
from operators.isolation import FAULTS_ENV, loads_record
from operators.list_videos import VideoHasher
from pipelines.config import CropConfig, DetectorConfig, LimitsConfig, SamplingConfig
from schemas.records import DetectorInfo, VideoFaces, VideoFile, VideoRef, VideoStatus
from tests.media import encode_clip, noise_frames
from tests.processes import TAG_ENV, tagged_processes


def extractor(workers: int = 1, **limits: object) -> FaceExtractor:
    return FaceExtractor(
        SamplingConfig.parse("uniform:2"),
        DetectorConfig.build("scrfd-500m"),
        CropConfig(size=224, scale=1.3),
        LimitsConfig(**limits),  # type: ignore[arg-type]
        workers=workers,
    )


def ref(path: Path) -> VideoRef:
    return VideoHasher(1 << 30).hash_one(VideoFile(str(path), path.stat().st_size))


@pytest.fixture()
def clips(tmp_path: Path) -> dict[str, VideoRef]:
    names = ["a.mp4", "fault-abort.mp4", "b.mp4", "fault-segv.mp4", "fault-hang.mp4", "c.mp4"]
    out = {}
    for seed, name in enumerate(names):
        out[name] = ref(encode_clip(tmp_path / name, noise_frames(6, (64, 48), seed)))
    return out


@pytest.fixture()
def faults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FAULTS_ENV, "abort=fault-abort,segv=fault-segv,hang=fault-hang")


def worker_pid(ex: FaceExtractor) -> int:
    (worker,) = ex._pool
    assert worker._proc is not None
    return worker._proc.pid


def test_an_aborting_decoder_costs_one_video_and_the_worker_is_replaced(clips, faults):
    ex = extractor()
    ex.setup()
    try:
        first_pid = worker_pid(ex)
        out = ex.process_batch([clips["a.mp4"], clips["fault-abort.mp4"], clips["b.mp4"]])
        assert [o.status for o in out] == [
            VideoStatus.NO_FACE,
            VideoStatus.DECODE_ERROR,
            VideoStatus.NO_FACE,
        ]
        assert out[1].error == "decoder crashed (signal 6)"
        assert out[1].ref == clips["fault-abort.mp4"] and out[1].detector == out[0].detector
        assert ex.workers_started == 2 and worker_pid(ex) != first_pid
    finally:
        ex.teardown()


def test_a_segfaulting_decoder_is_reported_with_its_signal(clips, faults):
    with extractor() as ex:
        out = ex.process_batch([clips["fault-segv.mp4"], clips["c.mp4"]])
    assert [o.status for o in out] == [VideoStatus.DECODE_ERROR, VideoStatus.NO_FACE]
    assert out[0].error == "decoder crashed (signal 11)"


def test_a_hung_decoder_is_killed_at_the_limit_and_the_scan_goes_on(clips, faults):
    ex = extractor(timeout_s=1.0)
    ex.setup()
    try:
        hung_pid = worker_pid(ex)
        t0 = time.monotonic()
        hung = ex.extract(clips["fault-hang.mp4"])
        elapsed = time.monotonic() - t0
        assert hung.status == VideoStatus.TIMEOUT
        assert "decoder hung" in (hung.error or "")
        assert 1.0 <= elapsed < 1.0 + 2.0 + 2.0  # limit + kill grace + slack
        assert not Path(f"/proc/{hung_pid}").exists()  # killed and reaped
        assert ex.extract(clips["a.mp4"]).status == VideoStatus.NO_FACE
        assert ex.workers_started == 2
    finally:
        ex.teardown()


def test_one_worker_serves_every_video_while_none_crashes(clips):
    """The detector is loaded once per worker: one worker process, one start handshake
    (which is sent after ``setup()`` loaded the detector), for many videos."""
    with extractor() as ex:
        pid = worker_pid(ex)
        names = ["a.mp4", "b.mp4", "c.mp4", "a.mp4"]
        out = ex.process_batch([clips[n] for n in names])
        assert worker_pid(ex) == pid and ex.workers_started == 1
    assert all(o.status == VideoStatus.NO_FACE and o.frames_sampled == 2 for o in out)


def test_isolated_and_in_process_give_the_same_record(clips):
    with extractor() as isolated, extractor(isolate=False) as in_process:
        a = isolated.extract(clips["a.mp4"])
        b = in_process.extract(clips["a.mp4"])
    assert in_process.workers_started == 0
    strip = {"stage_seconds": {}}
    assert dataclasses.replace(a, **strip) == dataclasses.replace(b, **strip)


def test_two_workers_serve_two_videos_at_once_and_split_the_cores(
    clips, faults, monkeypatch: pytest.MonkeyPatch
):
    """The local runner's parallelism: one extractor, two worker processes, one per
    calling thread; each worker gets half the cores; a crash in one costs one video."""
    tag = uuid.uuid4().hex
    monkeypatch.setenv(TAG_ENV, tag)
    names = ["a.mp4", "b.mp4", "fault-abort.mp4", "c.mp4", "a.mp4", "b.mp4"]
    with extractor(workers=2) as ex, extractor(isolate=False) as in_process:
        assert ex.resources.threads == 2 and in_process.resources.threads == 1
        pids = {w._proc.pid for w in ex._pool}
        assert sorted(pids) == sorted(pid for pid, _ in tagged_processes(tag)) and len(pids) == 2
        share = f"OMP_NUM_THREADS={max(1, cpu_threads() // 2)}".encode()
        for pid in pids:  # ONNX Runtime in each worker takes its half of the cores
            assert share in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        with ThreadPoolExecutor(2) as pool:
            out = list(pool.map(ex.extract, [clips[n] for n in names]))
        expected = [in_process.extract(clips[n]) for n in names if "fault" not in n]
        assert ex.workers_started == 3  # two, and one replacing the aborted one
    strip = {"stage_seconds": {}}
    statuses = [o.status for o in out]
    assert (
        statuses
        == [VideoStatus.NO_FACE] * 2 + [VideoStatus.DECODE_ERROR] + [VideoStatus.NO_FACE] * 3
    )
    good = [dataclasses.replace(o, **strip) for o in out if o.status == VideoStatus.NO_FACE]
    assert good == [dataclasses.replace(e, **strip) for e in expected]
    assert tagged_processes(tag) == []


def test_the_fault_hook_does_nothing_in_process(clips, faults):
    with extractor(isolate=False) as ex:
        assert ex.extract(clips["fault-abort.mp4"]).status == VideoStatus.NO_FACE


def test_teardown_leaves_no_worker_process(clips, monkeypatch: pytest.MonkeyPatch):
    tag = uuid.uuid4().hex
    monkeypatch.setenv(TAG_ENV, tag)
    ex = extractor()
    ex.setup()
    ex.extract(clips["a.mp4"])
    assert [pid for pid, _ in tagged_processes(tag)] == [worker_pid(ex)]  # the probe sees it
    ex.teardown()
    assert tagged_processes(tag) == []


def test_a_worker_exits_when_its_parent_goes_away(clips):
    ex = extractor()
    ex.setup()
    (worker,) = ex._pool
    assert worker._proc is not None and worker._conn is not None
    proc = worker._proc
    worker._conn.close()  # what the kernel does to the socket when the parent dies
    assert proc.wait(timeout=10) == 0
    worker._proc = worker._conn = None
    ex.teardown()


def test_a_worker_whose_parent_leaves_mid_video_exits_quietly(
    clips, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # Ctrl-C or a kill of the scan while a worker decodes: its answer has nowhere to go.
    # It must exit 0 without a traceback on the terminal the scan shared with it.
    monkeypatch.setenv(FAULTS_ENV, "slow=fault-slow")
    slow = ref(encode_clip(tmp_path / "fault-slow.mp4", noise_frames(6, (64, 48), 9)))
    ex = extractor()
    ex.setup()
    (worker,) = ex._pool
    assert worker._proc is not None and worker._conn is not None
    proc = worker._proc
    worker._conn.send(slow)
    worker._conn.close()  # gone before the answer (the video takes 2 s more)
    assert proc.wait(timeout=30) == 0
    worker._proc = worker._conn = None
    ex.teardown()


def test_the_parent_unpickles_records_only():
    info = DetectorInfo("scrfd-500m", "0" * 64)
    video = VideoFaces(VideoRef("id", "file:///x.mp4", 1), VideoStatus.NO_FACE, info, "uniform:2")
    assert loads_record(pickle.dumps(("result", video))) == ("result", video)

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch /tmp/dfscan-pwned",))

    with pytest.raises(pickle.UnpicklingError, match="forbidden type"):
        loads_record(pickle.dumps(("result", Evil())))


def test_a_process_wide_socket_timeout_does_not_break_the_worker_link(clips):
    """Ray and HTTP clients call socket.setdefaulttimeout(); sockets made afterwards are
    non-blocking underneath, which a Connection cannot read (EAGAIN)."""
    import socket

    before = socket.getdefaulttimeout()
    socket.setdefaulttimeout(5.0)
    try:
        with extractor() as ex:
            out = ex.process_batch([clips["a.mp4"], clips["b.mp4"]])
    finally:
        socket.setdefaulttimeout(before)
    assert [o.status for o in out] == [VideoStatus.NO_FACE, VideoStatus.NO_FACE]
