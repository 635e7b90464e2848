"""Pure functions that grade fake probabilities against labels (FAKE = 1 = positive).

Shared by ``dfscan eval``, ``dfscan calibrate``, the trainer and the benchmark so a
number called "AUC" means one thing everywhere. Metrics that need both classes (AUC,
AP, EER) are ``None`` when the labels hold one class, never a made-up 0.5: a JSON null
says "undefined here", a number would be read as a result.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

# Probabilities are clipped this far from 0 and 1 for log loss, so one confident miss
# costs ~16.1 nats instead of infinity.
_EPS = 1e-7


def _two_classes(y: np.ndarray) -> bool:
    return bool(np.any(y == 1) and np.any(y == 0))


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p.astype(np.float64), _EPS, 1.0 - _EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def equal_error_rate(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """EER and the threshold at which it holds (FPR = FNR, interpolated on the ROC)."""
    from sklearn.metrics import roc_curve

    fpr, tpr, thr = roc_curve(y, p)
    fnr = 1.0 - tpr
    diff = fpr - fnr  # rises from -1 to +1 along the curve
    i = int(np.argmax(diff >= 0))
    if i == 0 or diff[i] == 0:
        return float(fpr[i]), float(min(thr[i], 1.0))
    # Linear interpolation between the two ROC points around the crossing.
    a = diff[i - 1] / (diff[i - 1] - diff[i])
    eer = fpr[i - 1] + a * (fpr[i] - fpr[i - 1])
    t = thr[i - 1] + a * (min(thr[i], 1.0) - min(thr[i - 1], 1.0))
    return float(eer), float(min(t, 1.0))


def binary_metrics(y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> dict[str, Any]:
    """AUC, accuracy (overall and per class), AP per class, EER and log loss.

    ``ap_fake`` ranks fakes by p, ``ap_real`` ranks reals by 1 - p; ``ap`` is ``ap_fake``
    (the usual "AP" of a detector), ``ap_macro`` their mean.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    if y.shape != p.shape or y.ndim != 1:
        raise ValueError(f"labels {y.shape} and scores {p.shape} must be equal 1-d shapes")
    if len(y) == 0:
        raise ValueError("no scores to grade")
    pred = p >= threshold
    fake, real = y == 1, y == 0
    out: dict[str, Any] = {
        "n": len(y),
        "n_fake": int(fake.sum()),
        "n_real": int(real.sum()),
        "threshold": float(threshold),
        "accuracy": float(np.mean(pred == fake)),
        "accuracy_fake": float(np.mean(pred[fake])) if fake.any() else None,  # TPR
        "accuracy_real": float(np.mean(~pred[real])) if real.any() else None,  # TNR
        "log_loss": log_loss(y, p),
        "auc": None,
        "ap": None,
        "ap_fake": None,
        "ap_real": None,
        "ap_macro": None,
        "eer": None,
        "eer_threshold": None,
    }
    if _two_classes(y):
        ap_fake = float(average_precision_score(y, p))
        ap_real = float(average_precision_score(1 - y, 1 - p))
        eer, eer_t = equal_error_rate(y, p)
        out.update(
            auc=float(roc_auc_score(y, p)),
            ap=ap_fake,
            ap_fake=ap_fake,
            ap_real=ap_real,
            ap_macro=(ap_fake + ap_real) / 2,
            eer=eer,
            eer_threshold=eer_t,
        )
    return out


def threshold_for_fpr(y: np.ndarray, p: np.ndarray, target_fpr: float) -> dict[str, float]:
    """The lowest threshold whose false-positive rate on the reals is at most ``target_fpr``.

    "FAKE at or above t": with reals sorted by score, at most floor(target x n_real) of
    them may reach t, so t sits just above the next real score. The lowest such t keeps
    the most fakes caught (highest TPR) for that FPR.
    """
    if not 0.0 <= target_fpr < 1.0:
        raise ValueError(f"target FPR must be in [0, 1), got {target_fpr}")
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    reals = np.sort(p[y == 0])[::-1]
    if len(reals) == 0:
        raise ValueError("choosing a threshold for a false-positive rate needs real examples")
    allowed = math.floor(target_fpr * len(reals) + 1e-9)
    # Every real allowed: the lowest real score still counts as the threshold.
    t = float(reals[-1]) if allowed >= len(reals) else float(np.nextafter(reals[allowed], 2.0))
    t = min(t, 1.0)
    fpr = float(np.mean(reals >= t))
    fakes = p[y == 1]
    tpr = float(np.mean(fakes >= t)) if len(fakes) else float("nan")
    return {"threshold": t, "fpr": fpr, "tpr": tpr, "n_real": float(len(reals))}


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The T > 0 minimising the log loss of sigmoid(logits / T) (Guo et al. 2017).

    One parameter, so a bounded scalar search over log T is exact enough and
    deterministic; T in [0.05, 20] covers any sane network.
    """
    from scipy.optimize import minimize_scalar

    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if len(z) == 0:
        raise ValueError("temperature scaling needs at least one example")

    def nll(log_t: float) -> float:
        s = z / math.exp(log_t)
        # log(1 + e^s) - y*s, computed stably.
        return float(np.mean(np.logaddexp(0.0, s) - y * s))

    res = minimize_scalar(nll, bounds=(math.log(0.05), math.log(20.0)), method="bounded")
    return float(math.exp(res.x))


def curves(y: np.ndarray, p: np.ndarray) -> dict[str, np.ndarray]:
    """ROC and precision-recall curve points (for plots)."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    fpr, tpr, _ = roc_curve(y, p)
    precision, recall, _ = precision_recall_curve(y, p)
    return {"fpr": fpr, "tpr": tpr, "precision": precision, "recall": recall}
