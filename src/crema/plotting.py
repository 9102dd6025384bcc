"""The look of every crema plot: process colours, experiment label, axis labels, stacks with bands.

One :class:`RunStyle` per run fixes what must not change from plot to plot: the colour and legend
label of every process (the config's ``processes:`` block, else mplhep's CMS colour cycle in the
config order of the processes), the one signal scale factor, the experiment label and the
luminosity. It is stored in the run's ``run.json`` so that ``crema plot`` redraws the same figures.

matplotlib and mplhep are imported inside the functions that draw: importing this module is cheap.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from crema.schema import ConfigError

# mplhep's CMS colour cycle (mplhep.styles.cms.cmap_petroff; M. Petroff, arXiv:2107.02270, 6 colours)
CMS_PALETTE_6 = ("#5790fc", "#f89c20", "#e42536", "#964a8b", "#9c9ca1", "#7a21dd")
# the 10-colour set of the same paper, the CMS recommendation for more than six processes
CMS_PALETTE_10 = ("#3f90da", "#ffa90e", "#bd1f01", "#94a4a2", "#832db6", "#a96b59", "#e76300", "#b9ac70",
                  "#717581", "#92dadd")
DATA = "data_obs"  # the process name of collision data (as in histograms.root)
DATA_COLOR = "black"
# the default signal scale is the power of ten (>= 1) that brings the largest signal's total yield
# to between 2% and 20% of the total background yield
SIGNAL_FRACTION = 0.2
STAT_LABEL = "MC stat. unc."
TOTAL_LABEL = "Stat. $\\oplus$ syst. unc."
_UNIT = re.compile(r"\[([^\[\]]+)\]\s*$")


@dataclass(frozen=True)
class ProcessStyle:
    """How one process is drawn (config ``processes.<name>``); unset fields take the defaults."""

    color: str | None = None  # any matplotlib colour: a name ("tab:blue") or "#rrggbb"
    label: str | None = None  # the legend entry (default: the process name)

    def validate(self) -> None:
        if self.color is not None:
            from matplotlib.colors import is_color_like

            if not is_color_like(self.color):
                raise ConfigError(f"color: {self.color!r} is not a colour (a matplotlib name such as "
                                  "'tab:blue', or '#rrggbb')")


def default_colors(processes: list[str]) -> dict[str, str]:
    """Colours in the given (config) order: mplhep's CMS cycle, its 10-colour set beyond six processes."""
    palette = CMS_PALETTE_6 if len(processes) <= len(CMS_PALETTE_6) else CMS_PALETTE_10
    return {p: palette[i % len(palette)] for i, p in enumerate(processes)}


def choose_signal_scale(signal_totals: list[float], background_total: float) -> float:
    """The power of ten (>= 1) that brings the largest signal total to 2-20% of the background total."""
    largest = max(signal_totals, default=0.0)
    if largest <= 0 or background_total <= 0:
        return 1.0
    ratio = SIGNAL_FRACTION * background_total / largest
    return 1.0 if ratio <= 1 else float(10 ** math.floor(math.log10(ratio)))


@dataclass(frozen=True)
class RunStyle:
    """What every plot of one run shares. ``processes``: name -> {kind, color, label}, in config order."""

    processes: dict[str, dict[str, str]]
    stack: list[str] = field(default_factory=list)  # backgrounds, largest run total first (bottom of the stack)
    luminosity_fb: float | None = None
    energy_tev: float = 13.6
    signal_scale: float = 1.0
    label: str | None = None  # the configured experiment label (None: the defaults below)
    generated: bool = False  # every sample comes from crema's generator
    logy: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunStyle:
        return cls(**data)

    def with_options(self, logy: bool | None = None) -> RunStyle:
        """A copy with command-line overrides applied."""
        return self if logy is None else replace(self, logy=logy)

    def color(self, process: str) -> str:
        return self.processes.get(process, {}).get("color", DATA_COLOR if process == DATA else "gray")

    def legend(self, process: str) -> str:
        return self.processes.get(process, {}).get("label", "Data" if process == DATA else process)

    def kind(self, process: str) -> str | None:
        return self.processes.get(process, {}).get("kind")

    @property
    def has_data(self) -> bool:
        return any(p["kind"] == "data" for p in self.processes.values())

    def experiment(self, data: bool | None = None) -> tuple[str, str]:
        """(bold, italic) parts of the experiment label.

        crema-generated samples are not CMS's: "Private work" (or the configured label) then
        "Simulation". Runs on CMS files: "CMS" then the configured label (default "Private work"),
        after "Simulation" when the plot shows no collision data.
        """
        data = self.has_data if data is None else data
        if self.generated:
            return self.label or "Private work", "Simulation"
        text = self.label if self.label is not None else "Private work"
        return "CMS", text if data else f"Simulation {text}".strip()

    def lumi_text(self) -> str:
        energy = f"({self.energy_tev:g} TeV)"
        if not self.luminosity_fb:
            return energy
        lumi = f"{self.luminosity_fb:.3g}" if self.luminosity_fb < 100 else f"{self.luminosity_fb:.0f}"
        return f"{lumi} fb$^{{-1}}$ {energy}"


def read_style(run_dir: str | Path) -> RunStyle | None:
    """The plot style a run stored in ``run_dir/run.json`` (None when it has none)."""
    import json

    path = Path(run_dir) / "run.json"
    if not path.is_file():
        return None
    meta = json.loads(path.read_text())
    return RunStyle.from_dict(meta["plots"]) if "plots" in meta else None


# ---------------------------------------------------------------------------------------------- axes
def pyplot():
    """matplotlib.pyplot with the Agg backend (files only) and mplhep's CMS style applied."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mplhep as hep

    plt.style.use(hep.style.CMS)
    return plt


def y_label(edges: np.ndarray, axis_label: str | None, what: str = "Events") -> str:
    """``Events / 10 GeV`` for uniform bins (unit from ``[...]`` at the end of the axis label),
    ``Events / 0.2`` without unit, ``Events / bin`` for variable bins or unit-width unitless bins."""
    widths = np.diff(np.asarray(edges, dtype=float))
    if not len(widths) or not np.allclose(widths, widths[0], rtol=1e-6):
        return f"{what} / bin"
    match = _UNIT.search(axis_label or "")
    width = f"{widths[0]:.4g}"
    if match:
        return f"{what} / {width} {match.group(1)}"
    return f"{what} / bin" if width == "1" else f"{what} / {width}"


def set_y_axis(ax, label: str, logy: bool = False) -> None:
    """The y label, with any power of ten of the tick labels moved into it (no offset text that
    could sit on the experiment label). Call after the y range is final."""
    from matplotlib.ticker import FuncFormatter, ScalarFormatter

    if logy:
        ax.set_ylabel(label)
        return
    top = max(abs(v) for v in ax.get_ylim())
    power = int(math.floor(math.log10(top))) if top > 0 else 0
    if power >= 4 or power <= -3:
        scale = 10.0 ** power
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _pos: f"{y / scale:.3g}"))
        ax.set_ylabel(f"{label} ($\\times 10^{{{power}}}$)")
    else:
        fmt = ScalarFormatter(useOffset=False)
        fmt.set_scientific(False)
        ax.yaxis.set_major_formatter(fmt)
        ax.set_ylabel(label)


def experiment_label(ax, style: RunStyle, data: bool | None = None) -> None:
    """The experiment label (top left: bold, then italic) and luminosity and energy (top right)
    above ``ax``, in the CMS style's sizes.

    Placed by matplotlib at draw time (the italic part anchored to the bold one's box): mplhep's
    ``exp_label`` draws the whole figure to measure the first word, a third of a plot's time."""
    bold, italic = style.experiment(data)
    above = {"transform": ax.transAxes, "va": "bottom"}
    first = ax.text(0.0, 1.005, bold, ha="left", fontsize=20, fontweight="bold", **above)
    if italic:
        ax.annotate(italic, xy=(1.0, 0.0), xycoords=first, xytext=(5, 0), textcoords="offset points",
                    ha="left", va="bottom", fontsize=17, fontstyle="italic")
    ax.text(1.0, 1.005, style.lumi_text(), ha="right", fontsize=16, **above)


def save(fig, path: str | Path) -> Path:
    """Write the figure as PNG and free it."""
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


# ------------------------------------------------------------------------------------------ stacks
@dataclass
class Panel:
    """The numbers of one stacked plot (bin contents without flow)."""

    edges: np.ndarray
    x_label: str
    backgrounds: dict[str, tuple[np.ndarray, np.ndarray]]  # process -> (values, variances), stack order
    signals: dict[str, np.ndarray] = field(default_factory=dict)
    data: np.ndarray | None = None
    syst: tuple[np.ndarray, np.ndarray] | None = None  # (down, up) absolute shifts of the total background
    title: str = ""
    stat_band: bool = True  # the MC statistical band (off where ``syst`` already is the whole uncertainty)
    total_label: str = TOTAL_LABEL
    data_label: str | None = None  # legend entry of ``data`` (default: the run's data label)
    observed: bool = True  # ``data`` is collision data (else e.g. an Asimov data set: "Simulation" label)
    ratio_label: str = "Data / MC"


def poisson_interval(n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Garwood 68% intervals of observed counts: (lower, upper) distances from ``n``."""
    from scipy.stats import chi2

    n = np.asarray(n, dtype=float)
    lo = np.where(n > 0, chi2.ppf(0.158655, 2 * n) / 2, 0.0)
    hi = chi2.ppf(0.841345, 2 * (n + 1)) / 2
    return n - lo, hi - n


def envelope(nominal: np.ndarray, up: np.ndarray, down: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(down, up) shifts per bin: per source the largest shift each way of its up/down variation,
    sources added in quadrature. ``up``/``down``: (sources, bins)."""
    shifts = np.stack([np.asarray(up) - nominal, np.asarray(down) - nominal])  # (2, sources, bins)
    high = np.clip(shifts.max(axis=0), 0, None)
    low = np.clip(-shifts.min(axis=0), 0, None)
    return np.sqrt((low ** 2).sum(axis=0)), np.sqrt((high ** 2).sum(axis=0))


def draw_panel(panel: Panel, style: RunStyle, path: str | Path) -> Path:
    """A stack of backgrounds with MC-stat (and stat+syst) bands, signals as lines scaled by the
    run's factor, data as points with a data/MC ratio panel; written to ``path``."""
    plt = pyplot()
    with_ratio = panel.data is not None and bool(panel.backgrounds)
    if with_ratio:
        fig, (ax, rax) = plt.subplots(2, 1, figsize=(8, 8.5), sharex=True,
                                      gridspec_kw={"height_ratios": (3, 1), "hspace": 0.06})
    else:
        fig, ax = plt.subplots(figsize=(8, 7))
        rax = None
    edges = np.asarray(panel.edges, dtype=float)
    n = len(edges) - 1
    total, variance = np.zeros(n), np.zeros(n)
    for p, (values, variances) in panel.backgrounds.items():
        ax.stairs(total + values, edges, baseline=total.copy(), fill=True, color=style.color(p),
                  label=style.legend(p), linewidth=0)
        total = total + values
        variance = variance + variances
    stat = np.sqrt(variance)
    tops = [total + stat]
    bands = {}
    if panel.backgrounds:
        if panel.stat_band:
            bands["stat"] = (total - stat, total + stat)
            ax.stairs(total + stat, edges, baseline=total - stat, fill=True, facecolor="none", edgecolor="#444444",
                      hatch="////", linewidth=0, label=STAT_LABEL, zorder=3)
        if panel.syst is not None:
            down, up = panel.syst
            lo, hi = total - np.hypot(stat, down), total + np.hypot(stat, up)
            bands["total"] = (lo, hi)
            ax.stairs(hi, edges, baseline=lo, fill=True, facecolor="none", edgecolor="#999999",
                      hatch="\\\\\\\\", linewidth=0, label=panel.total_label, zorder=2.9)
            tops.append(hi)
    for p, values in panel.signals.items():
        scaled = values * style.signal_scale
        label = style.legend(p) + (f" \u00d7 {style.signal_scale:g}" if style.signal_scale != 1 else "")
        ax.stairs(scaled, edges, fill=False, color=style.color(p), linewidth=2.5, label=label, zorder=4,
                  baseline=None)
        tops.append(scaled)
    centres = 0.5 * (edges[1:] + edges[:-1])
    if panel.data is not None:
        err = poisson_interval(panel.data)
        shown = panel.data > 0
        ax.errorbar(centres[shown], panel.data[shown], yerr=(err[0][shown], err[1][shown]), fmt="o", markersize=6,
                    color=DATA_COLOR, label=panel.data_label or style.legend(DATA), zorder=5)
        tops.append(panel.data + err[1])
    top = max((float(np.max(t)) for t in tops if len(t)), default=1.0) or 1.0
    if style.logy:
        shown = [total, *(v * style.signal_scale for v in panel.signals.values())]
        positive = np.concatenate([t[t > 0] for t in shown])
        low = max(float(positive.min()) * 0.5, top * 1e-6) if len(positive) else top * 1e-6
        ax.set_yscale("log")
        ax.set_ylim(low, top * (top / low) ** 0.4)  # room for the legend
    else:
        ax.set_ylim(0, top * 1.45)  # room for the legend
    ax.set_xlim(edges[0], edges[-1])
    set_y_axis(ax, y_label(edges, panel.x_label), style.logy)
    _legend(ax, panel.title)
    experiment_label(ax, style, data=panel.data is not None and panel.observed)
    if rax is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            safe = np.where(total > 0, total, np.nan)
            for key, color, hatch in (("total", "#999999", "\\\\\\\\"), ("stat", "#444444", "////")):
                if key in bands:
                    lo, hi = bands[key]
                    rax.stairs(hi / safe, edges, baseline=lo / safe, fill=True, facecolor="none", edgecolor=color,
                               hatch=hatch, linewidth=0)
            ratio = panel.data / safe
            err = poisson_interval(panel.data)
            shown = panel.data > 0
            rax.errorbar(centres[shown], ratio[shown], yerr=(err[0][shown] / safe[shown], err[1][shown] / safe[shown]),
                         fmt="o", markersize=6, color=DATA_COLOR)
        rax.axhline(1.0, color="black", linewidth=1)
        rax.set_ylim(0.5, 1.5)
        rax.set_ylabel(panel.ratio_label)
        rax.set_xlabel(panel.x_label)
        ax.set_xlabel("")
    else:
        ax.set_xlabel(panel.x_label)
    return save(fig, path)


def _legend(ax, title: str) -> None:
    handles, labels = ax.get_legend_handles_labels()
    # data first, then the stack top-down, bands, signals: the reading order of the figure
    order = sorted(range(len(labels)), key=lambda i: _legend_rank(handles[i], labels[i], i))
    ax.legend([handles[i] for i in order], [labels[i] for i in order], title=title or None, fontsize=13,
              title_fontsize=13, ncols=2 if len(labels) > 5 else 1, loc="upper right")


def _legend_rank(handle, label: str, index: int) -> tuple[int, int]:
    from matplotlib.container import ErrorbarContainer

    if isinstance(handle, ErrorbarContainer):
        return (0, index)
    if "unc." in label:
        return (2, index)
    if getattr(handle, "get_fill", lambda: True)():
        return (1, -index)
    return (3, index)
