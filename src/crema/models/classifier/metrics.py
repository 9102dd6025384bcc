"""Weighted metrics of a signal-vs-background discriminant, in one place.

Every function takes per-event ``weight`` (yield weights at the luminosity: the sums are expected
event counts). Negative weights (NLO generators) enter with their sign everywhere: the ROC curve's
cumulative sums, the yields s and b, the accuracy. Rates are normalised to the signed totals, so a
ROC curve may be locally non-monotonic where negative-weight events sit; the AUC is still the
trapezoidal area (equal to scikit-learn's weighted ``roc_auc_score``). Significances need b > 0:
where the background yield is not positive the significance is undefined and the threshold is
skipped.

Rejection at efficiency (R50, R99): 1/FPR at the threshold where the weighted signal efficiency
first reaches 50% (99%), FPR interpolated linearly in TPR between the two neighbouring ROC points.
When no background passes there (FPR <= 0), R is reported as the effective number of background
events N_eff = (sum w)^2 / sum w^2 -- the rejection a sample of that size can establish, a
lower bound -- so the number stays finite and comparable.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "accuracy", "asimov_significance", "auc", "max_significance", "rejection_at_efficiency", "roc_curve",
    "s_over_sqrt_s_plus_b", "summary",
]


def _arrays(y, score, weight):
    y = np.asarray(y).astype(bool)
    score = np.asarray(score, dtype=np.float64)
    weight = np.ones(len(y)) if weight is None else np.asarray(weight, dtype=np.float64)
    if not (len(y) == len(score) == len(weight)):
        raise ValueError(f"labels, scores and weights differ in length ({len(y)}, {len(score)}, {len(weight)})")
    if np.isnan(score).any():
        raise ValueError("scores contain NaN")
    return y, score, weight


def accuracy(y, score, weight=None, threshold: float = 0.5) -> float:
    """Weighted fraction of events on the right side of ``threshold`` (score > threshold: signal).

    Signal and background enter with their yield weights; the classes are not re-balanced.
    """
    y, score, weight = _arrays(y, score, weight)
    correct = (score > threshold) == y
    return float(np.sum(weight[correct]) / np.sum(weight))


def _cumulative(y, score, weight):
    """(thresholds, s, b, background simulated events) passing 'score >= threshold', high to low."""
    y, score, weight = _arrays(y, score, weight)
    order = np.argsort(-score, kind="mergesort")
    score, y, weight = score[order], y[order], weight[order]
    last = np.r_[np.flatnonzero(np.diff(score)), len(score) - 1]  # the last index of each distinct score
    s = np.r_[0.0, np.cumsum(weight * y)[last]]
    b = np.r_[0.0, np.cumsum(weight * ~y)[last]]
    n_b = np.r_[0, np.cumsum(~y)[last]]
    return np.r_[np.inf, score[last]], s, b, n_b


def roc_curve(y, score, weight=None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds, s, b) for 'score >= threshold', thresholds from high to low.

    ``s``/``b`` are the weighted signal and background yields passing each threshold; the first
    point is (0, 0) at threshold +inf (nothing selected), as in scikit-learn.
    """
    thresholds, s, b, _ = _cumulative(y, score, weight)
    return b / b[-1], s / s[-1], thresholds, s, b


def auc(y, score, weight=None) -> float:
    """Area under the weighted ROC curve (trapezoids)."""
    fpr, tpr, *_ = roc_curve(y, score, weight)
    return float(np.trapezoid(tpr, fpr))


def asimov_significance(s, b, relative_uncertainty: float = 0.0):
    """Median discovery significance Z_A for s signal over b background events (Asimov data set).

    Without uncertainty: sqrt(2((s+b) ln(1+s/b) - s)). With a relative background uncertainty
    ``r`` (sigma_b = r b), Cowan's formula
    sqrt(2((s+b) ln((s+b)(b+sigma^2)/(b^2+(s+b)sigma^2)) - b^2/sigma^2 ln(1 + sigma^2 s/(b(b+sigma^2))))).
    NaN where b <= 0; s <= 0 gives 0.
    """
    s = np.asarray(s, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        if relative_uncertainty > 0:
            sigma2 = (relative_uncertainty * b) ** 2
            q = (s + b) * np.log((s + b) * (b + sigma2) / (b**2 + (s + b) * sigma2)) \
                - b**2 / sigma2 * np.log1p(sigma2 * s / (b * (b + sigma2)))
        else:
            q = (s + b) * np.log1p(s / b) - s
        z = np.sqrt(2 * np.maximum(q, 0.0))
    z = np.where(b > 0, np.where(s > 0, z, 0.0), np.nan)
    return float(z) if z.ndim == 0 else z


def s_over_sqrt_s_plus_b(s, b):
    """s / sqrt(s + b) (NaN where s + b <= 0)."""
    s, b = np.asarray(s, dtype=np.float64), np.asarray(b, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(s + b > 0, s / np.sqrt(s + b), np.nan)
    return float(z) if z.ndim == 0 else z


def max_significance(y, score, weight=None, min_background: float = 1.0, min_background_events: int = 10,
                     relative_uncertainty: float = 0.0) -> dict[str, float]:
    """The highest Asimov significance over the ROC thresholds ('score >= threshold').

    The minimum-background guard: thresholds leaving less than ``min_background`` weighted
    background events, or fewer than ``min_background_events`` simulated background events,
    are skipped. Without it the best threshold sits where the background estimate is a
    fluctuation of a few simulated events (each may weigh tens of events at the luminosity).
    Returns significance, threshold, s, b.
    """
    thresholds, s, b, n_b = _cumulative(y, score, weight)
    z = asimov_significance(s, b, relative_uncertainty)
    z = np.where((b >= min_background) & (n_b >= min_background_events), z, np.nan)
    if np.all(np.isnan(z)):
        return {"significance": float("nan"), "threshold": float("nan"), "s": float("nan"), "b": float("nan")}
    i = int(np.nanargmax(z))
    return {"significance": float(z[i]), "threshold": float(thresholds[i]), "s": float(s[i]), "b": float(b[i])}


def rejection_at_efficiency(y, score, weight=None, efficiency: float = 0.5) -> float:
    """Background rejection 1/FPR at signal efficiency ``efficiency`` (module docstring: the rule at FPR 0)."""
    y, score, weight = _arrays(y, score, weight)
    fpr, tpr, *_ = roc_curve(y, score, weight)
    i = int(np.argmax(tpr >= efficiency))
    if i == 0 or tpr[i] == tpr[i - 1]:
        rate = fpr[i]
    else:
        t = (efficiency - tpr[i - 1]) / (tpr[i] - tpr[i - 1])
        rate = fpr[i - 1] + t * (fpr[i] - fpr[i - 1])
    if rate <= 0:
        wb = weight[~y]
        return float(np.sum(wb) ** 2 / np.sum(wb**2))
    return float(1.0 / rate)


def summary(y, score, weight=None, min_background: float = 1.0, threshold: float = 0.5,
            min_background_events: int = 10) -> dict[str, float]:
    """The metrics crema reports for a discriminant.

    ``asimov_significance``: Z_A of the events with score > ``threshold`` (the classifier's own
    working point, 0.5 for a probability); ``max_significance``: the best Z_A over thresholds
    passing the minimum-background guard (:func:`max_significance`); ``r50``/``r99``: rejection at 50%/99% signal
    efficiency.
    """
    y, score, weight = _arrays(y, score, weight)
    passed = score > threshold
    s, b = float(np.sum(weight[passed & y])), float(np.sum(weight[passed & ~y]))
    best = max_significance(y, score, weight, min_background, min_background_events)
    return {
        "accuracy": accuracy(y, score, weight, threshold),
        "auc": auc(y, score, weight),
        "asimov_significance": asimov_significance(s, b),
        "s_over_sqrt_s_plus_b": s_over_sqrt_s_plus_b(s, b),
        "max_significance": best["significance"],
        "best_threshold": best["threshold"],
        "best_s": best["s"],
        "best_b": best["b"],
        "r50": rejection_at_efficiency(y, score, weight, 0.5),
        "r99": rejection_at_efficiency(y, score, weight, 0.99),
    }
