"""Per-stage benchmark of a local scan, with floors measured in the same run.

Prints a table: per stage seconds and rates; the scan's end-to-end videos/s; FFmpeg's
full decode of the same files (``ffmpeg -threads 1 -f null -``) as the decode floor; the
detector's per-frame cost and the classifier's per-face cost, each measured alone at its
best batch size, as the other floors. Nothing here is asserted: these are measurements.

    python benchmarks/bench_scan.py --model artifacts/starter.pt [--videos DIR] [--json F]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipelines.config import (  # noqa: E402
    DetectorConfig,
    SamplingConfig,
    ScanConfig,
    ScorerConfig,
    shared_dir,
)


def ffmpeg_floor(videos: list[Path]) -> float | None:
    """Seconds for FFmpeg to decode every frame of every video on one thread."""
    if shutil.which("ffmpeg") is None:
        return None
    t0 = time.perf_counter()
    for v in videos:
        subprocess.run(
            ["ffmpeg", "-v", "error", "-threads", "1", "-i", str(v), "-f", "null", "-"],
            check=True,
        )
    return time.perf_counter() - t0


def detector_floor(detector: DetectorConfig, frames: int) -> tuple[float, float]:
    """(seconds per frame, total seconds for ``frames``) of detection alone."""
    import av

    from operators.detect_faces import build_detector

    det = build_detector(detector)
    det.load()
    clip = shared_dir() / "data" / "videos" / "real" / "hamilton_clip.mp4"
    with av.open(str(clip)) as c:
        decoded = itertools.islice(c.decode(video=0), 16)
        images = [f.to_ndarray(format="bgr24") for f in decoded]
    det.detect_batch(images[:2])  # warm-up: ORT allocates on the first run
    t0 = time.perf_counter()
    det.detect_batch(images)
    per = (time.perf_counter() - t0) / len(images)
    return per, per * frames


def scorer_floor(checkpoint: str, faces: int) -> tuple[float, int, float]:
    """(seconds per face at the best batch size, that batch size, total for ``faces``)."""
    import numpy as np

    from operators.models.scorers import build_scorer

    scorer = build_scorer(checkpoint)
    scorer.load()
    size = scorer.input_size
    best = (float("inf"), 0)
    for bs in (16, 32, 64, 128):
        batch = np.random.default_rng(0).integers(0, 255, (bs, size, size, 3), dtype=np.uint8)
        scorer.predict(batch[:4])
        t0 = time.perf_counter()
        scorer.predict(batch)
        per = (time.perf_counter() - t0) / bs
        best = min(best, (per, bs))
    return best[0], best[1], best[0] * faces


def run(args: argparse.Namespace) -> dict[str, object]:
    from pipelines.scan import run_scan

    videos = sorted(Path(args.videos).glob("*.mp4"))
    out = Path(tempfile.mkdtemp(prefix="dfscan-bench-"))
    cfg = ScanConfig(
        input_uri=str(args.videos),
        out_uri=str(out),
        warehouse_url=f"duckdb://{out}/scans.duckdb",
        run_id="bench",
        sampling=SamplingConfig.parse(args.frames),
        detector=DetectorConfig.build(args.detector),
        scorer=ScorerConfig(checkpoint=args.model),
        progress=False,
    )
    t0 = time.perf_counter()
    summary = run_scan(cfg)
    wall = time.perf_counter() - t0
    stage = _stage_seconds(summary.metrics)
    ff = ffmpeg_floor(videos)
    det_per, det_total = detector_floor(cfg.detector, summary.frames)
    sc_per, sc_bs, sc_total = scorer_floor(args.model, summary.faces)
    cores = len(os.sched_getaffinity(0))
    floor = ((ff or 0.0) + det_total + sc_total) / cores
    shutil.rmtree(out, ignore_errors=True)
    return {
        "videos": summary.videos,
        "frames": summary.frames,
        "faces": summary.faces,
        "wall_s": wall,
        "stage_s": stage,
        "ffmpeg_full_decode_s": ff,
        "detector_s_per_frame": det_per,
        "scorer_s_per_face": sc_per,
        "scorer_best_batch": sc_bs,
        "stage_floor_s": floor,
        "cores": cores,
        "sampling": args.frames,
    }


def _stage_seconds(metrics: object) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    text = metrics.exposition().decode()  # type: ignore[attr-defined]
    for fam in text_string_to_metric_families(text):
        if fam.name == "dfscan_stage_seconds":
            for s in fam.samples:
                if s.name.endswith("_sum"):
                    out[s.labels["stage"]] = s.value
    return out


def print_table(r: dict[str, object]) -> None:
    from rich.console import Console
    from rich.table import Table

    stage: dict[str, float] = r["stage_s"]  # type: ignore[assignment]
    frames, faces, videos = int(r["frames"]), int(r["faces"]), int(r["videos"])  # type: ignore[call-overload]
    t = Table(title=f"dfscan scan benchmark ({videos} videos, {r['sampling']}, local runner)")
    for col in ("stage", "seconds", "rate"):
        t.add_column(col, justify="right" if col != "stage" else "left")
    rates = {
        "hash": f"{videos / stage.get('hash', 1e-9):.1f} videos/s",
        "decode_detect": f"{frames / stage.get('decode_detect', 1e-9):.1f} frames/s, "
        f"{faces / stage.get('decode_detect', 1e-9):.1f} faces detected/s",
        "write_shards": f"{faces / stage.get('write_shards', 1e-9):.0f} faces/s",
        "score_faces": f"{faces / stage.get('score_faces', 1e-9):.1f} faces scored/s",
    }
    for name, secs in stage.items():
        t.add_row(name, f"{secs:.2f}", rates.get(name, ""))
    wall = float(r["wall_s"])  # type: ignore[arg-type]
    t.add_row("[bold]end to end", f"{wall:.2f}", f"{videos / wall:.2f} videos/s")
    Console(width=max(Console().width, 150)).print(t)
    f = Table(title="floors measured in this run")
    for col in ("floor", "seconds", "note"):
        f.add_column(col)
    ff = r["ffmpeg_full_decode_s"]
    if ff is not None:
        ratio = stage.get("decode_detect", 0.0) / float(ff)  # type: ignore[arg-type]
        f.add_row(
            "ffmpeg -threads 1 full decode",
            f"{ff:.2f}",
            f"scan decode+detect stage / ffmpeg = {ratio:.2f}x",
        )
    else:
        f.add_row("ffmpeg full decode", "n/a", "ffmpeg not installed")
    det = float(r["detector_s_per_frame"])  # type: ignore[arg-type]
    f.add_row("detector alone", f"{det * frames:.2f}", f"{det * 1000:.1f} ms/frame x {frames}")
    sc = float(r["scorer_s_per_face"])  # type: ignore[arg-type]
    f.add_row(
        "classifier alone",
        f"{sc * faces:.2f}",
        f"{sc * 1000:.2f} ms/face at batch {r['scorer_best_batch']} x {faces}",
    )
    floor = float(r["stage_floor_s"])  # type: ignore[arg-type]
    f.add_row(
        f"stage floor (sum / {r['cores']} cores)",
        f"{floor:.2f}",
        f"end-to-end wall / floor = {wall / floor:.2f}x (aim <= 1.25x)",
    )
    Console(width=max(Console().width, 150)).print(f)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(ROOT / "artifacts" / "starter.pt"))
    p.add_argument("--videos", default=str(shared_dir() / "data" / "videos" / "real"))
    p.add_argument("--frames", default="uniform:32")
    p.add_argument("--detector", default="scrfd-500m")
    p.add_argument("--json", help="also write the numbers to this JSON file")
    args = p.parse_args()
    result = run(args)
    print_table(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
