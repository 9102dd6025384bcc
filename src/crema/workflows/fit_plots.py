"""Plots of ``crema fit``: pre-/post-fit stacks with uncertainty bands, pulls, impacts, the Brazil plot.

Yields and their uncertainties come from cabinetry (``model_utils.prediction``); pulls and impacts
are cabinetry's own figures; stacks and the Brazil plot are drawn in CMS style like the run's plots.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cabinetry
import numpy as np

from crema.plotting import Panel, RunStyle, draw_panel, experiment_label, pyplot, save
from crema.stats.workspace import BuiltWorkspace


def draw_all(model, fitted, ranked, built: BuiltWorkspace, outdir: Path, top: int,
             style: RunStyle, x_label: str) -> list[Path]:
    """Pre- and post-fit stacks per channel (in the run's ``style``, ``x_label`` on the x axis),
    ``pulls.png`` and (with a ranking) ``impacts.png``."""
    written = []
    data_label = "data" if built.observed else "Asimov (B only)"
    observations = {o["name"]: np.asarray(o["data"]) for o in built.spec["observations"]}
    for label, prediction in (("prefit", cabinetry.model_utils.prediction(model)),
                              ("postfit", cabinetry.model_utils.prediction(model, fit_results=fitted))):
        for c, channel in enumerate(model.config.channels):
            path = outdir / f"{label}_{channel}.png"
            _stack(prediction, c, channel, model.config.samples, set(built.signals), built.edges[channel],
                   built.kept_bins[channel], observations[channel], data_label, label, x_label, style,
                   path)
            written.append(path)
    pyplot().style.use("default")  # cabinetry's figures carry their own style
    exclude = [p for p in model.config.par_names if p.startswith("staterror_")]
    fig = cabinetry.visualize.pulls(fitted, exclude=exclude, save_figure=False, close_figure=False)
    written.append(save(fig, outdir / "pulls.png"))
    if ranked is not None:
        fig = cabinetry.visualize.ranking(ranked, max_pars=top, save_figure=False, close_figure=False)
        written.append(save(fig, outdir / "impacts.png"))
    return written


def _full(values, keep: np.ndarray, n: int) -> np.ndarray:
    """Kept-bin values back on the run's binning (dropped bins: 0)."""
    out = np.zeros(n)
    out[keep] = values
    return out


def _stack(prediction, c: int, channel: str, samples: list[str], signals: set[str], edges: np.ndarray,
           keep: np.ndarray, observed: np.ndarray, data_label: str, label: str, x_label: str,
           style: RunStyle, path: Path) -> None:
    n = len(edges) - 1
    yields = {s: _full(prediction.model_yields[c][i], keep, n) for i, s in enumerate(samples)}
    band = _full(prediction.total_stdev_model_bins[c][-1], keep, n)
    # the run's stack order (largest background at the bottom), the signal on top, as fitted (pre-fit: mu = 1)
    backgrounds = [s for s in style.stack if s in yields and s not in signals]
    backgrounds += [s for s in samples if s not in signals and s not in backgrounds]
    stacked = [s for s in backgrounds + [s for s in samples if s in signals] if yields[s].any()]
    data = np.full(n, np.nan)
    data[keep] = observed  # bins the fit dropped show no point
    panel = Panel(edges=edges, x_label=x_label, backgrounds={s: (yields[s], np.zeros(n)) for s in stacked},
                  data=data, syst=(band, band), stat_band=False, total_label="total unc.",
                  data_label=data_label, observed=data_label == "data",
                  ratio_label=f"{'Data' if data_label == 'data' else 'Asimov'} / pred.",
                  title=f"{channel}, {label.replace('fit', '-fit')}")
    draw_panel(panel, style, path)


def brazil(scan: dict[str, Any], style: RunStyle, path: Path) -> Path:
    """Expected limit on mu vs mass with the 68% (green) and 95% (yellow) bands; observed where present."""
    points = scan["points"]
    mass = np.array([p["mass"] for p in points])
    e = {k: np.array([p["expected_limit"][k] for p in points]) for k in ("minus2", "minus1", "median", "plus1", "plus2")}
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 7))
    ax.fill_between(mass, e["minus2"], e["plus2"], color="#ffcc00", label="95% expected")
    ax.fill_between(mass, e["minus1"], e["plus1"], color="#00cc00", label="68% expected")
    ax.plot(mass, e["median"], "k--", label="median expected")
    observed = all("observed_limit" in p for p in points)
    if observed:
        ax.plot(mass, [p["observed_limit"] for p in points], "k-o", label="observed")
    ax.axhline(1.0, color="red", linewidth=1, label=r"$\mu = 1$")
    ax.set_yscale("log")
    ax.set_xlabel("Signal mass [GeV]")
    ax.set_ylabel(f"{round(100 * scan['confidence_level'])}% CL upper limit on $\\mu$")
    ax.legend(fontsize=14)
    experiment_label(ax, style, data=observed)
    return save(fig, path)
