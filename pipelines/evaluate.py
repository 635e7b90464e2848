"""``dfscan eval``: grade a checkpoint on labelled faces, per face and per video.

Faces are scored by the scan's own ``Scorer`` (temperature included) on crops decoded by
the scan's ``decode_crops``; per-video scores come from the scan's ``aggregate_video``
with the same decision rule, so the video-level numbers are the ones a scan would get.
Writes ``metrics.json`` (the numbers), ``roc_{frame,video}.png`` and
``pr_{frame,video}.png`` to ``--out``, and prints a short table.

``--split val`` grades only the validation images saved beside the checkpoint at
training time (``<ckpt>.split.json``): the honest number for a model trained on the same
folder. Grading a model on its own training images measures memory.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.config import DEFAULT_SCORE_BACKEND, AggregateConfig, ConfigError

if TYPE_CHECKING:
    import numpy as np

    from operators.models.scorers import Scorer
    from pipelines.labelled_data import FaceSet, LabelledFace

SPLITS = ("all", "val", "train")


@dataclass(frozen=True)
class EvalConfig:
    model: str
    data: str
    out: str
    split: str = "all"
    rule: str = AggregateConfig.rule
    threshold: float | None = None  # None: the checkpoint's calibrated one, else 0.5
    batch_size: int = 64
    device: str = "auto"
    backend: str = DEFAULT_SCORE_BACKEND  # how the classifier runs (--score-backend)
    num_threads: int = 0
    plots: bool = True


@dataclass
class Scored:
    """Faces of an evaluation with their raw logits and (temperature-scaled) probabilities."""

    faces: list[LabelledFace]
    logits: np.ndarray
    probs: np.ndarray
    labels: np.ndarray


def select_split(
    faceset: FaceSet, checkpoint_extra: dict[str, str], split: str, checkpoint: str | None = None
) -> list[Any]:
    """The faces of ``split``: all of them, or those the checkpoint's split file names
    (found as recorded or beside ``checkpoint``, the model's path or URI)."""
    from pipelines.labelled_data import read_split

    if split not in SPLITS:
        raise ConfigError(f"unknown --split {split!r}: choose one of {', '.join(SPLITS)}")
    if split == "all":
        return list(faceset.faces)
    uri = checkpoint_extra.get("split")
    if not uri:
        raise ConfigError("the checkpoint names no split file: use --split all")
    keys = set(read_split(uri, checkpoint).get(split) or [])
    chosen = [f for f in faceset.faces if f.key in keys]
    if not chosen:
        raise ConfigError(
            f"no face of the checkpoint's {split} split ({uri}) is in --data {faceset.root}"
        )
    return chosen


def score(scorer: Scorer, faceset: FaceSet, faces: list[Any], batch_size: int) -> Scored:
    """Raw logits and probabilities of ``faces``, one forward pass of ``batch_size`` at a time."""
    import numpy as np

    logits = np.empty(len(faces), dtype=np.float32)
    predict_logits = getattr(scorer, "predict_logits", None)
    if predict_logits is None:
        raise ConfigError(f"{type(scorer).__name__} exposes no logits to evaluate")
    for start in range(0, len(faces), batch_size):
        chunk = faces[start : start + batch_size]
        logits[start : start + len(chunk)] = predict_logits(
            faceset.images(chunk, scorer.input_size)
        )
    probs = 1.0 / (1.0 + np.exp(-logits.astype(np.float64) / scorer.meta.temperature))
    labels = np.array([f.is_fake for f in faces], dtype=np.float64)
    return Scored(faces, logits, probs, labels)


def video_scores(
    faces: list[Any], probs: np.ndarray, agg: AggregateConfig
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Per-video (ids, labels, fake probabilities) through the scan's ``aggregate_video``."""
    import numpy as np

    from operators.aggregate import aggregate_video
    from schemas.records import (
        DetectorInfo,
        FaceCrop,
        ScoredVideo,
        VideoFaces,
        VideoRef,
        VideoStatus,
    )

    by_video: dict[str, list[tuple[Any, float]]] = {}
    for face, p in zip(faces, probs, strict=True):
        by_video.setdefault(face.video_id, []).append((face, float(p)))
    ids, labels, scores = [], [], []
    detector = DetectorInfo("labelled", "")
    for vid in sorted(by_video):
        items = by_video[vid]
        crops = tuple(
            FaceCrop(f.frame_index, f.pts_s, f.track_id, (0.0, 0.0, 0.0, 0.0), (), 1.0, b"", 0, 0)
            for f, _ in items
        )
        video = VideoFaces(VideoRef(vid, vid, -1), VideoStatus.SCORED, detector, "", faces=crops)
        scored = ScoredVideo(video, tuple(p for _, p in items), "eval")
        row = aggregate_video(
            video, scored, agg, model_version="eval", model_arch="", run_id="", scanned_at=0.0
        )
        fakes = {f.is_fake for f, _ in items}
        if len(fakes) != 1:
            raise ConfigError(f"video {vid} has faces labelled both REAL and FAKE")
        ids.append(vid)
        labels.append(float(fakes.pop()))
        scores.append(float(row.fake_probability or 0.0))
    return ids, np.array(labels), np.array(scores)


def plot_curves(y: np.ndarray, p: np.ndarray, level: str, out: Path, title: str) -> list[str]:
    """ROC and precision-recall PNGs; none when the labels hold a single class."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server
    import matplotlib.pyplot as plt

    from pipelines.classifier_metrics import binary_metrics, curves

    m = binary_metrics(y, p)
    if m["auc"] is None:
        return []
    c = curves(y, p)
    written = []
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    ax.plot(c["fpr"], c["tpr"], lw=1.5, label=f"AUC {m['auc']:.3f}")
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="grey")
    ax.set(xlabel="false-positive rate (reals called fake)", ylabel="true-positive rate")
    ax.set_title(f"ROC, {level} level\n{title}", fontsize=9)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path = out / f"roc_{level}.png"
    fig.savefig(path)
    plt.close(fig)
    written.append(str(path))
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    ax.plot(c["recall"], c["precision"], lw=1.5, label=f"AP {m['ap']:.3f}")
    ax.axhline(m["n_fake"] / m["n"], ls="--", lw=0.8, color="grey", label="chance")
    ax.set(xlabel="recall (fakes caught)", ylabel="precision", ylim=(0, 1.02))
    ax.set_title(f"precision-recall (FAKE), {level} level\n{title}", fontsize=9)
    ax.legend(loc="lower left")
    fig.tight_layout()
    path = out / f"pr_{level}.png"
    fig.savefig(path)
    plt.close(fig)
    written.append(str(path))
    return written


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Score, aggregate, grade, plot and write ``metrics.json``; return the report."""
    from operators.models.scorers import build_scorer
    from pipelines.classifier_metrics import binary_metrics
    from pipelines.labelled_data import open_faces

    started = time.monotonic()
    scorer = build_scorer(
        cfg.model, device=cfg.device, num_threads=cfg.num_threads, backend=cfg.backend
    )
    meta = scorer.meta
    faceset = open_faces(cfg.data, size=meta.input_size)
    faces = select_split(faceset, meta.extra, cfg.split, cfg.model)
    threshold = cfg.threshold if cfg.threshold is not None else (meta.threshold or 0.5)
    scored = score(scorer, faceset, faces, cfg.batch_size)
    agg = AggregateConfig(rule=cfg.rule, threshold=threshold)
    vids, y_video, p_video = video_scores(faces, scored.probs, agg)
    report: dict[str, Any] = {
        "model": cfg.model,
        "model_version": scorer.model_version,
        "arch": meta.arch,
        "temperature": meta.temperature,
        "threshold": threshold,
        "threshold_source": "flag"
        if cfg.threshold is not None
        else ("checkpoint" if meta.threshold is not None else "default"),
        "data": cfg.data,
        "layout": faceset.layout,
        "split": cfg.split,
        "rule": cfg.rule,
        "frame": binary_metrics(scored.labels, scored.probs, threshold),
        "video": binary_metrics(y_video, p_video, threshold),
        "seconds": 0.0,
    }
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    plots: list[str] = []
    if cfg.plots:
        title = f"{meta.arch} on {Path(cfg.data).name} ({cfg.split})"
        plots += plot_curves(scored.labels, scored.probs, "frame", out, title)
        plots += plot_curves(y_video, p_video, "video", out, title)
    report["plots"] = plots
    report["config"] = asdict(cfg)
    report["seconds"] = time.monotonic() - started
    (out / "metrics.json").write_text(json.dumps(report, indent=1, sort_keys=True))
    per_video = [
        {"video_id": v, "label": "FAKE" if y else "REAL", "fake_probability": p}
        for v, y, p in zip(vids, y_video.tolist(), p_video.tolist(), strict=True)
    ]
    (out / "videos.json").write_text(json.dumps(per_video, indent=1))
    return report


def _fmt(v: Any) -> str:
    return "-" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))


def print_report(report: dict[str, Any]) -> None:
    cols = ["n", "n_fake", "auc", "accuracy", "accuracy_fake", "accuracy_real"]
    cols += ["ap_fake", "ap_real", "eer", "log_loss"]
    print(
        f"{report['model_version']} on {report['data']} [{report['split']}], threshold "
        f"{report['threshold']:.4f} ({report['threshold_source']}), rule {report['rule']}"
    )
    print(f"{'level':<6} " + " ".join(f"{c:>13}" for c in cols))
    for level in ("frame", "video"):
        m = report[level]
        print(f"{level:<6} " + " ".join(f"{_fmt(m[c]):>13}" for c in cols))


# ---------------------------------------------------------------- command line
def register(sub: Any) -> None:
    from operators.aggregate import DECISION_RULES
    from pipelines.limits_cli import _fraction
    from pipelines.scoring_cli import add_scoring_arguments

    p = sub.add_parser("eval", help="grade a classifier on labelled faces or videos")
    p.add_argument("--model", required=True, help="checkpoint path or URI")
    p.add_argument(
        "--data",
        required=True,
        help="labels.csv crops folder, `dfscan dataset build` output, or FAKE/ REAL/ videos",
    )
    p.add_argument("--out", help="report folder (default: out/eval/<model>-<data>)")
    p.add_argument("--split", default="all", choices=SPLITS, help="val: the checkpoint's split")
    p.add_argument("--rule", default=AggregateConfig.rule, choices=sorted(DECISION_RULES))
    p.add_argument("--threshold", type=_fraction, help="default: the checkpoint's, else 0.5")
    add_scoring_arguments(p)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--num-threads", type=int, default=0, help="torch threads; 0 = all cores")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG curves")
    p.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    from pipelines.scoring_cli import scorer_settings

    batch_size, backend = scorer_settings(args)
    out = args.out or f"out/eval/{Path(args.model).stem}-{Path(args.data).name}"
    cfg = EvalConfig(
        model=args.model,
        data=args.data,
        out=out,
        split=args.split,
        rule=args.rule,
        threshold=args.threshold,
        batch_size=batch_size,
        device=args.device,
        backend=backend,
        num_threads=args.num_threads,
        plots=not args.no_plots,
    )
    report = evaluate(cfg)
    print_report(report)
    print(
        f"wrote {out}/metrics.json"
        + (f" and {len(report['plots'])} PNGs" if report["plots"] else "")
    )
    return 0
