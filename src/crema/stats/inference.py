"""Fits, significances and CLs limits of a pyhf model (cabinetry on pyhf's numpy backend with Minuit).

Expected quantities are a-priori (nuisance parameters at their nominal values):

* expected discovery significance: the q0 test (asymptotic) on the signal-plus-background Asimov
  dataset (``mu = 1``), i.e. the median significance if the signal is there;
* expected limit band: CLs (qtilde, asymptotic) on the background-only Asimov dataset (``mu = 0``),
  the median and +-1/2 sigma upper limits on ``mu`` at the configured confidence level;
* ``mu_hat``, pulls and constraints: the fit to the data, or to the ``mu = 1`` Asimov dataset
  without data (then ``mu_hat = 1`` and its uncertainty is the expected one).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Any

import cabinetry
import numpy as np
import pyhf

from crema.stats.workspace import POI


def use_minuit(strategy: int | None = None) -> None:
    """pyhf's numpy backend with the Minuit optimizer (scipy's has convergence trouble with recent scipy);
    ``strategy``: Minuit's (None: pyhf's choice, 1 without gradients)."""
    pyhf.set_backend("numpy", pyhf.optimize.minuit_optimizer(verbose=0, strategy=strategy))


def _quiet(call, *args, **kwargs):
    """``call(*args, **kwargs)`` (a cabinetry function) without Minuit's warnings on the terminal, and
    crema's quiet optimizer set again afterwards.

    cabinetry sets a verbose Minuit on the backend, and Minuit2 prints its warnings ("W MnPosDef Matrix
    forced pos-def ...", about the fit's internal Hessian, not its result) from C++ to the process's
    standard output: during the call that output goes to a temporary file, and all but those lines
    are passed on."""
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 1)
        try:
            return call(*args, **kwargs)
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
            use_minuit()
            captured.seek(0)
            lines = captured.read().decode(errors="replace").splitlines(keepends=True)
            kept = "".join(line for line in lines if not line.startswith("W "))
            if kept:
                sys.stdout.write(kept)


@dataclass
class Model:
    """A pyhf model with its observations (main + auxiliary data) and its Asimov datasets."""

    model: pyhf.pdf.Model
    data: list[float]
    asimov_b: list[float]
    asimov_sb: list[float]
    spec: dict[str, Any] = field(default_factory=dict, repr=False)  # what other processes rebuild it from

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "Model":
        use_minuit()
        workspace = pyhf.Workspace(spec)
        model = workspace.model()
        data = list(map(float, workspace.data(model)))
        return cls(model, data,
                   cabinetry.model_utils.asimov_data(model, poi_value=0.0),
                   cabinetry.model_utils.asimov_data(model, poi_value=1.0), spec)

    def dataset(self, key: str) -> list[float]:
        """``"observed"`` (the data) or ``"expected"`` (the background-only Asimov dataset)."""
        return self.data if key == "observed" else self.asimov_b


def fit(m: Model, observed: bool) -> cabinetry.fit.FitResults:
    """Maximum-likelihood fit to the data (``observed``) or to the ``mu = 1`` Asimov dataset."""
    return _quiet(cabinetry.fit.fit, m.model, m.data if observed else m.asimov_sb)


def significance(m: Model, observed: bool) -> dict[str, float]:
    """Expected (and with data, observed) discovery significance from the q0 test statistic."""
    out = {"expected_significance": float(_quiet(cabinetry.fit.significance, m.model, m.asimov_sb).observed_significance)}
    if observed:
        out["observed_significance"] = float(_quiet(cabinetry.fit.significance, m.model, m.data).observed_significance)
    return out


BAND = ("minus2", "minus1", "median", "plus1", "plus2")


def limits(m: Model, observed: bool, confidence_level: float = 0.95, points: int = 6,
           sigma: float | None = None, pool=None) -> dict[str, Any]:
    """Expected CLs upper limits on ``mu`` (median, +-1, +-2 sigma) and, with data, the observed one.

    A scan as pyhf's ``upper_limit`` does it: CLs (qtilde, asymptotic) at ``points`` values of ``mu``,
    each test giving the observed and the five expected CLs at once, and the crossings of 1 - CL
    interpolated linearly in log(CLs) (CLs falls about exponentially with ``mu``, so a coarse scan
    interpolates well). The scan spans 0.5 to 4.5 times the Asimov uncertainty ``sigma`` of ``mu``
    (asymptotically the expected band at 95% CL runs from about 1.1 to 3.7 sigma) and is widened (at
    most three times) until every crossing lies between two tested points. A point whose fit does not
    converge (Minuit with its default strategy and then strategy 2, typically far above the limit where
    the background parameters must absorb a huge signal) is left out of the interpolation; a crossing is
    only taken between converged points.
    ``sigma``: that uncertainty when already known (an Asimov fit). ``pool``: an executor from
    :func:`scan_pool` that tests the points of a round in parallel (the same numbers as one process).
    """
    poi = m.model.config.poi_index
    bounds = [tuple(b) for b in m.model.config.suggested_bounds()]
    sigma = fit(m, observed=False).uncertainty[poi] if sigma is None else sigma
    lo, hi = 0.5 * sigma, 4.5 * sigma
    alpha = 1.0 - confidence_level
    keys = ["expected", *(["observed"] if observed else [])]
    tested: dict[str, dict[float, np.ndarray]] = {k: {} for k in keys}
    failed: set[tuple[str, float]] = set()
    for _ in range(4):
        bounds[poi] = (0.0, max(bounds[poi][1], 2 * hi))
        todo = [(k, float(mu)) for mu in np.linspace(lo, hi, points) for k in keys
                if float(mu) not in tested[k] and (k, float(mu)) not in failed]
        if pool is None:
            outcomes = [_hypotest(m, mu, k, bounds) for k, mu in todo]
        else:
            outcomes = list(pool.map(_pooled_hypotest, [(mu, k, bounds) for k, mu in todo]))
        for (k, mu), outcome in zip(todo, outcomes):
            if outcome is None:
                failed.add((k, mu))
            else:
                tested[k][mu] = outcome
        crossings = {k: _crossings(by_mu, alpha) for k, by_mu in tested.items()}
        expected = crossings["expected"]
        found = [*expected, *(crossings["observed"] if observed else [])]
        if all(np.isfinite(found)):
            break
        below = [x for x in found if x == -np.inf]
        lo, hi = (lo / 2, hi) if below else (lo, hi * 2)
    else:
        raise ValueError(f"no {confidence_level:.0%} CL limit on mu below {hi:g}")
    out: dict[str, Any] = {"expected_limit": dict(zip(BAND, map(float, expected))),
                           "limit_scan": {"converged_points": sum(map(len, tested.values())),
                                          "failed_points": len(failed)}}
    if observed:
        out["observed_limit"] = float(crossings["observed"][0])
    return out


def _hypotest(m: Model, mu: float, key: str, bounds: list[tuple]) -> np.ndarray | None:
    """CLs at ``mu`` on ``m.dataset(key)``: the five expected values (``"expected"``) or the observed
    one; None when a fit does not converge, also with Minuit's most careful strategy (2), which is
    tried second: it costs about twice the time, and makes most of the points converge whose fits
    fail with the default (far from the best fit, where the MC statistical parameters must move)."""
    # pyhf logs every failed minimisation with its traceback; such a point is left out and counted
    pyhf_log = logging.getLogger("pyhf.optimize.mixins")
    pyhf_log.disabled = True
    try:
        for strategy in (None, 2):
            use_minuit(strategy)
            try:
                obs, exp = pyhf.infer.hypotest(mu, m.dataset(key), m.model, par_bounds=bounds, test_stat="qtilde",
                                               return_expected_set=True)
                break
            except (pyhf.exceptions.FailedMinimization, AssertionError):
                continue
        else:
            return None
    finally:
        pyhf_log.disabled = False
        use_minuit()
    return np.asarray(exp, dtype=float) if key == "expected" else np.atleast_1d(float(obs))


_POOLED: Model | None = None  # a scan worker's model, built once by its initializer


def _build_pooled(spec: dict[str, Any]) -> None:
    global _POOLED
    _POOLED = Model.from_spec(spec)


def _pooled_hypotest(args: tuple) -> np.ndarray | None:
    return _hypotest(_POOLED, *args)


def scan_pool(m: Model, workers: int):
    """A process pool whose workers hold ``m`` (rebuilt from its spec), for :func:`limits`; a null
    context for one worker. Started before the fits that precede the scan, so that the workers'
    start-up overlaps them."""
    if workers <= 1:
        return contextlib.nullcontext()
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    # spawn: forking a process that may hold threads (dask, onnxruntime) is unsafe
    return ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_build_pooled,
                               initargs=(m.spec,))


def _crossings(by_mu: dict[float, np.ndarray], alpha: float) -> list[float]:
    """Per CLs curve the mu where it falls through ``alpha``, linearly in log(CLs) between converged points;
    -inf when already below at the lowest point, +inf when still above at the highest (or no point)."""
    if not by_mu:
        return [np.inf]
    mus = np.array(sorted(by_mu))
    values = np.stack([by_mu[mu] for mu in mus])  # (points, curves)
    out = []
    for curve in values.T:
        if curve[0] < alpha:
            out.append(-np.inf)
            continue
        below = np.flatnonzero(curve < alpha)
        if not below.size:
            out.append(np.inf)
            continue
        i = below[0]
        x0, x1 = mus[i - 1], mus[i]
        y0, y1 = np.log(curve[i - 1]), np.log(max(curve[i], 1e-300))  # curve[i - 1] >= alpha; curve[i] may be 0
        out.append(float(x0 + (np.log(alpha) - y0) * (x1 - x0) / (y1 - y0)))
    return out


def expected_limit(m: Model, confidence_level: float = 0.95) -> dict[str, float]:
    """The expected limit band alone (``limits`` without data)."""
    return limits(m, False, confidence_level)["expected_limit"]


def parameters(m: Model, result: cabinetry.fit.FitResults) -> dict[str, dict[str, float]]:
    """Per parameter: best-fit value, uncertainty, and for constrained ones the pull
    ``(theta_hat - theta_0) / sigma_prefit`` and the constraint ``sigma_hat / sigma_prefit``."""
    prefit = cabinetry.model_utils.prefit_uncertainties(m.model)
    init = m.model.config.suggested_init()
    out = {}
    for i, label in enumerate(result.labels):
        entry = {"value": float(result.bestfit[i]), "uncertainty": float(result.uncertainty[i])}
        if prefit[i] > 0:  # constrained: normsys/histosys (Gaussian, sigma 1), staterror gammas
            entry["pull"] = float((result.bestfit[i] - init[i]) / prefit[i])
            entry["constraint"] = float(result.uncertainty[i] / prefit[i])
        out[label] = entry
    return out


def ranking(m: Model, result: cabinetry.fit.FitResults, observed: bool) -> cabinetry.fit.RankingResults:
    """cabinetry's impact ranking: the shift of ``mu_hat`` with each parameter at +-1 sigma pre- and post-fit."""
    return _quiet(cabinetry.fit.ranking, m.model, m.data if observed else m.asimov_sb, fit_results=result)


def ranking_table(r: cabinetry.fit.RankingResults, top: int) -> list[dict[str, Any]]:
    """The ``top`` parameters by post-fit impact, largest first (the order cabinetry draws)."""
    impact = np.maximum(np.abs(r.postfit_up), np.abs(r.postfit_down))
    order = np.argsort(-impact, kind="stable")[:top]
    return [{"parameter": r.labels[i], "prefit_up": float(r.prefit_up[i]), "prefit_down": float(r.prefit_down[i]),
             "postfit_up": float(r.postfit_up[i]), "postfit_down": float(r.postfit_down[i])} for i in order]


def analyse(spec: dict[str, Any], observed: bool, confidence_level: float = 0.95,
            top_impacts: int = 0, workers: int = 1) -> tuple[dict[str, Any], Model, cabinetry.fit.FitResults,
                                                             cabinetry.fit.RankingResults | None]:
    """Everything ``crema fit`` reports for a workspace spec: significances, limits, ``mu_hat``,
    parameters and (``top_impacts`` > 0) the impact ranking. Returns (results, model, fit, ranking).
    ``workers`` > 1: the CLs scan's points are tested by that many processes."""
    m = Model.from_spec(spec)
    with scan_pool(m, workers) as pool:
        result = fit(m, observed)
        poi = m.model.config.poi_index
        first = significance(m, observed)
        scan = limits(m, observed, confidence_level, sigma=None if observed else float(result.uncertainty[poi]),
                      pool=pool)
    results: dict[str, Any] = {
        "observed": observed,
        **first,
        **scan,
        "confidence_level": confidence_level,
        "mu_hat": float(result.bestfit[poi]),
        "mu_hat_uncertainty": float(result.uncertainty[poi]),
        "fit_data": "data" if observed else "asimov (mu=1)",
        "parameters": {k: v for k, v in parameters(m, result).items() if k != POI},
    }
    ranked = None
    if top_impacts > 0:
        ranked = ranking(m, result, observed)
        results["impacts"] = ranking_table(ranked, top_impacts)
    return results, m, result, ranked
