"""The machine's floors for a scan, as CPU seconds of one core, measured in the run.

A scan's stage floor is the work no pipeline can skip, spread over every core:

    (FFmpeg decode + detector x frames + classifier x faces) / cores

so each term must be what the work costs on *one* core. FFmpeg runs with ``-threads 1``
(its CPU time from rusage, net of its start-up); the detector and the classifier run with
one intra-op thread (ONNX Runtime and torch on more threads use more CPU seconds for the
same work, and the floor already divides by the cores). CPU time rather than wall time, so
a job sharing the machine does not move the floor.

The detector's cost depends on the frame's shape (SCRFD's input keeps the aspect ratio), so
it is measured per video, on frames the scan's own sampling picks from that video, and a
run's detector floor is the sum over videos of that cost times the frames it sampled.
"""

from __future__ import annotations

import dataclasses
import os
import resource
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipelines.config import DetectorConfig, LimitsConfig, SamplingConfig

SCORER_BATCHES = (16, 32, 64, 128)


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def ffmpeg_cpu(args: list[str]) -> float:
    """CPU seconds of one ffmpeg run (user + system, from its rusage)."""
    before = _children_cpu()
    subprocess.run(["ffmpeg", *args], check=True, stdout=subprocess.DEVNULL)
    return _children_cpu() - before


def ffmpeg_startup() -> float:
    """What an ffmpeg process costs before it reads a byte (subtracted per file)."""
    return min(ffmpeg_cpu(["-v", "error", "-version"]) for _ in range(3))


def ffmpeg_floors(videos: list[Path]) -> dict[str, float]:
    """Single-thread FFmpeg CPU seconds to decode every frame, and keyframes only."""
    startup = ffmpeg_startup()
    full = key = 0.0
    for v in videos:
        base = ["-v", "error", "-threads", "1"]
        tail = ["-i", str(v), "-map", "0:v:0", "-f", "null", "-"]
        full += max(ffmpeg_cpu([*base, *tail]) - startup, 0.0)
        key += max(ffmpeg_cpu([*base, "-skip_frame", "nokey", *tail]) - startup, 0.0)
    return {"ffmpeg_full_s": full, "ffmpeg_keyframes_s": key, "ffmpeg_startup_s": startup}


@contextmanager
def one_thread() -> Iterator[None]:
    """ONNX Runtime sessions made inside read OMP_NUM_THREADS (detect_faces.cpu_threads)."""
    before = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = before


def detector_floor_per_video(
    detector: DetectorConfig, videos: list[Path], frames_per_video: int = 4
) -> dict[str, float]:
    """{video path: detector CPU seconds per frame} on one thread, from ``frames_per_video``
    frames that uniform sampling picks in each video (decoded first, not timed)."""
    from operators.decode_frames import FrameDecoder
    from operators.detect_faces import build_detector

    with one_thread():
        det = build_detector(detector)
        det.load()
    decoder = FrameDecoder(
        SamplingConfig.parse(f"uniform:{frames_per_video}"),
        dataclasses.replace(LimitsConfig(), isolate=False),
        threads=1,
    )
    out: dict[str, float] = {}
    for video in videos:
        with decoder.open(str(video), time.monotonic() + 300) as opened:
            images = [f.image for f in opened.frames]
        if not images:
            continue
        det.detect_batch(images[:1])  # warm-up: ORT allocates for a new input shape
        t0 = time.process_time()
        det.detect_batch(images)
        out[str(video)] = (time.process_time() - t0) / len(images)
    return out


def scorer_floor(checkpoint: str) -> tuple[float, int]:
    """(classifier CPU seconds per face on one thread, at the best batch size, that size)."""
    import numpy as np

    from operators.models.scorers import build_scorer

    scorer = build_scorer(checkpoint, num_threads=1)
    scorer.load()
    size = scorer.input_size
    rng = np.random.default_rng(0)
    best = (float("inf"), 0)
    for bs in SCORER_BATCHES:
        batch = rng.integers(0, 255, (bs, size, size, 3), dtype=np.uint8)
        scorer.predict(batch[:4])
        t0 = time.process_time()
        for _ in range(2):
            scorer.predict(batch)
        per = (time.process_time() - t0) / (2 * bs)
        best = min(best, (per, bs))
    return best
