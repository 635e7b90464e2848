"""Scoring backends on this CPU: speed, and whether they keep the model's AUC.

For every ``--score-backend`` (operators/models/backends.py) and batch size: faces per
second on the checkpoint's validation crops (warm-up passes first, then the median of
``--repeats`` rounds; the backends take turns within each round, so a load spike from
another process hits all of them rather than one), with torch threads and ONNX Runtime
intra-op threads = the cores this process may use. Then the accuracy of each backend on
the same crops, through ``dfscan eval``'s own scoring and aggregation: frame- and
video-level AUC, their change against eager torch, and the largest |probability
difference| on any face. The kept backend is the fastest (at the scan's CPU batch size)
whose video-level AUC drops by less than ``--max-auc-drop`` (issue #8: 0.005).

    python benchmarks/bench_scoring.py --model artifacts/starter.pt \
        [--data ../shared/data/faces/dfdc224] [--batch-sizes 32,64,128] [--repeats 5] \
        [--json benchmarks/results/scoring.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipelines.config import AggregateConfig, shared_dir  # noqa: E402

BASELINE = "torch"
FACES_PER_ROUND = 256  # faces timed per backend, batch size and round: >= 2 batches of 128


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def faces_per_second(scorer: Any, images: Any, batch_size: int) -> float:
    """Faces/s for one round: ``FACES_PER_ROUND`` faces in passes of ``batch_size``."""
    t0 = time.perf_counter()
    done = 0
    while done < FACES_PER_ROUND:
        start = done % len(images)
        batch = images[start : start + batch_size]
        scorer.predict(batch)
        done += len(batch)
    return done / (time.perf_counter() - t0)


def accuracy(scorer: Any, faceset: Any, faces: list[Any], batch_size: int) -> dict[str, Any]:
    """Frame- and video-level metrics exactly as ``dfscan eval`` computes them."""
    from pipelines.classifier_metrics import binary_metrics
    from pipelines.evaluate import score, video_scores

    scored = score(scorer, faceset, faces, batch_size)
    threshold = scorer.meta.threshold or 0.5
    _, y_video, p_video = video_scores(faces, scored.probs, AggregateConfig(threshold=threshold))
    return {
        "probs": scored.probs,
        "frame": binary_metrics(scored.labels, scored.probs, threshold),
        "video": binary_metrics(y_video, p_video, threshold),
        "video_probs": p_video,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import onnxruntime
    import torch

    from operators.models.backends import CANDIDATE_BACKENDS, SCORE_BACKENDS, available_cpus
    from operators.models.scorers import CPU_BATCH_SIZE, build_scorer
    from pipelines.evaluate import select_split
    from pipelines.labelled_data import open_faces

    offered = list(SCORE_BACKENDS)
    # Candidates that are measured but not offered as --score-backend are scored too.
    SCORE_BACKENDS.update(CANDIDATE_BACKENDS)
    backends = [b for b in args.backends.split(",") if b] if args.backends else list(SCORE_BACKENDS)
    if BASELINE not in backends:
        backends.insert(0, BASELINE)
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    cores = available_cpus()
    load_before = os.getloadavg()

    scorers: dict[str, Any] = {}
    setup_s: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as cache:  # exports are timed, not read from a cache
        for name in backends:
            t0 = time.perf_counter()
            scorers[name] = build_scorer(
                args.model, device="cpu", num_threads=cores, backend=name, cache_dir=cache
            )
            setup_s[name] = time.perf_counter() - t0
        base = scorers[BASELINE]
        meta = base.meta
        faceset = open_faces(args.data, size=meta.input_size)
        faces = select_split(faceset, meta.extra, args.split, args.model)
        images = faceset.images(faces, meta.input_size)
        print(
            f"{base.model_version} on {len(faces)} {args.split} crops of {args.data}, "
            f"{meta.input_size} px, {cores} threads, load average {load_before[0]:.2f}",
            file=sys.stderr,
        )

        quality = {name: accuracy(s, faceset, faces, CPU_BATCH_SIZE) for name, s in scorers.items()}

        speed: dict[str, dict[int, list[float]]] = {n: {b: [] for b in sizes} for n in backends}
        for bs in sizes:
            for name in backends:  # warm-up: allocators, oneDNN primitives, ORT arenas
                for _ in range(2):
                    scorers[name].predict(images[:bs])
            for r in range(args.repeats):
                order = backends[r % len(backends) :] + backends[: r % len(backends)]
                for name in order:
                    speed[name][bs].append(faces_per_second(scorers[name], images, bs))
            print(f"batch {bs}: done", file=sys.stderr)

    ref = quality[BASELINE]
    rows: list[dict[str, Any]] = []
    for name in backends:
        q = quality[name]
        for bs in sizes:
            med = statistics.median(speed[name][bs])
            base_med = statistics.median(speed[BASELINE][bs])
            rows.append(
                {
                    "backend": name,
                    "runs_on": scorers[name].runtime.description,
                    "batch_size": bs,
                    "faces_per_s": med,
                    "faces_per_s_runs": speed[name][bs],
                    "ms_per_face": 1000.0 / med,
                    "x_torch": med / base_med,
                    "setup_s": setup_s[name],
                    "frame_auc": q["frame"]["auc"],
                    "video_auc": q["video"]["auc"],
                    "frame_auc_delta": q["frame"]["auc"] - ref["frame"]["auc"],
                    "video_auc_delta": q["video"]["auc"] - ref["video"]["auc"],
                    "max_abs_prob_diff": float(np.max(np.abs(q["probs"] - ref["probs"]))),
                    "max_abs_video_prob_diff": float(
                        np.max(np.abs(q["video_probs"] - ref["video_probs"]))
                    ),
                    "keeps_auc": ref["video"]["auc"] - q["video"]["auc"] < args.max_auc_drop,
                    "offered": name in offered,
                }
            )
    at_scan_batch = [r for r in rows if r["batch_size"] == CPU_BATCH_SIZE] or rows
    eligible = [r for r in at_scan_batch if r["keeps_auc"] and r["offered"]]
    kept = max(eligible, key=lambda r: r["faces_per_s"])["backend"] if eligible else BASELINE
    return {
        "benchmark": "scoring backends",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": args.model,
        "model_version": base.model_version,
        "arch": meta.arch,
        "input_size": meta.input_size,
        "data": str(args.data),
        "split": args.split,
        "faces": len(faces),
        "videos": int(ref["video"]["n"]),
        "rule": f"fastest offered backend at batch {CPU_BATCH_SIZE} whose video-level AUC "
        f"drops by less than {args.max_auc_drop} against {BASELINE}",
        "kept": kept,
        "machine": {
            "cpu": cpu_model(),
            "threads": cores,
            "load_average_before": load_before[0],
            "load_average_after": os.getloadavg()[0],
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
        "repeats": args.repeats,
        "faces_per_round": FACES_PER_ROUND,
        "rows": rows,
    }


def _f(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def print_table(r: dict[str, Any]) -> None:
    head = ["backend", "runs on", "batch", "faces/s", "ms/face", "x torch", "setup s"]
    head += ["frame AUC", "video AUC", "d video AUC", "max |dp|", "keeps AUC"]
    lines = [head]
    for row in r["rows"]:
        lines.append(
            [
                row["backend"] + ("" if row["offered"] else " (candidate)"),
                row["runs_on"],
                str(row["batch_size"]),
                f"{row['faces_per_s']:.1f}",
                f"{row['ms_per_face']:.2f}",
                f"{row['x_torch']:.2f}",
                f"{row['setup_s']:.2f}",
                _f(row["frame_auc"], ".4f"),
                _f(row["video_auc"], ".4f"),
                _f(row["video_auc_delta"], "+.4f"),
                f"{row['max_abs_prob_diff']:.2e}",
                "yes" if row["keeps_auc"] else "NO",
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    print(f"| {' | '.join(h.ljust(w) for h, w in zip(head, widths, strict=True))} |")
    print(f"|{'|'.join('-' * (w + 2) for w in widths)}|")
    for line in lines[1:]:
        print(f"| {' | '.join(c.ljust(w) for c, w in zip(line, widths, strict=True))} |")
    m = r["machine"]
    print(
        f"\n{r['model_version']}, {r['faces']} {r['split']} crops ({r['videos']} videos), "
        f"{m['cpu']}, {m['threads']} threads, load average {m['load_average_before']:.2f} -> "
        f"{m['load_average_after']:.2f}; median of {r['repeats']} rounds of "
        f"{r['faces_per_round']} faces."
    )
    print(f"kept: {r['kept']} ({r['rule']})")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(ROOT / "artifacts" / "starter.pt"))
    p.add_argument("--data", default=str(shared_dir() / "data" / "faces" / "dfdc224"))
    p.add_argument("--split", default="val", help="the checkpoint's split to score (val)")
    p.add_argument("--backends", help="comma-separated (default: all, candidates included)")
    p.add_argument("--batch-sizes", default="32,64,128")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds per backend and batch")
    p.add_argument("--max-auc-drop", type=float, default=0.005)
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "scoring.json"))
    args = p.parse_args()
    result = run(args)
    print_table(result)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
