"""Plots of a run: stacked backgrounds with the signal overlaid, per channel, region and observable."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on batch nodes
import matplotlib.pyplot as plt  # noqa: E402
import mplhep as hep  # noqa: E402
import numpy as np  # noqa: E402

from crema.processors.common import SampleInfo  # noqa: E402
from crema.workflows.outputs import NOMINAL, process_histograms  # noqa: E402


def _process_kinds(samples: dict[str, SampleInfo]) -> dict[str, str]:
    """Process label (``data_obs`` for data) -> signal/background/data."""
    return {("data_obs" if s.kind == "data" else s.process): s.kind for s in samples.values()}


def _panels(output: dict[str, Any], samples: dict[str, SampleInfo], regions: list[str] | None,
            observables: list[str] | None, systematics: list[str]) -> Iterator[tuple[str, str, str, dict]]:
    """(observable, channel, region, per-process histograms of ``systematics``) for every panel."""
    for observable, h in output["histograms"].items():
        if observables is not None and observable not in observables:
            continue
        by_key = process_histograms(h, samples, systematics)
        for channel in h.axes["channel"]:
            for region in h.axes["region"]:
                if regions is None or region in regions:
                    yield observable, channel, region, by_key


def plot_all(output: dict[str, Any], samples: dict[str, SampleInfo], outdir: str | Path,
             regions: list[str] | None = None, observables: list[str] | None = None) -> list[Path]:
    """One PNG per (channel, region, observable) with nominal histograms; returns the paths.

    ``regions``/``observables`` restrict what is drawn (None: all); empty panels are skipped.
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    kinds = _process_kinds(samples)
    plt.style.use(hep.style.CMS)
    written = []
    for observable, channel, region, by_key in _panels(output, samples, regions, observables, [NOMINAL]):
        procs = {p: one for (ch, reg, syst, p), one in by_key.items() if (ch, reg, syst) == (channel, region, NOMINAL)}
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


def plot_variation(output: dict[str, Any], samples: dict[str, SampleInfo], systematic: str, outdir: str | Path,
                   process: str | None = None, regions: list[str] | None = None,
                   observables: list[str] | None = None) -> list[Path]:
    """Nominal vs ``<systematic>Up``/``Down`` with an up/nominal and down/nominal ratio panel.

    ``process`` names one process; by default all background processes are summed.
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    names = {"nominal": NOMINAL, "up": f"{systematic}Up", "down": f"{systematic}Down"}
    known = set(next(iter(output["histograms"].values())).axes["systematic"])
    if not {names["up"], names["down"]} <= known:
        stems = sorted({k[:-2] for k in known if k.endswith("Up")})
        raise ValueError(f"no variation {systematic!r} in this output (it has: {', '.join(stems) or 'none'})")
    kinds = _process_kinds(samples)
    chosen = [process] if process else [p for p, k in kinds.items() if k == "background"]
    if process and process not in kinds:
        raise ValueError(f"no process {process!r} (known: {', '.join(sorted(kinds))})")
    plt.style.use(hep.style.CMS)
    written = []
    for observable, channel, region, by_key in _panels(output, samples, regions, observables, list(names.values())):
        parts = {k: [by_key[(channel, region, v, p)] for p in chosen if (channel, region, v, p) in by_key]
                 for k, v in names.items()}
        if not parts["nominal"] or not sum(x.sum().value for x in parts["nominal"]):
            continue
        hs = {k: sum(v[1:], v[0]) for k, v in parts.items()}
        path = outdir / f"{systematic}_{channel}_{region}_{observable}.png"
        _draw_variation(hs, f"{channel.upper()}, {region}: {process or 'backgrounds'}", systematic, path)
        written.append(path)
    return written


def _draw_variation(hs, title, systematic, path: Path) -> None:
    fig, (ax, rax) = plt.subplots(2, 1, figsize=(8, 8), sharex=True, gridspec_kw={"height_ratios": (3, 1), "hspace": 0.05})
    styles = {"nominal": ("black", "nominal"), "up": ("tab:red", f"{systematic} up"), "down": ("tab:blue", f"{systematic} down")}
    for key, (color, label) in styles.items():
        hep.histplot(hs[key], ax=ax, histtype="step", color=color, label=label, linewidth=2, yerr=False)
    nominal = hs["nominal"].values()
    edges = hs["nominal"].axes[0].edges
    with np.errstate(divide="ignore", invalid="ignore"):
        for key in ("up", "down"):
            ratio = np.where(nominal > 0, hs[key].values() / nominal, np.nan)
            rax.stairs(ratio, edges, color=styles[key][0], linewidth=2, baseline=None)
    rax.axhline(1.0, color="black", linewidth=1)
    rax.set_ylabel("var / nom")
    rax.set_xlabel(hs["nominal"].axes[0].label)
    ax.set_xlabel("")
    ax.set_ylabel("Events")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=13, title=title, title_fontsize=12)
    hep.cms.label(data=False, com=13.6, ax=ax, fontsize=16)
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)
