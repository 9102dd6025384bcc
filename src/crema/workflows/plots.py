"""Plots of a run: stacked backgrounds with uncertainty bands, signals as lines, data with a ratio panel,
per channel, region and observable; and systematic variations against nominal.

The look is :mod:`crema.plotting`'s; :func:`run_style` fixes it once per run (colours, stack order,
signal scale, labels) and ``run.json`` keeps it for ``crema plot``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from crema.plotting import DATA, Panel, RunStyle, choose_signal_scale, default_colors, envelope
from crema.processors.common import SampleInfo

if TYPE_CHECKING:
    from crema.workflows.config import Config

NOMINAL = "nominal"


def _process_of(info: SampleInfo) -> str:
    return DATA if info.kind == "data" else info.process


def _groups(h, samples: dict[str, SampleInfo]) -> dict[str, list[int]]:
    """Process -> rows of the dataset axis, in the order processes first appear in ``samples``."""
    order = {p: i for i, p in enumerate(dict.fromkeys(_process_of(s) for s in samples.values()))}
    groups: dict[str, list[int]] = {}
    for i, dataset in enumerate(h.axes["dataset"]):
        groups.setdefault(_process_of(samples[dataset]), []).append(i)
    return dict(sorted(groups.items(), key=lambda kv: order.get(kv[0], len(order))))


def _weighted_view(h, observable: str, flow: bool) -> np.ndarray:
    """The histogram's (value, variance) view; an error naming ``observable`` without Weight storage."""
    view = h.view(flow=flow)
    if "variance" not in (view.dtype.names or ()):
        raise ValueError(f"{observable}: the histogram has no Weight storage (sums of weights and of squared "
                         "weights), which the MC statistical band needs")
    return view


def process_totals(output: dict[str, Any], samples: dict[str, SampleInfo]) -> dict[str, float]:
    """Each process's nominal yield in the ``inclusive`` region (all channels, with under/overflow).

    An observable filled only for some events (the DL-only lepton, DeepHME) sees fewer: the largest
    over observables is taken. Without an ``inclusive`` region the largest region counts.
    """
    totals: dict[str, float] = {}
    for observable, h in output["histograms"].items():
        values = _weighted_view(h, observable, flow=True)["value"]
        regions = list(h.axes["region"])
        chosen = [regions.index("inclusive")] if "inclusive" in regions else range(len(regions))
        nominal = list(h.axes["systematic"]).index(NOMINAL)
        for process, rows in _groups(h, samples).items():
            per_region = [float(values[rows][:, :, r, nominal].sum()) for r in chosen]
            totals[process] = max(totals.get(process, 0.0), max(per_region, default=0.0))
    return totals


def run_style(output: dict[str, Any] | None, samples: dict[str, SampleInfo], config: Config | None = None,
              totals: dict[str, float] | None = None) -> RunStyle:
    """The style of every plot of this run, from the config (colours, labels, plot options) and the
    run's inclusive yields (stack order, the default signal scale): ``totals`` per process, else
    :func:`process_totals` of ``output`` (with neither: config order, scale 1 unless configured)."""
    processes = {_process_of(s): s.kind for s in samples.values()}
    simulated = [p for p, kind in processes.items() if kind != "data"]
    colors = default_colors(simulated)
    overrides = config.processes if config is not None else {}
    styles = {}
    for p, kind in processes.items():
        own = overrides.get(p)
        color = own.color if own is not None and own.color else colors.get(p, "black")
        label = own.label if own is not None and own.label else ("Data" if kind == "data" else p)
        styles[p] = {"kind": kind, "color": color, "label": label}
    if totals is None:
        totals = process_totals(output, samples) if output is not None else {}
    backgrounds = [p for p in simulated if processes[p] == "background"]
    stack = sorted(backgrounds, key=lambda p: -totals.get(p, 0.0))
    plots = config.plots if config is not None else None
    scale = plots.signal_scale if plots is not None and plots.signal_scale else choose_signal_scale(
        [totals.get(p, 0.0) for p in simulated if processes[p] == "signal"],
        sum(totals.get(p, 0.0) for p in backgrounds))
    return RunStyle(
        processes=styles, stack=stack,
        luminosity_fb=config.luminosity_fb if config is not None else (output or {}).get("luminosity_fb"),
        energy_tev=plots.energy_tev if plots is not None else 13.6, signal_scale=float(scale),
        label=plots.label if plots is not None else None,
        generated=config is not None and all(d.generate is not None for d in config.datasets),
        logy=plots.logy if plots is not None else False,
    )


def _panels(output: dict[str, Any], samples: dict[str, SampleInfo], regions: list[str] | None,
            observables: list[str] | None) -> Iterator[tuple[str, str, str, Any, dict, dict, list[str]]]:
    """(observable, channel, region, histogram, values, variances, systematics) for every panel;
    values/variances: process -> (systematic, bins) arrays of that channel and region, without flow."""
    for observable, h in output["histograms"].items():
        if observables is not None and observable not in observables:
            continue
        view = _weighted_view(h, observable, flow=False)
        groups = _groups(h, samples)
        systematics = list(h.axes["systematic"])
        for c, channel in enumerate(h.axes["channel"]):
            for r, region in enumerate(h.axes["region"]):
                if regions is not None and region not in regions:
                    continue
                values = {p: view["value"][rows, c, r].sum(axis=0) for p, rows in groups.items()}
                variances = {p: view["variance"][rows, c, r].sum(axis=0) for p, rows in groups.items()}
                yield observable, channel, region, h, values, variances, systematics


def _variation_pairs(systematics: list[str]) -> list[tuple[int, int]]:
    """(up, down) indices of every ``<name>Up``/``<name>Down`` pair on the systematic axis."""
    index = {s: i for i, s in enumerate(systematics)}
    return [(i, index[s[:-2] + "Down"]) for s, i in index.items() if s.endswith("Up") and s[:-2] + "Down" in index]


def plot_all(output: dict[str, Any], samples: dict[str, SampleInfo], outdir: str | Path,
             regions: list[str] | None = None, observables: list[str] | None = None,
             style: RunStyle | None = None) -> list[Path]:
    """One PNG per (channel, region, observable); returns the paths.

    ``regions``/``observables`` restrict what is drawn (None: all); empty panels are skipped.
    ``style`` defaults to :func:`run_style` without a config (default colours and labels).
    """
    from crema.plotting import draw_panel

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    style = style or run_style(output, samples)
    written = []
    for observable, channel, region, h, values, variances, systematics in _panels(output, samples, regions, observables):
        nominal = systematics.index(NOMINAL)
        if not any(v[nominal].sum() for v in values.values()):
            continue
        kinds = {_process_of(s): s.kind for s in samples.values()}
        order = [p for p in style.stack if p in values] + [p for p in values if kinds[p] == "background"
                                                           and p not in style.stack]
        order = [p for p in order if values[p][nominal].any()]  # no legend entry for what this panel lacks
        panel = Panel(
            edges=h.axes[-1].edges, x_label=h.axes[-1].label,
            backgrounds={p: (values[p][nominal], variances[p][nominal]) for p in order},
            signals={p: values[p][nominal] for p in values if kinds[p] == "signal"},
            data=values[DATA][nominal] if DATA in values else None,
            title=f"{channel.upper()}, {region}",
        )
        pairs = _variation_pairs(systematics)
        if pairs and order:
            total = sum(values[p] for p in order)  # (systematic, bins)
            ups, downs = zip(*pairs)
            panel.syst = envelope(total[nominal], total[list(ups)], total[list(downs)])
        path = outdir / f"{channel}_{region}_{observable}.png"
        draw_panel(panel, style, path)
        written.append(path)
    return written


def plot_variation(output: dict[str, Any], samples: dict[str, SampleInfo], systematic: str, outdir: str | Path,
                   process: str | None = None, regions: list[str] | None = None,
                   observables: list[str] | None = None, style: RunStyle | None = None) -> list[Path]:
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
    kinds = {_process_of(s): s.kind for s in samples.values()}
    if process and process not in kinds:
        raise ValueError(f"no process {process!r} (known: {', '.join(sorted(kinds))})")
    chosen = [process] if process else [p for p, k in kinds.items() if k == "background"]
    style = style or run_style(output, samples)
    written = []
    for observable, channel, region, h, values, _, systematics in _panels(output, samples, regions, observables):
        parts = [values[p] for p in chosen if p in values]
        if not parts:
            continue
        total = sum(parts)
        hs = {k: total[systematics.index(v)] for k, v in names.items()}
        if not hs["nominal"].sum():
            continue
        name = style.legend(process) if process else "backgrounds"
        path = outdir / f"{systematic}_{channel}_{region}_{observable}.png"
        _draw_variation(hs, h.axes[-1], f"{channel.upper()}, {region}: {name}", systematic, style, path)
        written.append(path)
    return written


def _draw_variation(hs: dict[str, np.ndarray], axis, title: str, systematic: str, style: RunStyle, path: Path) -> None:
    from crema.plotting import experiment_label, pyplot, save, set_y_axis, y_label

    plt = pyplot()
    fig, (ax, rax) = plt.subplots(2, 1, figsize=(8, 8.5), sharex=True,
                                  gridspec_kw={"height_ratios": (3, 1), "hspace": 0.06})
    edges = axis.edges
    styles = {"nominal": ("black", "nominal"), "up": ("#e42536", f"{systematic} up"),
              "down": ("#5790fc", f"{systematic} down")}
    for key, (color, label) in styles.items():
        ax.stairs(hs[key], edges, color=color, label=label, linewidth=2, baseline=None)
    nominal = hs["nominal"]
    with np.errstate(divide="ignore", invalid="ignore"):
        for key in ("up", "down"):
            ratio = np.where(nominal > 0, hs[key] / nominal, np.nan)
            rax.stairs(ratio, edges, color=styles[key][0], linewidth=2, baseline=None)
    top = max(float(np.max(v)) for v in hs.values()) or 1.0
    if style.logy:
        ax.set_yscale("log")
        low = max(float(nominal[nominal > 0].min()) * 0.5, top * 1e-6)
        ax.set_ylim(low, top * (top / low) ** 0.5)
    else:
        ax.set_ylim(0, top * 1.4)
    ax.set_xlim(edges[0], edges[-1])
    set_y_axis(ax, y_label(edges, axis.label), style.logy)
    rax.axhline(1.0, color="black", linewidth=1)
    rax.set_ylabel("var. / nom.")
    rax.set_xlabel(axis.label)
    ax.set_xlabel("")
    ax.legend(fontsize=13, title=title, title_fontsize=12, loc="upper right")
    experiment_label(ax, style, data=False)
    save(fig, path)
