"""Plots of a run: stacked backgrounds with the signal overlaid, per channel, region and observable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on batch nodes
import matplotlib.pyplot as plt  # noqa: E402
import mplhep as hep  # noqa: E402
import numpy as np  # noqa: E402

from crema.processors.common import SampleInfo  # noqa: E402
from crema.workflows.outputs import NOMINAL, process_histograms  # noqa: E402


def plot_all(output: dict[str, Any], samples: dict[str, SampleInfo], outdir: str | Path,
             regions: list[str] | None = None, observables: list[str] | None = None) -> list[Path]:
    """One PNG per (channel, region, observable) with nominal histograms; returns the paths.

    ``regions``/``observables`` restrict what is drawn (None: all); empty panels are skipped.
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    kinds = {("data_obs" if s.kind == "data" else s.process): s.kind for s in samples.values()}
    plt.style.use(hep.style.CMS)
    written = []
    for observable, h in output["histograms"].items():
        if observables is not None and observable not in observables:
            continue
        by_key = process_histograms(h, samples)
        panels = sorted({(ch, reg) for ch, reg, syst, _ in by_key if syst == NOMINAL})
        for channel, region in panels:
            if regions is not None and region not in regions:
                continue
            procs = {p: one for (ch, reg, syst, p), one in by_key.items()
                     if (ch, reg, syst) == (channel, region, NOMINAL)}
            if not any(one.sum().value for one in procs.values()):
                continue
            path = outdir / f"{channel}_{region}_{observable}.png"
            _draw(procs, kinds, f"{channel.upper()}, {region}", output.get("luminosity_fb"), path)
            written.append(path)
    return written


def _draw(procs, kinds, title, lumi, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 7))
    # largest background at the bottom of the stack
    backgrounds = sorted((p for p in procs if kinds.get(p) == "background"), key=lambda p: -procs[p].sum().value)
    top = 0.0
    if backgrounds:
        hep.histplot([procs[p] for p in backgrounds], ax=ax, stack=True, histtype="fill", label=backgrounds)
        top = sum(procs[p].values() for p in backgrounds).max()
    for p in (p for p in procs if kinds.get(p) == "signal"):
        factor = signal_scale(procs[p].values().max(), top)
        label = p if factor == 1 else f"{p} $\\times$ {factor:g}"
        hep.histplot(procs[p] * factor, ax=ax, histtype="step", linewidth=2.5, color="black", label=label)
    if "data_obs" in procs:
        hep.histplot(procs["data_obs"], ax=ax, histtype="errorbar", color="black", label="data")
    ax.set_ylabel("Events")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=13, title=title, title_fontsize=13)
    hep.cms.label(data="data_obs" in procs, lumi=lumi, com=13.6, ax=ax, fontsize=16)
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)


def signal_scale(signal_max: float, background_max: float) -> float:
    """A power of ten that lifts a small signal to a visible fraction (about 1/3) of the background."""
    if signal_max <= 0 or background_max <= 0 or signal_max >= background_max / 3:
        return 1.0
    return float(10 ** np.floor(np.log10(background_max / 3 / signal_max)))
