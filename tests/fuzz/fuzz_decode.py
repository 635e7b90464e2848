"""atheris harness over the paths that parse bytes a scan did not make: video decode,
face-shard reading, and the JPEG crops inside shards.

    python tests/fuzz/fuzz_decode.py                       # 60 s, crashes -> tests/fuzz/crashes/
    python tests/fuzz/fuzz_decode.py -max_total_time=600   # any libFuzzer flag
    python tests/fuzz/fuzz_decode.py -seed=1 -runs=12000    # what CI runs (mostly reproducible)
    python tests/fuzz/fuzz_decode.py tests/fuzz/crashes/*   # replay saved inputs once

The growing corpus lives in ``tests/fuzz/corpus/`` (``DFSCAN_FUZZ_CORPUS`` to move it).

The first byte of an input picks the target, the rest is the file:
``0`` a video through ``FrameDecoder`` (limits, allow-lists, sampling, conversion);
``1`` a Parquet face shard through ``ShardFaceReader.read_part``; ``2`` a JPEG crop
through ``decode_crops``. A finding is anything but the failure each path promises:
``VideoError`` for decode, an Arrow/OS error or ``DamagedShard`` for a shard,
``ValueError`` for a crop;
a Python exception of another type, a native crash (SIGSEGV, SIGABRT), a hang
(``-timeout``) or a memory blow-up (``-rss_limit_mb``) is saved by libFuzzer under
``tests/fuzz/crashes/`` and should become a case of the hostile corpus.

Coverage: atheris instruments Python only. FFmpeg, Arrow and OpenCV are not built with
coverage, so guidance stops at the wrappers; the seed corpus (valid files of every
container and codec the scan accepts, written at start) is what makes mutations reach
deep into the native parsers.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

with atheris.instrument_imports(include=["operators", "pipelines", "schemas"]):
    import fsspec
    import pyarrow as pa
    import pyarrow.parquet as pq

    from operators.decode_frames import FrameDecoder
    from operators.errors import VideoError
    from operators.read_shards import DamagedShard, ShardFaceReader
    from operators.score_faces import decode_crops
    from pipelines.config import LimitsConfig, SamplingConfig
    from schemas.arrow import FACE_SHARD_SCHEMA

CRASHES = ROOT / "tests" / "fuzz" / "crashes"
CORPUS = ROOT / "tests" / "fuzz" / "corpus"
DECODE, SHARD, CROP = 0, 1, 2
# Small limits keep each input cheap; the allow-lists and checks are the real ones.
LIMITS = LimitsConfig(max_pixels=4096 * 4096, max_frames=20_000, timeout_s=10.0, isolate=False)
SAMPLINGS = [SamplingConfig.parse(s) for s in ("uniform:3", "fps:5", "keyframes")]
_fs = fsspec.filesystem("memory")


def fuzz_decode(data: bytes, policy: int) -> None:
    _fs.pipe("/fuzz/input", data)
    decoder = FrameDecoder(SAMPLINGS[policy % len(SAMPLINGS)], LIMITS, threads=1)
    try:
        with decoder.open("memory://fuzz/input", deadline=time.monotonic() + 10) as video:
            for frame in video.frames:
                assert frame.image.ndim == 3 and frame.image.shape[2] == 3
    except VideoError:
        pass  # the promised, typed refusal


def fuzz_shard(data: bytes) -> None:
    _fs.pipe("/fuzz/part.parquet", data)
    try:
        faces = ShardFaceReader().read_part("memory://fuzz/part.parquet", ["v"])
    except (pa.ArrowException, OSError, DamagedShard):
        return  # a damaged shard is refused, by Arrow or by our null check
    for crops in faces.values():
        fuzz_crops([c.jpeg for c in crops])


def fuzz_crops(jpegs: list[bytes]) -> None:
    with contextlib.suppress(ValueError):  # "not a decodable JPEG"
        decode_crops(jpegs, 64)


def test_one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    target, body = data[0] % 3, data[1:]
    if target == DECODE:
        fuzz_decode(body, data[0] // 3)
    elif target == SHARD:
        fuzz_shard(body)
    else:
        fuzz_crops([body])


# --- seeds ----------------------------------------------------------------------------


def write_seeds(folder: Path) -> None:
    """One valid input per container/codec the scan accepts, plus a shard and a JPEG."""
    import cv2
    import numpy as np

    from tests.media import encode_clip, noise_frames, write_gif

    folder.mkdir(parents=True, exist_ok=True)
    clips = {
        "h264.mp4": {},
        "hevc.mkv": {"codec": "libx265", "options": {"x265-params": "log-level=error"}},
        "vp9.webm": {"codec": "libvpx-vp9"},
        "mpeg4.avi": {"codec": "mpeg4"},
        "mjpeg.mov": {"codec": "mjpeg", "pix_fmt": "yuvj420p"},
        "mpeg2.ts": {"codec": "mpeg2video", "container_format": "mpegts"},
        "raw.h264": {"container_format": "h264"},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, kw) in enumerate(clips.items()):
            # 64 px: libx265 corrupts its heap on smaller frames (an encoder bug, seen here)
            frames = noise_frames(6, (64, 64), i)
            # bitexact: no muxing date or random segment id, the same seeds on every run
            path = encode_clip(
                Path(tmp) / name,
                frames,
                container_options={"fflags": "+bitexact"},
                **kw,  # type: ignore[arg-type]
            )
            (folder / f"seed-{name}").write_bytes(bytes([DECODE]) + path.read_bytes())
        gif = write_gif(Path(tmp) / "a.gif", n=3, size=(24, 16))
        (folder / "seed-anim.gif").write_bytes(bytes([DECODE]) + gif.read_bytes())
    ok, jpeg = cv2.imencode(".jpg", np.full((16, 16, 3), 128, np.uint8))
    assert ok
    (folder / "seed-crop.jpg").write_bytes(bytes([CROP]) + jpeg.tobytes())
    row = {
        "video_id": "v",
        "source_uri": "file:///v.mp4",
        "frame_index": 0,
        "pts_s": 0.0,
        "track_id": 0,
        "bbox": [0.0, 0.0, 8.0, 8.0],
        "landmarks": [1.0] * 10,
        "det_score": 0.9,
        "crop": jpeg.tobytes(),
        "crop_width": 16,
        "crop_height": 16,
        "crop_scale": 1.3,
        "sampling": "uniform:3",
        "detector": "scrfd-500m",
        "detector_sha256": "0" * 64,
        "run_id": "r",
    }
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([row, row], schema=FACE_SHARD_SCHEMA), buf)
    (folder / "seed-shard.parquet").write_bytes(bytes([SHARD]) + buf.getvalue())


class _Budget:
    """The run's time budget, kept here rather than by libFuzzer: libFuzzer ends a run
    with C ``exit()``, which with torch/Arrow/OpenCV thread pools loaded can deadlock in
    their native teardown (seen on a loaded 2-core box); ``os._exit`` cannot."""

    deadline: float | None = None
    max_runs: int | None = None
    started = time.monotonic()
    runs = 0


def fuzz_one(data: bytes) -> None:
    """What libFuzzer calls: one input, then stop cleanly when the budget is spent."""
    test_one_input(data)
    _Budget.runs += 1
    out_of_time = _Budget.deadline is not None and time.monotonic() > _Budget.deadline
    if out_of_time or (_Budget.max_runs is not None and _Budget.runs >= _Budget.max_runs):
        elapsed = time.monotonic() - _Budget.started
        print(f"Done {_Budget.runs} runs in {elapsed:.0f} second(s)", file=sys.stderr, flush=True)
        os._exit(0)


def replay(paths: list[str]) -> None:
    """Run saved inputs once each, in plain Python (no libFuzzer exit path): an exception
    prints its traceback and exits 1, a native crash kills the process with its signal."""
    outcome = {"code": 1}
    atexit.register(lambda: os._exit(outcome["code"]))  # skip native teardown, as above
    for path in paths:
        test_one_input(Path(path).read_bytes())
        print(f"ok {path}", flush=True)
    outcome["code"] = 0


def main(argv: list[str]) -> None:
    inputs = [a for a in argv[1:] if not a.startswith("-")]
    if inputs:
        replay(inputs)
        return
    args = [argv[0]]
    defaults = {
        "-max_total_time": "60",
        "-timeout": "60",  # seconds per input (decode has a 10 s deadline): longer = a hang
        "-rss_limit_mb": "3072",
        "-artifact_prefix": str(CRASHES) + os.sep,
        "-max_len": "262144",
    }
    flags = dict(defaults)
    flags.update(a.split("=", 1) for a in argv[1:] if a.startswith("-") and "=" in a)
    _Budget.deadline = time.monotonic() + float(flags.pop("-max_total_time"))
    if "-runs" in flags:  # kept here too, for the same reason as the time budget
        _Budget.max_runs = int(flags.pop("-runs"))
    args += [f"{k}={v}" for k, v in flags.items()]
    args += [a for a in argv[1:] if a.startswith("-") and "=" not in a]
    # libFuzzer grows the first corpus folder: kept between runs (git-ignored), so each
    # run starts where the last one got to; the seeds are (re)written into it.
    corpus = Path(os.environ.get("DFSCAN_FUZZ_CORPUS", str(CORPUS)))
    write_seeds(corpus)
    args.append(str(corpus))
    CRASHES.mkdir(parents=True, exist_ok=True)
    atheris.Setup(args, fuzz_one)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
