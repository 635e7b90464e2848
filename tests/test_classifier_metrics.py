"""The grading functions behind eval and calibrate: known inputs, known numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipelines.classifier_metrics import (
    binary_metrics,
    equal_error_rate,
    fit_temperature,
    log_loss,
    threshold_for_fpr,
)


def test_perfect_separation_gives_auc_one_eer_zero_and_full_accuracy() -> None:
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    m = binary_metrics(y, p)
    assert m["auc"] == 1.0 and m["ap_fake"] == 1.0 and m["ap_real"] == 1.0
    assert m["eer"] == 0.0
    assert m["accuracy"] == m["accuracy_fake"] == m["accuracy_real"] == 1.0
    assert m["n"] == 6 and m["n_fake"] == 3 and m["n_real"] == 3


def test_per_class_accuracy_and_ap_follow_the_threshold_and_the_class() -> None:
    y = np.array([0, 0, 1, 1])
    p = np.array([0.6, 0.2, 0.4, 0.9])  # one real above 0.5, one fake below
    m = binary_metrics(y, p, threshold=0.5)
    assert m["accuracy_fake"] == 0.5 and m["accuracy_real"] == 0.5
    assert m["auc"] == pytest.approx(0.75)
    # AP for reals ranks by 1 - p: reals at 0.8 and 0.4 vs fakes at 0.6 and 0.1.
    assert m["ap_real"] == pytest.approx((1.0 + 2 / 3) / 2)
    assert m["ap_macro"] == pytest.approx((m["ap_fake"] + m["ap_real"]) / 2)


def test_one_class_leaves_ranking_metrics_undefined_not_half() -> None:
    m = binary_metrics(np.ones(4), np.array([0.2, 0.6, 0.7, 0.9]))
    assert m["auc"] is None and m["ap"] is None and m["eer"] is None
    assert m["accuracy"] == 0.75 and m["accuracy_real"] is None


def test_eer_is_where_false_positive_and_false_negative_rates_meet() -> None:
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(2000), np.ones(2000)]
    p = np.r_[rng.normal(0, 1, 2000), rng.normal(2, 1, 2000)]  # d' = 2 -> EER = Phi(-1)
    eer, t = equal_error_rate(y, p)
    assert eer == pytest.approx(0.1587, abs=0.015)
    assert t == pytest.approx(1.0, abs=0.1)


def test_log_loss_clips_so_one_confident_miss_is_finite() -> None:
    assert log_loss(np.array([1.0]), np.array([0.0])) == pytest.approx(-math.log(1e-7))
    assert log_loss(np.array([1.0, 0.0]), np.array([0.5, 0.5])) == pytest.approx(math.log(2))


def test_threshold_for_fpr_flags_at_most_the_allowed_reals_and_as_many_fakes_as_possible() -> None:
    reals = np.linspace(0.0, 0.99, 100)  # 100 reals
    fakes = np.array([0.5, 0.96, 0.975, 0.99, 0.999])
    y = np.r_[np.zeros(100), np.ones(5)]
    p = np.r_[reals, fakes]
    chosen = threshold_for_fpr(y, p, 0.05)
    assert chosen["fpr"] <= 0.05
    assert np.sum(reals >= chosen["threshold"]) == 5  # exactly the 5 allowed
    assert chosen["tpr"] == pytest.approx(np.mean(fakes >= chosen["threshold"]))
    assert threshold_for_fpr(y, p, 0.0)["fpr"] == 0.0


def test_temperature_recovers_the_scale_logits_were_inflated_by() -> None:
    rng = np.random.default_rng(1)
    true_logits = rng.normal(0, 2, 20000)
    y = (rng.random(20000) < 1 / (1 + np.exp(-true_logits))).astype(float)
    t = fit_temperature(true_logits * 3.0, y)  # an over-confident network
    assert t == pytest.approx(3.0, rel=0.08)
    assert log_loss(y, 1 / (1 + np.exp(-true_logits * 3 / t))) < log_loss(
        y, 1 / (1 + np.exp(-true_logits * 3))
    )
