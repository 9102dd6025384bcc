"""Plots of ``crema fit``: pre-/post-fit stacks with uncertainty bands, pulls, impacts, the Brazil plot.

Yields and their uncertainties come from cabinetry (``model_utils.prediction``); pulls and impacts
are cabinetry's own figures; stacks and the Brazil plot are drawn in CMS style like the run's plots.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cabinetry
import matplotlib

matplotlib.use("Agg")  # files only
import matplotlib.pyplot as plt  # noqa: E402
import mplhep as hep  # noqa: E402
import numpy as np  # noqa: E402

from crema.stats.workspace import BuiltWorkspace  # noqa: E402


def draw_all(model, fitted, ranked, built: BuiltWorkspace, inputs, outdir: Path, top: int) -> list[Path]:
    """Pre- and post-fit stacks per channel, ``pulls.png`` and (with a ranking) ``impacts.png``."""
    written = []
    data_label = "data" if built.observed else "Asimov (B only)"
    observations = {o["name"]: np.asarray(o["data"]) for o in built.spec["observations"]}
    lumi = inputs.config.luminosity_fb
    for label, prediction in (("prefit", cabinetry.model_utils.prediction(model)),
                              ("postfit", cabinetry.model_utils.prediction(model, fit_results=fitted))):
        for c, channel in enumerate(model.config.channels):
            path = outdir / f"{label}_{channel}.png"
            _stack(prediction, c, channel, model.config.samples, set(built.signals), built.edges[channel],
                   built.kept_bins[channel], observations[channel], data_label, label, lumi, inputs.fit.observable, path)
            written.append(path)
    plt.style.use("default")  # cabinetry's figures carry their own style
    exclude = [p for p in model.config.par_names if p.startswith("staterror_")]
    fig = cabinetry.visualize.pulls(fitted, exclude=exclude, save_figure=False, close_figure=False)
    written.append(_save(fig, outdir / "pulls.png"))
    if ranked is not None:
        fig = cabinetry.visualize.ranking(ranked, max_pars=top, save_figure=False, close_figure=False)
        written.append(_save(fig, outdir / "impacts.png"))
    return written


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)
    return path


def _full(values, keep: np.ndarray, n: int) -> np.ndarray:
    """Kept-bin values back on the run's binning (dropped bins: 0)."""
    out = np.zeros(n)
    out[keep] = values
    return out


def _stack(prediction, c: int, channel: str, samples: list[str], signals: set[str], edges: np.ndarray,
           keep: np.ndarray, observed: np.ndarray, data_label: str, label: str, lumi: float, observable: str,
           path: Path) -> None:
    n = len(edges) - 1
    yields = {s: _full(prediction.model_yields[c][i], keep, n) for i, s in enumerate(samples)}
    total = _full(np.sum([prediction.model_yields[c][i] for i in range(len(samples))], axis=0), keep, n)
    band = _full(prediction.total_stdev_model_bins[c][-1], keep, n)
    backgrounds = sorted((s for s in samples if s not in signals and yields[s].any()), key=lambda s: yields[s].sum())
    plt.style.use(hep.style.CMS)
    fig, (ax, rax) = plt.subplots(2, 1, figsize=(8, 8), sharex=True, gridspec_kw={"height_ratios": (3, 1), "hspace": 0.05})
    # signal on top of the stack, as fitted (pre-fit: mu = 1)
    stacked = backgrounds + [s for s in samples if s in signals and yields[s].any()]
    hep.histplot([yields[s] for s in stacked], edges, ax=ax, stack=True, histtype="fill", label=stacked)
    ax.stairs(total + band, edges, baseline=total - band, fill=True, color="none", edgecolor="gray", hatch="///",
              linewidth=0, label="total unc.")
    data = _full(observed, keep, n)
    centres = 0.5 * (edges[1:] + edges[:-1])
    shown = np.isin(np.arange(n), keep)
    ax.errorbar(centres[shown], data[shown], yerr=np.sqrt(data[shown]), fmt="o", color="black", label=data_label)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(total > 0, data / total, np.nan)
        rel = np.where(total > 0, band / total, np.nan)
        rax.stairs(1 + rel, edges, baseline=1 - rel, fill=True, color="lightgray")
        rax.errorbar(centres[shown], ratio[shown], yerr=(np.sqrt(data) / total)[shown], fmt="o", color="black")
    rax.axhline(1.0, color="black", linewidth=1)
    rax.set_ylim(0.5, 1.5)
    rax.set_ylabel(f"{'Data' if data_label == 'data' else 'Asimov'} / pred.")
    rax.set_xlabel(observable)
    ax.set_ylabel("Events")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=12, title=f"{channel}, {label.replace('fit', '-fit')}", title_fontsize=12, ncol=2)
    hep.cms.label(data=data_label == "data", lumi=lumi, com=13.6, ax=ax, fontsize=16)
    _save(fig, path)


def brazil(scan: dict[str, Any], lumi: float, path: Path) -> Path:
    """Expected limit on mu vs mass with the 68% (green) and 95% (yellow) bands; observed where present."""
    points = scan["points"]
    mass = np.array([p["mass"] for p in points])
    e = {k: np.array([p["expected_limit"][k] for p in points]) for k in ("minus2", "minus1", "median", "plus1", "plus2")}
    plt.style.use(hep.style.CMS)
    fig, ax = plt.subplots(figsize=(8, 7))
    ax.fill_between(mass, e["minus2"], e["plus2"], color="#ffcc00", label="95% expected")
    ax.fill_between(mass, e["minus1"], e["plus1"], color="#00cc00", label="68% expected")
    ax.plot(mass, e["median"], "k--", label="median expected")
    if all("observed_limit" in p for p in points):
        ax.plot(mass, [p["observed_limit"] for p in points], "k-o", label="observed")
    ax.axhline(1.0, color="red", linewidth=1, label=r"$\mu = 1$")
    ax.set_yscale("log")
    ax.set_xlabel("Signal mass [GeV]")
    ax.set_ylabel(f"{round(100 * scan['confidence_level'])}% CL upper limit on $\\mu$")
    ax.legend(fontsize=14)
    hep.cms.label(data=False, lumi=lumi, com=13.6, ax=ax, fontsize=16)
    return _save(fig, path)
