"""Weighted metrics against scikit-learn and closed forms, including negative weights."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, roc_auc_score

from crema.models.classifier import metrics


@pytest.fixture(scope="module")
def toy():
    rng = np.random.default_rng(7)
    n = 4000
    y = rng.random(n) < 0.3
    score = np.round(np.where(y, rng.beta(4, 2, n), rng.beta(2, 4, n)), 3)  # ties on purpose
    weight = rng.exponential(1.0, n) * np.where(y, 0.02, 1.0)
    return y.astype(int), score, weight


def test_auc_equals_sklearn_weighted(toy):
    y, score, w = toy
    assert metrics.auc(y, score, w) == pytest.approx(roc_auc_score(y, score, sample_weight=w), abs=1e-12)


def test_auc_with_negative_weights_is_the_weighted_pair_count(toy):
    # scikit-learn refuses a non-monotonic curve; the closed form is the weighted Mann-Whitney sum
    y, score, w = toy
    signed = w * np.where(np.arange(len(w)) % 7 == 0, -1.0, 1.0)  # NLO-like: one in seven negative
    s, b = y == 1, y == 0
    ws, wb = signed[s], signed[b]
    greater = (score[s][:, None] > score[b][None, :]) + 0.5 * (score[s][:, None] == score[b][None, :])
    expected = ws @ greater @ wb / (ws.sum() * wb.sum())
    assert metrics.auc(y, score, signed) == pytest.approx(expected, abs=1e-12)
    # a negative weight counts against: cancelling an event's twin removes it from the curve
    y2, s2, w2 = np.r_[y, y[:50]], np.r_[score, score[:50]], np.r_[w, -w[:50]]
    keep = np.arange(len(y)) >= 50
    assert metrics.auc(y2, s2, w2) == pytest.approx(metrics.auc(y[keep], score[keep], w[keep]), abs=1e-9)


def test_accuracy_equals_sklearn_weighted(toy):
    y, score, w = toy
    assert metrics.accuracy(y, score, w) == pytest.approx(accuracy_score(y, score > 0.5, sample_weight=w), abs=1e-12)


def test_asimov_closed_forms():
    s, b = 10.0, 100.0
    assert metrics.asimov_significance(s, b) == pytest.approx(np.sqrt(2 * ((s + b) * np.log(1 + s / b) - s)))
    # s << b: Z_A -> s / sqrt(b)
    assert metrics.asimov_significance(1.0, 1e6) == pytest.approx(1e-3, rel=1e-6)
    # Cowan's formula with sigma_b = 0.2 b, typed out here
    sb = 0.2 * b
    z = np.sqrt(2 * ((s + b) * np.log((s + b) * (b + sb**2) / (b**2 + (s + b) * sb**2))
                     - b**2 / sb**2 * np.log(1 + sb**2 * s / (b * (b + sb**2)))))
    assert metrics.asimov_significance(s, b, 0.2) == pytest.approx(z, rel=1e-12)
    assert metrics.asimov_significance(s, b, 1e-7) == pytest.approx(metrics.asimov_significance(s, b), rel=1e-5)
    assert metrics.asimov_significance(s, b, 0.5) < metrics.asimov_significance(s, b, 0.1)
    assert np.isnan(metrics.asimov_significance(5.0, 0.0))
    assert metrics.s_over_sqrt_s_plus_b(10.0, 90.0) == pytest.approx(1.0)


def test_max_significance_is_the_brute_force_maximum(toy):
    y, score, w = toy
    best = -1.0
    for t in np.unique(score):
        sel = score >= t
        s, b, nb = w[sel & (y == 1)].sum(), w[sel & (y == 0)].sum(), (sel & (y == 0)).sum()
        if b >= 5.0 and nb >= 10:
            best = max(best, metrics.asimov_significance(s, b))
    got = metrics.max_significance(y, score, w, min_background=5.0, min_background_events=10)
    assert got["significance"] == pytest.approx(best, rel=1e-12)
    assert got["b"] >= 5.0
    # the guard matters: without it the best threshold keeps almost no background
    loose = metrics.max_significance(y, score, w, min_background=0.0, min_background_events=1)
    assert loose["significance"] >= got["significance"] and loose["b"] < got["b"]


def test_rejection_at_efficiency_on_an_exact_toy():
    # signal at scores 0.6..0.9 (weight 1 each), background uniform on 0.0..0.9 (weight 2 each)
    y = np.r_[np.ones(4), np.zeros(10)].astype(int)
    score = np.r_[0.6, 0.7, 0.8, 0.9, np.arange(10) / 10]
    w = np.r_[np.ones(4), 2 * np.ones(10)]
    # 50% signal efficiency at threshold 0.8: background 0.8, 0.9 pass -> FPR 2/10 -> R50 = 5
    assert metrics.rejection_at_efficiency(y, score, w, 0.5) == pytest.approx(5.0)
    # 99%: interpolated between tpr 0.75 (fpr 0.3... at 0.7) and tpr 1 at 0.6 (fpr 0.4)
    fpr = 0.3 + (0.99 - 0.75) / 0.25 * 0.1
    assert metrics.rejection_at_efficiency(y, score, w, 0.99) == pytest.approx(1 / fpr)


def test_rejection_rule_when_no_background_passes():
    y = np.r_[np.ones(10), np.zeros(4)].astype(int)
    score = np.r_[np.linspace(0.6, 1.0, 10), [0.1, 0.2, 0.3, 0.4]]
    w = np.r_[np.ones(10), [1.0, 1.0, 2.0, 2.0]]
    n_eff = w[10:].sum() ** 2 / (w[10:] ** 2).sum()  # 36 / 10
    assert metrics.rejection_at_efficiency(y, score, w, 0.5) == pytest.approx(n_eff)


def test_summary_keys_and_nan_scores_fail(toy):
    y, score, w = toy
    s = metrics.summary(y, score, w)
    assert {"accuracy", "auc", "asimov_significance", "max_significance", "r50", "r99"} <= set(s)
    with pytest.raises(ValueError, match="NaN"):
        metrics.auc(y, np.where(score > 0.9, np.nan, score), w)
