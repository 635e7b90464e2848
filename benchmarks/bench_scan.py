"""Per-stage benchmark of a local scan, with floors measured in the same run.

Prints a table: per stage seconds and rates (summed over the stage's threads: with two
decode workers, decode_detect counts worker-seconds); the scan's end-to-end videos/s; the
floors of benchmarks/floors.py, CPU seconds of one core: FFmpeg's single-thread full
decode of the same files, the detector on each video's own frames and the classifier at
its best batch size, on one thread. Efficiency = (sum of floors / cores) / wall. Nothing
here is asserted: these are measurements.

    python benchmarks/bench_scan.py --model artifacts/starter.pt [--videos DIR] [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.floors import (  # noqa: E402
    detector_floor_per_video,
    ffmpeg_floors,
    scorer_floor,
)
from pipelines.config import (  # noqa: E402
    DetectorConfig,
    SamplingConfig,
    ScanConfig,
    ScorerConfig,
    shared_dir,
)


def detector_floor(detector: DetectorConfig, frames_by_video: dict[str, int]) -> float:
    """Detector CPU seconds on one core for the frames each video had sampled."""
    per = detector_floor_per_video(detector, [Path(v) for v in frames_by_video])
    return sum(per.get(v, 0.0) * n for v, n in frames_by_video.items())


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
    frames_by_video = sampled_frames(out / "scans.duckdb")
    shutil.rmtree(out, ignore_errors=True)
    ff = ffmpeg_floors(videos)["ffmpeg_full_s"] if shutil.which("ffmpeg") else None
    det_total = detector_floor(cfg.detector, frames_by_video)
    sc_per, sc_bs = scorer_floor(args.model)
    cores = len(os.sched_getaffinity(0))
    floor = ((ff or 0.0) + det_total + sc_per * summary.faces) / cores
    return {
        "videos": summary.videos,
        "frames": summary.frames,
        "faces": summary.faces,
        "wall_s": wall,
        "stage_s": stage,
        "ffmpeg_full_decode_s": ff,
        "detector_s_per_frame": det_total / max(summary.frames, 1),
        "scorer_s_per_face": sc_per,
        "scorer_best_batch": sc_bs,
        "stage_floor_s": floor,
        "efficiency": floor / wall,
        "cores": cores,
        "sampling": args.frames,
    }


def sampled_frames(warehouse: Path) -> dict[str, int]:
    """{local video path: frames the scan sampled from it}, from the scan's own rows."""
    import duckdb

    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        rows = con.execute("SELECT uri, frames_sampled FROM video_scans").fetchall()
    finally:
        con.close()
    return {uri.removeprefix("file://"): int(n or 0) for uri, n in rows}


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
    f = Table(title="floors measured in this run (CPU seconds on one core)")
    for col in ("floor", "seconds", "note"):
        f.add_column(col)
    ff = r["ffmpeg_full_decode_s"]
    if ff is not None:
        ratio = stage.get("decode_detect", 0.0) / float(ff)  # type: ignore[arg-type]
        f.add_row(
            "ffmpeg -threads 1 full decode",
            f"{ff:.2f}",
            f"scan decode+detect worker-seconds / ffmpeg = {ratio:.2f}x",
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
        f"efficiency (floor / wall) = {floor / wall:.2f} (aim >= 0.8)",
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
