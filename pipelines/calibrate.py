"""``dfscan calibrate``: fit a temperature and pick a threshold, store both in the checkpoint.

Temperature scaling (one scalar dividing the logits, fitted by log loss) makes a score
of 0.8 mean "fake 8 times in 10" on the validation split without changing the ranking
(AUC is unchanged). The threshold is then chosen on the calibrated per-video scores the
scan compares with it (same aggregation rule), as the lowest one whose false-positive
rate on the validation reals is at most ``--target-fpr``: a platform sets how many
genuine uploads it can afford to flag, and takes the recall that buys.

The new checkpoint has the same weights and a new ``temperature``/``threshold`` in its
metadata (so a new ``model_version``); ``dfscan scan`` uses that threshold when no
``--threshold`` is given. Fit on the validation split (default): fitting on training
images would calibrate to memorised, over-confident scores.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any

from pipelines.config import AggregateConfig, ConfigError


@dataclasses.dataclass(frozen=True)
class CalibrateConfig:
    model: str
    data: str
    out: str
    target_fpr: float = 0.05
    split: str = "val"
    rule: str = AggregateConfig.rule
    batch_size: int = 64
    device: str = "auto"
    num_threads: int = 0


def calibrate(cfg: CalibrateConfig) -> dict[str, Any]:
    """Fit, choose, save; return what was fitted and the validation numbers behind it."""
    import numpy as np

    from operators.models.checkpoints import load_checkpoint, save_checkpoint
    from operators.models.scorers import scorer_class
    from pipelines.classifier_metrics import binary_metrics, fit_temperature, threshold_for_fpr
    from pipelines.evaluate import score, select_split, video_scores
    from pipelines.labelled_data import open_faces

    if not 0.0 <= cfg.target_fpr < 1.0:
        raise ConfigError(f"--target-fpr must be in [0, 1), got {cfg.target_fpr}")
    started = time.monotonic()
    ckpt = load_checkpoint(cfg.model)
    # Fit on the raw logits: start from T = 1 whatever the checkpoint holds already.
    raw_meta = dataclasses.replace(ckpt.meta, temperature=1.0)
    raw = dataclasses.replace(ckpt, meta=raw_meta)
    scorer = scorer_class(raw_meta.arch)(cfg.model, cfg.device, cfg.num_threads)
    scorer.load(raw)
    faceset = open_faces(cfg.data, size=raw_meta.input_size)
    faces = select_split(faceset, raw_meta.extra, cfg.split, cfg.model)
    scored = score(scorer, faceset, faces, cfg.batch_size)
    if len(np.unique(scored.labels)) < 2:
        raise ConfigError("calibration needs both REAL and FAKE faces in the chosen split")
    temperature = fit_temperature(scored.logits, scored.labels)
    probs = 1.0 / (1.0 + np.exp(-scored.logits.astype(np.float64) / temperature))
    agg = AggregateConfig(rule=cfg.rule)
    _, y_video, p_video = video_scores(faces, probs, agg)
    chosen = threshold_for_fpr(y_video, p_video, cfg.target_fpr)
    before = binary_metrics(scored.labels, scored.probs)
    after = binary_metrics(scored.labels, probs, chosen["threshold"])
    metrics = dict(ckpt.meta.metrics)
    metrics.update(
        calib_log_loss_before=before["log_loss"],
        calib_log_loss_after=after["log_loss"],
        calib_fpr=chosen["fpr"],
        calib_tpr=chosen["tpr"],
        calib_n_real_videos=chosen["n_real"],
    )
    extra = dict(ckpt.meta.extra)
    extra.update(
        calibrated_on=f"{cfg.data} [{cfg.split}], {len(faces)} faces",
        calib_target_fpr=str(cfg.target_fpr),
        calib_rule=cfg.rule,
        calibrated_from=cfg.model,
    )
    meta = dataclasses.replace(
        ckpt.meta,
        temperature=temperature,
        threshold=chosen["threshold"],
        metrics=metrics,
        extra=extra,
    )
    sha = save_checkpoint(ckpt.state_dict, meta, cfg.out)
    return {
        "out": cfg.out,
        "sha256": sha,
        "temperature": temperature,
        "threshold": chosen["threshold"],
        "val_fpr": chosen["fpr"],
        "val_tpr": chosen["tpr"],
        "log_loss_before": before["log_loss"],
        "log_loss_after": after["log_loss"],
        "faces": len(faces),
        "seconds": time.monotonic() - started,
    }


def register(sub: Any) -> None:
    from operators.aggregate import DECISION_RULES
    from pipelines.cli import _positive
    from pipelines.evaluate import SPLITS

    p = sub.add_parser(
        "calibrate", help="fit temperature + pick a threshold for a target false-positive rate"
    )
    p.add_argument("--model", required=True, help="checkpoint to calibrate")
    p.add_argument("--data", required=True, help="the labelled data it was trained on")
    p.add_argument("--out", required=True, help="where to write the calibrated checkpoint")
    p.add_argument("--target-fpr", type=float, default=0.05, help="reals flagged, at most")
    p.add_argument("--split", default="val", choices=SPLITS, help="default: the saved val split")
    p.add_argument("--rule", default=AggregateConfig.rule, choices=sorted(DECISION_RULES))
    p.add_argument("--batch-size", type=_positive(int), default=64)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--num-threads", type=int, default=0, help="torch threads; 0 = all cores")
    p.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    cfg = CalibrateConfig(
        model=args.model,
        data=args.data,
        out=args.out,
        target_fpr=args.target_fpr,
        split=args.split,
        rule=args.rule,
        batch_size=args.batch_size,
        device=args.device,
        num_threads=args.num_threads,
    )
    r = calibrate(cfg)
    print(
        f"temperature={r['temperature']:.4f} threshold={r['threshold']:.4f} "
        f"(val FPR {r['val_fpr']:.4f}, TPR {r['val_tpr']:.4f} at target {cfg.target_fpr}); "
        f"log loss {r['log_loss_before']:.4f} -> {r['log_loss_after']:.4f} on {r['faces']} faces"
    )
    print(f"wrote {r['out']} (sha256 {r['sha256'][:12]})")
    return 0
