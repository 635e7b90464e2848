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


def ffmpeg_full(video: Path, keyframes: bool = False) -> float:
    """CPU seconds of ``ffmpeg -threads 1`` decoding the video stream (keyframes only)."""
    skip = ["-skip_frame", "nokey"] if keyframes else []
    base = ["-v", "error", "-threads", "1", *skip, "-i", str(video), "-map", "0:v:0"]
    return ffmpeg_cpu([*base, "-f", "null", "-"])


def ffmpeg_floors(videos: list[Path]) -> dict[str, float]:
    """Single-thread FFmpeg CPU seconds to decode every frame, and keyframes only, net of
    FFmpeg's start-up per file."""
    startup = ffmpeg_startup()
    full = sum(max(ffmpeg_full(v) - startup, 0.0) for v in videos)
    key = sum(max(ffmpeg_full(v, keyframes=True) - startup, 0.0) for v in videos)
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


def decode_cpu(videos: list[Path], sampling: str) -> float:
    """CPU seconds of the scan's own decoder (one FFmpeg thread, sampled frames converted
    to BGR as the scan does) over ``videos``: what decoding costs a core, which the
    scan's ``decode_s`` (wall time inside busy workers) overstates when cores are shared."""
    from operators.decode_frames import FrameDecoder

    decoder = FrameDecoder(
        SamplingConfig.parse(sampling), dataclasses.replace(LimitsConfig(), isolate=False), 1
    )
    total = 0.0
    for video in videos:
        t0 = time.process_time()
        with decoder.open(str(video), time.monotonic() + 300) as opened:
            for _ in opened.frames:
                pass
        total += time.process_time() - t0
    return total


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
