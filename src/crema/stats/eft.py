"""Binned EFT intervals: Poisson likelihood with per-bin quadratic yields, minimised with iminuit.

Expected yields nu_b(c, theta) = sum_t T_tb m_t(c) + sum_s theta_s sum_t D_stb m_t(c) with T the
nominal term templates (summed over processes), D_s = (up - down) / 2 of systematic s and
m(c) = [1, c_i, c_i^2, c_i c_j]; Asimov data n = nu(0, 0); -2 ln L = 2 sum (nu - n ln nu) + sum theta^2.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import uproot
from iminuit import Minuit
from scipy.optimize import brentq

from crema.histograms.eft import term_names, term_vector
from crema.plotting import CMS_PALETTE_6, RunStyle, experiment_label, pyplot, read_style, save

THRESHOLDS = {"68": 1.0, "95": 3.841458820694124}  # Delta(-2 ln L) of 1D 68% / 95% CL intervals


@dataclass
class EFTModel:
    """Term templates of the chosen observables: ``nominal`` (terms, bins), ``deltas`` (systematics, terms, bins)."""

    wc_names: list[str]
    nominal: np.ndarray
    deltas: np.ndarray
    systematics: list[str]

    def expected(self, point, theta=None) -> np.ndarray:
        m = term_vector(np.asarray(point, dtype=np.float64))
        nu = m @ self.nominal
        if theta is not None and len(self.systematics):
            nu = nu + np.einsum("s,stb,t->b", np.asarray(theta), self.deltas, m)
        return nu

    def nll2(self, point, data, theta=None) -> float:
        """-2 ln L (up to a constant) of ``data``."""
        nu = np.maximum(self.expected(point, theta), 1e-12)
        ok = data > 0
        value = 2.0 * float(np.sum(nu) - np.sum(data[ok] * np.log(nu[ok])))
        if theta is not None:
            value += float(np.sum(np.square(theta)))
        return value

    def nll2_grid(self, points: np.ndarray, data) -> np.ndarray:
        """-2 ln L at many points (P, n_wc), nuisance parameters at 0."""
        nu = np.maximum(term_vector(points) @ self.nominal, 1e-12)
        ok = data > 0
        return 2.0 * (nu.sum(axis=1) - (np.log(nu[:, ok]) * data[ok]).sum(axis=1))


@dataclass
class UnbinnedModel:
    """Extended unbinned likelihood of weighted events: -2 ln L(c) = 2 [nu(c) - sum_k w_k ln r(x_k, c)].

    ``terms``: (N, n_terms - 1) per-event ratio terms (learned NN_t or exact coefficients) with
    r = 1 + terms @ monomials(c)[1:]; ``weights``: event weights (the data: Asimov SM events);
    ``yields``: (n_terms,) expected yield terms, nu(c) = yields @ monomials(c) (for weighted SM
    events: weights @ [1, terms], the Monte Carlo integral of dsigma_SM r).  r is floored at
    1e-12 (as the binned yields are), so points where a learned r turns negative are heavily disfavoured.
    """

    wc_names: list[str]
    terms: np.ndarray
    weights: np.ndarray
    yields: np.ndarray
    systematics: list[str] = field(default_factory=list)

    def nll2_grid(self, points: np.ndarray, data=None) -> np.ndarray:
        m = term_vector(np.atleast_2d(np.asarray(points, dtype=np.float64)))
        r = 1.0 + self.terms @ m[:, 1:].T  # (N, P)
        return 2.0 * (m @ self.yields - self.weights @ np.log(np.maximum(r, 1e-12)))

    def nll2(self, point, data=None, theta=None) -> float:
        return float(self.nll2_grid(np.asarray(point, dtype=np.float64)[None, :])[0])


def load_model(run_dir: str | Path, observables: list[str], wc_names: list[str], systematics: bool = False,
               region: str = "inclusive") -> EFTModel:
    """Term templates of ``observables`` (all channels and simulated processes) from ``eft_templates.root``."""
    path = Path(run_dir) / "eft_templates.root"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no EFT templates (run a ttbar_eft config first)")
    terms = term_names(wc_names)
    nominal, ups, downs = [], {}, {}
    with uproot.open(path) as f:
        dirs = {k.split(";")[0] for k in f.keys(recursive=False)}
        for obs in observables:
            chosen = sorted(d for d in dirs if d.endswith(f"_{region}_{obs}"))
            if not chosen:
                raise KeyError(f"{path}: no templates of observable {obs!r} in region {region!r}")
            for d in chosen:
                names = {k.split(";")[0] for k in f[d].keys()}
                procs = sorted({n[: -len("_sm")] for n in names if n.endswith("_sm") and not n.startswith("data_obs")})
                block = sum(np.stack([f[d][f"{p}_{t}"].values().ravel() for t in terms]) for p in procs)
                nominal.append(block)
                if systematics:
                    prefix = f"{procs[0]}_sm_"
                    variations = sorted(n[len(prefix):-2] for n in names if n.startswith(prefix) and n.endswith("Up"))
                    for s in variations:
                        up = sum(np.stack([f[d][f"{p}_{t}_{s}Up"].values().ravel() for t in terms]) for p in procs)
                        down = sum(np.stack([f[d][f"{p}_{t}_{s}Down"].values().ravel() for t in terms]) for p in procs)
                        ups.setdefault(s, []).append(up - block)
                        downs.setdefault(s, []).append(down - block)
    nominal_arr = np.concatenate(nominal, axis=1)
    names = sorted(ups)
    deltas = np.stack([0.5 * (np.concatenate(ups[s], axis=1) - np.concatenate(downs[s], axis=1)) for s in names]) \
        if names else np.zeros((0, *nominal_arr.shape))
    return EFTModel(list(wc_names), nominal_arr, deltas, names)


def profile_nll2(model: EFTModel | UnbinnedModel, data: np.ndarray, fixed: dict[int, float], profile_wc: bool) -> float:
    """Minimum of -2 ln L with the WCs in ``fixed`` held, the others free (``profile_wc``) or at 0, nuisances free."""
    n_wc = len(model.wc_names)
    free_wc = [i for i in range(n_wc) if i not in fixed] if profile_wc else []
    n_s = len(model.systematics)
    if not free_wc and not n_s:
        point = np.zeros(n_wc)
        for i, v in fixed.items():
            point[i] = v
        return model.nll2(point, data)

    def fcn(x):
        point = np.zeros(n_wc)
        for i, v in fixed.items():
            point[i] = v
        point[free_wc] = x[: len(free_wc)]
        return model.nll2(point, data, x[len(free_wc):] if n_s else None)

    m = Minuit(fcn, np.zeros(len(free_wc) + n_s))
    m.errordef = Minuit.LIKELIHOOD * 2  # -2 ln L
    m.strategy = 1
    m.migrad()
    return float(m.fval)


def scan(model: EFTModel | UnbinnedModel, data: np.ndarray, index: int, grid: np.ndarray, profile_wc: bool) -> np.ndarray:
    """Delta(-2 ln L) along coefficient ``index`` on ``grid`` (relative to the SM point: Asimov SM data)."""
    best = profile_nll2(model, data, {index: 0.0}, profile_wc)
    return np.array([profile_nll2(model, data, {index: float(x)}, profile_wc) for x in grid]) - best


def intervals(model: EFTModel | UnbinnedModel, data, index: int, profile_wc: bool, grid: np.ndarray,
              values: np.ndarray | None = None) -> dict[str, list[float]]:
    """{"68": [lo, hi], "95": [lo, hi]}: where Delta(-2 ln L) crosses each threshold nearest to 0 on
    ``grid`` (``values``: its scan, computed if not given), refined with brentq."""
    best = profile_nll2(model, data, {index: 0.0}, profile_wc)
    values = scan(model, data, index, grid, profile_wc) if values is None else values
    zero = int(np.argmin(np.abs(grid)))
    out = {}
    for level, thr in THRESHOLDS.items():
        f = lambda x: profile_nll2(model, data, {index: float(x)}, profile_wc) - best - thr  # noqa: E731
        above = values - thr
        lo = next((brentq(f, grid[k - 1], grid[k], xtol=1e-6) for k in range(zero, 0, -1)
                   if above[k] < 0 <= above[k - 1]), None)
        hi = next((brentq(f, grid[k], grid[k + 1], xtol=1e-6) for k in range(zero, len(grid) - 1)
                   if above[k] < 0 <= above[k + 1]), None)
        if lo is None or hi is None:
            raise ValueError(f"{model.wc_names[index]}: the {level}% interval does not close within "
                             f"[{grid[0]:g}, {grid[-1]:g}]")
        out[level] = [float(lo), float(hi)]
    return out


def fit(run_dir, observables: list[str], outdir, wc_names: list[str] | None = None, systematics: bool = False,
        span: float = 10.0, points: int = 81, plots: bool = True) -> dict:
    """Intervals of every coefficient (fixed: others at 0; profiled: others free) and a 2D scan; writes eft_fit.json."""
    run_dir = Path(run_dir)
    wc_names = wc_names or _wc_names_from_templates(run_dir)
    model = load_model(run_dir, observables, wc_names, systematics)
    data = model.expected(np.zeros(len(wc_names)))
    result = {"observables": list(observables), "systematics": model.systematics}
    return fit_model(model, data, result, outdir, span, points, plots, style=read_style(run_dir))


def fit_model(model: EFTModel | UnbinnedModel, data, result: dict, outdir=None, span: float = 10.0,
              points: int = 81, plots: bool = True, modes=("fixed", "profiled"), contour_2d: bool = True,
              style: RunStyle | None = None) -> dict:
    """Scans, 68/95% intervals (``modes``) and the 2D contour of any model; adds them to ``result``
    and writes ``outdir/eft_fit.json`` (and plots, labelled with the run's ``style``) when ``outdir`` is given."""
    grid = np.linspace(-span, span, points)
    result.update({"intervals": {}, "scans": {}})
    for i, wc in enumerate(model.wc_names):
        scans = {mode: scan(model, data, i, grid, mode == "profiled") for mode in modes}
        result["intervals"][wc] = {mode: intervals(model, data, i, mode == "profiled", grid, values)
                                   for mode, values in scans.items()}
        result["scans"][wc] = {"grid": grid.tolist(), **{mode: v.tolist() for mode, v in scans.items()}}
    if contour_2d and len(model.wc_names) >= 2:
        result["contour"] = contour(model, data, result["intervals"], model.wc_names[:2])
    if outdir is not None:
        outdir = Path(outdir)
        outdir.mkdir(parents=True, exist_ok=True)
        (outdir / "eft_fit.json").write_text(json.dumps(result, indent=2))
        if plots:
            _plot(result, outdir, style or RunStyle(processes={}))
    return result


def contour(model: EFTModel | UnbinnedModel, data, intervals: dict, pair: list[str], n: int = 41) -> dict:
    """Delta(-2 ln L) on a grid of two coefficients (the others and the nuisance parameters at 0),
    spanning 1.5x their fixed 95% intervals."""
    idx = [model.wc_names.index(w) for w in pair]
    axes = []
    for w in pair:
        lo, hi = intervals[w]["fixed"]["95"]
        half = 1.5 * max(abs(lo), abs(hi))
        axes.append(np.linspace(-half, half, n))
    xx, yy = np.meshgrid(*axes, indexing="ij")
    pts = np.zeros((xx.size, len(model.wc_names)))
    pts[:, idx[0]], pts[:, idx[1]] = xx.ravel(), yy.ravel()
    nll = model.nll2_grid(pts, data) - model.nll2(np.zeros(len(model.wc_names)), data)
    return {"wc": pair, "x": axes[0].tolist(), "y": axes[1].tolist(), "delta_nll2": nll.reshape(xx.shape).tolist(),
            "nuisances": "fixed at 0"}


def _wc_names_from_templates(run_dir: Path) -> list[str]:
    yields = json.loads((run_dir / "eft_yields.json").read_text())
    terms = next(iter(next(iter(next(iter(yields.values())).values())).values()))
    return [t[4:] for t in terms if t.startswith("lin_")]


def _plot(result: dict, outdir: Path, style: RunStyle) -> None:
    """``scan_<wc>.png`` per coefficient and ``contour.png``, in crema's plot style (expected: Asimov SM data)."""
    plt = pyplot()
    for wc, s in result["scans"].items():
        fig, ax = plt.subplots(figsize=(8, 7))
        for mode, label in (("fixed", "others at 0"), ("profiled", "others profiled")):
            if mode in s:
                ax.plot(s["grid"], s[mode], label=label, linewidth=2.5)
        for level, thr in THRESHOLDS.items():
            ax.axhline(thr, ls="--", lw=1, color="grey")
        ax.set_ylim(0, 10)
        ax.set_xlim(s["grid"][0], s["grid"][-1])
        ax.set_xlabel(wc)
        ax.set_ylabel(r"$-2\Delta\ln L$")
        ax.legend(title=", ".join(result["observables"]), fontsize=14, title_fontsize=14, loc="upper center")
        experiment_label(ax, style, data=False)
        save(fig, outdir / f"scan_{wc}.png")
    if "contour" in result:
        c = result["contour"]
        fig, ax = plt.subplots(figsize=(8, 7))
        colors = CMS_PALETTE_6[:2]
        ax.contour(c["x"], c["y"], np.asarray(c["delta_nll2"]).T, levels=[2.30, 5.99], colors=colors, linewidths=2.5)
        sm = ax.plot([0], [0], "k+", markersize=14)
        handles = [plt.Line2D([], [], color=col, lw=2.5) for col in colors] + sm
        ax.legend(handles, ["68% CL", "95% CL", "SM"], title="others at 0", fontsize=14, title_fontsize=14)
        ax.set_xlabel(c["wc"][0])
        ax.set_ylabel(c["wc"][1])
        experiment_label(ax, style, data=False)
        save(fig, outdir / "contour.png")
