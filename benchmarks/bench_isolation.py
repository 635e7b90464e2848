"""What crash/hang isolation costs: decode+detect of the real videos, in-process vs in a
decode worker process (``LimitsConfig.isolate``).

    python benchmarks/bench_isolation.py [--frames uniform:32] [--rounds 3]

Reports setup time (detector load; for isolation also the worker's interpreter start)
and the wall time of extracting every video, per mode, best of ``--rounds`` (the modes
alternate so background load hits both alike). On a shared machine the detector's time
swings more between rounds than isolation costs, so isolation's own cost is also given
as the wall time spent outside decode/detect/crop (IPC, pickling, process handoff),
which the detector's noise does not reach.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from operators.extract_faces import FaceExtractor  # noqa: E402
from operators.list_videos import VideoHasher  # noqa: E402
from pipelines.config import (  # noqa: E402
    CropConfig,
    DetectorConfig,
    LimitsConfig,
    SamplingConfig,
    shared_dir,
)
from schemas.records import VideoFile  # noqa: E402


def run(isolate: bool, refs: list, frames: str) -> tuple[float, float, list[str], float]:
    """(setup s, wall s of all videos, statuses, wall s outside decode/detect/crop)."""
    ex = FaceExtractor(
        SamplingConfig.parse(frames),
        DetectorConfig.build("scrfd-500m"),
        CropConfig(size=224, scale=1.3),
        LimitsConfig(isolate=isolate),
    )
    t0 = time.perf_counter()
    ex.setup()
    setup_s = time.perf_counter() - t0
    statuses = []
    staged = 0.0
    t = time.perf_counter()
    try:
        for ref in refs:
            out = ex.extract(ref)
            statuses.append(out.status.value)
            staged += sum(out.stage_seconds.values())
    finally:
        elapsed = time.perf_counter() - t
        ex.teardown()
    return setup_s, elapsed, statuses, elapsed - staged


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--videos", default=str(shared_dir() / "data" / "videos" / "real"))
    p.add_argument("--frames", default="uniform:32")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    files = sorted(p for p in Path(args.videos).iterdir() if p.is_file())
    hasher = VideoHasher(1 << 40)
    refs = [hasher.hash_one(VideoFile(str(f), f.stat().st_size)) for f in files]
    results: dict[bool, list[tuple[float, float, list[str], float]]] = {False: [], True: []}
    for _ in range(args.rounds):
        for isolate in (False, True):
            results[isolate].append(run(isolate, refs, args.frames))
    outcomes = {tuple(r[2]) for runs in results.values() for r in runs}
    assert len(outcomes) == 1, "isolated and in-process runs gave different statuses"
    print(f"{len(refs)} videos, {args.frames}, best of {args.rounds} rounds")
    best = {}
    for isolate, runs in results.items():
        setup = min(r[0] for r in runs)
        total = min(r[1] for r in runs)
        best[isolate] = total
        med = statistics.median(r[1] for r in runs)
        name = "isolated  " if isolate else "in-process"
        outside = statistics.median(r[3] for r in runs) / len(refs) * 1000
        print(
            f"{name}: setup {setup:.2f} s, videos {total:.2f} s (median {med:.2f} s),"
            f" {outside:.1f} ms per video outside decode/detect/crop"
        )
    diffs = [
        (iso[3] - inp[3]) / len(refs)
        for inp, iso in zip(results[False], results[True], strict=True)
    ]
    print(
        f"wall: {best[True] - best[False]:+.2f} s over {len(refs)} videos"
        f" ({(best[True] / best[False] - 1) * 100:+.1f} %, best vs best);"
        f" isolation's own cost: {statistics.median(diffs) * 1000:+.1f} ms per video"
        " (time outside the stages, median of paired rounds)"
    )


if __name__ == "__main__":
    main()
