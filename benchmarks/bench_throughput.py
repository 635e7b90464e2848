"""Throughput against the machine's floors, every number measured in this run.

Corpus: the shared real videos plus generated 720p/1080p H.264/HEVC clips with short and
long GOPs (benchmarks/corpus.py). Floors (benchmarks/floors.py), CPU seconds of one core:
FFmpeg's single-thread full and keyframe-only decode of the same files, the detector on
each video's own frames and the classifier at its best batch size, one thread each. The
stage floor of a scan is (decode floor + detector x each video's frames + classifier x
faces) / cores; efficiency is that floor divided by the scan's wall time. Each scan runs
as its own ``dfscan scan`` process so that peak RSS is the whole process tree's (Ray
workers included), and its wall time includes the process's start-up: imports, model
loads, decode workers or Ray's cluster. That fixed cost is measured too, as the wall time
of the same command on one 1-second clip, and floor / (wall - fixed) shows what a scan
long enough to hide it would approach. It is an upper estimate: operators are set up side
by side and stages start when ready, so part of the fixed cost overlaps decoding in a
real scan, and the subtraction can then exceed 1. "decode CPU / ffmpeg full" is the scan's
decoder alone on one thread (benchmarks/floors.py::decode_cpu), CPU seconds against
CPU seconds.

    python benchmarks/bench_throughput.py --model artifacts/starter.pt \
        [--runners local,ray,beam] [--frames uniform:32,fps:1,keyframes] [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_load import make_clip  # noqa: E402
from benchmarks.corpus import build_corpus  # noqa: E402
from benchmarks.floors import (  # noqa: E402
    decode_cpu,
    detector_floor_per_video,
    ffmpeg_floors,
    scorer_floor,
)

CORES = len(os.sched_getaffinity(0))


def video_seconds(videos: list[Path]) -> float:
    import av

    total = 0.0
    for v in videos:
        with av.open(str(v)) as c:
            total += (c.duration or 0) / 1_000_000
    return total


def detector_floors(detector: str, videos: list[Path]) -> dict[str, float]:
    from pipelines.config import DetectorConfig

    return detector_floor_per_video(DetectorConfig.build(detector), videos)


class PeakRss:
    """Samples the summed RSS of a process and all its descendants every 50 ms."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.proc = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
                total = 0
                for p in procs:
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        continue
                self.peak = max(self.peak, total)
            except psutil.Error:
                return
            time.sleep(0.05)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def run_scan(corpus: Path, model: str, runner: str, frames: str, detector: str) -> dict:
    out = Path(tempfile.mkdtemp(prefix=f"dfscan-{runner}-"))
    cmd = [
        str(ROOT / ".venv" / "bin" / "dfscan") if (ROOT / ".venv").exists() else "dfscan",
        "scan",
        str(corpus),
        "--out",
        str(out),
        "--model",
        model,
        "--runner",
        runner,
        "--frames",
        frames,
        "--detector",
        detector,
        "--no-progress",
        "--run-id",
        "bench",
    ]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    rss = PeakRss(proc.pid)
    _, err = proc.communicate()
    wall = time.perf_counter() - t0
    peak = rss.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"{runner} {frames} failed: {err.strip().splitlines()[-1:]}")
    import duckdb

    con = duckdb.connect(str(out / "scans.duckdb"), read_only=True)
    videos, frames_n, faces, decode_s = con.execute(
        "SELECT count(*), sum(frames_sampled), sum(faces), sum(decode_s) FROM video_scans"
    ).fetchone()
    per_video = con.execute("SELECT uri, frames_sampled FROM video_scans").fetchall()
    con.close()
    shutil.rmtree(out, ignore_errors=True)
    return {
        "runner": runner,
        "frames": frames,
        "wall_s": wall,
        "videos": videos,
        "frames_n": int(frames_n or 0),
        "faces": int(faces or 0),
        "decode_s": float(decode_s or 0.0),
        "peak_rss_mb": peak / 2**20,
        "frames_by_video": {Path(u).name: int(n or 0) for u, n in per_video},
    }


def distinct_copies(videos: list[Path], copies: int) -> Path:
    """``copies`` of every video, each made distinct by a trailing MP4 ``free`` box (which
    demuxers skip), so that the scan's content-hash dedupe does not fold them into one."""
    folder = Path(tempfile.mkdtemp(prefix="dfscan-copies-"))
    for k in range(copies):
        for v in videos:
            dest = folder / f"{v.stem}-copy{k}.mp4"
            shutil.copyfile(v, dest)
            payload = f"dfscan benchmark copy {k}".encode()
            with dest.open("ab") as f:
                f.write(struct.pack(">I", 8 + len(payload)) + b"free" + payload)
    return folder


def run_length_scans(
    args: argparse.Namespace,
    videos: list[Path],
    floors: dict[str, float],
    det_by_name: dict[str, float],
    rows: list[dict],
    console: Any,
) -> list[dict]:
    """Efficiency against run length: the same scan over the corpus once and over
    ``--long-copies`` distinct copies of it, so the fixed start-up is shared by more work."""
    from rich.table import Table

    once = next((r for r in rows if r["runner"] == "local" and r["frames"] == "uniform:32"), None)
    if once is None:
        return []
    folder = distinct_copies(videos, args.long_copies)
    console.print(f"[dim]scanning {len(videos) * args.long_copies} videos: local uniform:32")
    r = run_scan(folder, args.model, "local", "uniform:32", args.detector)
    shutil.rmtree(folder, ignore_errors=True)
    detect_floor = sum(
        det_by_name.get(name.rsplit("-copy", 1)[0] + ".mp4", floors["detector_s_per_frame"]) * n
        for name, n in r.pop("frames_by_video").items()
    )
    r["stage_floor_s"] = (
        floors["ffmpeg_full_s"] * args.long_copies
        + detect_floor
        + floors["scorer_s_per_face"] * r["faces"]
    ) / CORES
    r["efficiency"] = r["stage_floor_s"] / r["wall_s"]
    r["copies"] = args.long_copies
    t = Table(title="run length: local, uniform:32, the corpus once and in distinct copies")
    for col in ("videos", "wall s", "fixed s", "floor s", "efficiency", "videos/s"):
        t.add_column(col, justify="right")
    for x in (once, r):
        t.add_row(
            str(x["videos"]),
            f"{x['wall_s']:.1f}",
            f"{once['fixed_s']:.1f}",
            f"{x['stage_floor_s']:.1f}",
            f"{x['efficiency']:.2f}",
            f"{x['videos'] / x['wall_s']:.3f}",
        )
    console.print(t)
    return [r]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(ROOT / "artifacts" / "starter.pt"))
    p.add_argument("--runners", default="local,ray,beam")
    p.add_argument("--frames", default="uniform:32,fps:1,keyframes")
    p.add_argument("--detector", default="scrfd-500m")
    p.add_argument(
        "--long-copies",
        type=int,
        default=4,
        help="also scan the corpus this many times over in one run (local, uniform:32; 0: skip)",
    )
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "throughput.json"))
    args = p.parse_args()

    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 150))  # tables stay readable in logs
    corpus = build_corpus()
    videos = sorted(corpus.glob("*.mp4"))
    floors: dict[str, float] = dict(ffmpeg_floors(videos))
    det_by_name = {Path(v).name: c for v, c in detector_floors(args.detector, videos).items()}
    # uniform:N samples the same count from every video: the plain mean is its cost.
    floors["detector_s_per_frame"] = sum(det_by_name.values()) / len(det_by_name)
    floors["scorer_s_per_face"], scorer_batch = scorer_floor(args.model)
    floors["scorer_batch"] = scorer_batch
    one_clip = Path(tempfile.mkdtemp(prefix="dfscan-one-"))
    make_clip(0, one_clip / "one.mp4")
    rows = []
    fixed: dict[str, float] = {}  # runner -> wall of a one-clip scan
    for frames in args.frames.split(","):
        decode_cpu_s = decode_cpu(videos, frames)
        for runner in args.runners.split(","):
            console.print(f"[dim]scanning {len(videos)} videos: {runner} {frames}")
            r = run_scan(corpus, args.model, runner, frames, args.detector)
            if runner not in fixed:  # start-up does not depend on the sampling
                probe = run_scan(one_clip, args.model, runner, frames, args.detector)
                fixed[runner] = probe["wall_s"]
            r["fixed_s"] = fixed[runner]
            decode_floor = floors[
                "ffmpeg_keyframes_s" if frames == "keyframes" else "ffmpeg_full_s"
            ]
            detect_floor = sum(
                det_by_name.get(name, floors["detector_s_per_frame"]) * n
                for name, n in r.pop("frames_by_video").items()
            )
            r["stage_floor_s"] = (
                decode_floor + detect_floor + floors["scorer_s_per_face"] * r["faces"]
            ) / CORES
            r["efficiency"] = r["stage_floor_s"] / r["wall_s"]
            r["efficiency_less_fixed"] = r["stage_floor_s"] / max(r["wall_s"] - r["fixed_s"], 1e-9)
            r["decode_cpu_s"] = decode_cpu_s
            r["decode_vs_ffmpeg_full"] = decode_cpu_s / floors["ffmpeg_full_s"]
            rows.append(r)
    shutil.rmtree(one_clip, ignore_errors=True)

    f = Table(title=f"floors measured in this run ({len(videos)} videos, {CORES} cores)")
    f.add_column("floor")
    f.add_column("value", justify="right")
    f.add_row("ffmpeg -threads 1 full decode", f"{floors['ffmpeg_full_s']:.2f} s")
    f.add_row("ffmpeg -threads 1 keyframes only", f"{floors['ffmpeg_keyframes_s']:.2f} s")
    f.add_row(
        "detector per frame (mean over videos, one thread)",
        f"{floors['detector_s_per_frame'] * 1000:.1f} ms",
    )
    f.add_row(
        f"classifier per face (batch {floors['scorer_batch']:.0f}, one thread)",
        f"{floors['scorer_s_per_face'] * 1000:.2f} ms",
    )
    console.print(f)
    t = Table(title="scans")
    for col in (
        "sampling",
        "runner",
        "wall s",
        "floor s",
        "efficiency",
        "fixed s",
        "floor / (wall - fixed)",
        "videos/s",
        "frames/s",
        "faces/s",
        "decode CPU / ffmpeg full",
        "peak RSS MB",
    ):
        t.add_column(col, justify="right")
    base: dict[str, float] = {}
    for r in rows:
        base.setdefault(r["frames"], r["wall_s"])
        t.add_row(
            r["frames"],
            r["runner"],
            f"{r['wall_s']:.1f}",
            f"{r['stage_floor_s']:.1f}",
            f"{r['efficiency']:.2f}",
            f"{r['fixed_s']:.1f}",
            f"{r['efficiency_less_fixed']:.2f}",
            f"{r['videos'] / r['wall_s']:.3f}",
            f"{r['frames_n'] / r['wall_s']:.1f}",
            f"{r['faces'] / r['wall_s']:.1f}",
            f"{r['decode_vs_ffmpeg_full']:.2f}",
            f"{r['peak_rss_mb']:.0f}",
        )
    console.print(t)
    speed = Table(title="runner throughput relative to local (same sampling, same run)")
    speed.add_column("sampling")
    speed.add_column("runner")
    speed.add_column("x local", justify="right")
    for r in rows:
        speed.add_row(r["frames"], r["runner"], f"{base[r['frames']] / r['wall_s']:.2f}")
    console.print(speed)
    long_runs = []
    if args.long_copies > 1:
        long_runs = run_length_scans(args, videos, floors, det_by_name, rows, console)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(
        json.dumps(
            {
                "cores": CORES,
                "videos": len(videos),
                "video_seconds": video_seconds(videos),  # the corpus's total duration
                "floors": floors,
                "scans": rows,
                "run_length": long_runs,
            },
            indent=2,
        )
    )
    console.print(f"numbers written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
