"""Writing a run's results: fit-ready ROOT histograms, safe histograms.npz + run.json (what
``crema plot`` reads), output.coffea for coffea users, cutflow JSON and table, report.json.

ROOT naming (combine / cabinetry style): directory ``<channel>_<region>_<observable>``, one TH1D per
process (datasets summed by their ``process`` label), ``data_obs`` for data; variations are
``<process>_<systematic>`` with systematic names ending in ``Up``/``Down``.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import hist
import numpy as np
import uproot
from coffea.util import save
from rich import box
from rich.console import Console
from rich.table import Table
from uproot.writing.identify import to_TAxis, to_TH1x

from crema.histograms import io as store
from crema.plotting import RunStyle
from crema.processors.common import SampleInfo

NOMINAL = "nominal"


def process_arrays(h: hist.Hist, samples: dict[str, SampleInfo], systematics: list[str] | None = None
                   ) -> dict[tuple[str, str, str, str], tuple[np.ndarray, np.ndarray]]:
    """(values, variances) with flow bins keyed by (channel, region, systematic, process), datasets
    summed per process.

    Works on the numpy view in one pass (slicing the hist object per key costs ~1 ms each, and a
    run with systematics has tens of thousands of keys). ``systematics`` restricts which are made.
    """
    view = h.view(flow=True)
    values, variances = view["value"], view["variance"]
    groups: dict[str, list[int]] = defaultdict(list)
    for i, dataset in enumerate(h.axes["dataset"]):
        info = samples[dataset]
        groups["data_obs" if info.kind == "data" else info.process].append(i)
    out: dict[tuple[str, str, str, str], tuple[np.ndarray, np.ndarray]] = {}
    for c, channel in enumerate(h.axes["channel"]):
        for r, region in enumerate(h.axes["region"]):
            for s, syst in enumerate(h.axes["systematic"]):
                if systematics is not None and syst not in systematics:
                    continue
                for process, rows in groups.items():
                    out[(channel, region, syst, process)] = (values[rows, c, r, s].sum(axis=0),
                                                             variances[rows, c, r, s].sum(axis=0))
    return out


def process_histograms(h: hist.Hist, samples: dict[str, SampleInfo],
                       systematics: list[str] | None = None) -> dict[tuple[str, str, str, str], hist.Hist]:
    """:func:`process_arrays` as 1D weighted ``hist.Hist`` objects on the observable's axis."""
    axis = h.axes[-1]
    out = {}
    for key, (values, variances) in process_arrays(h, samples, systematics).items():
        one = hist.Hist(axis, storage=hist.storage.Weight())
        target = one.view(flow=True)
        target["value"] = values
        target["variance"] = variances
        out[key] = one
    return out


def _th1d(values: np.ndarray, variances: np.ndarray, axes: tuple, centers: np.ndarray):
    """A TH1D with ROOT's statistics members (as uproot writes a weighted ``hist.Hist``): entries
    over all bins with flow, the sums and moments over the in-range bins."""
    inner = values[1:-1]
    sumw = inner.sum()
    xaxis, yaxis, zaxis = axes
    return to_TH1x(fName=None, fTitle="", data=values.astype(">f8"), fEntries=values.sum(),
                   fTsumw=sumw, fTsumw2=sumw, fTsumwx=(inner * centers).sum(),
                   fTsumwx2=(inner * centers**2).sum(), fSumw2=variances.astype(">f8"),
                   fXaxis=xaxis, fYaxis=yaxis, fZaxis=zaxis)


# room for a directory's keys from the start (a key takes ~80 bytes): a growing directory is moved
# in the file key by key, which was half the time of writing a run with systematics
_KEY_BYTES = 128


def write_root(output: dict[str, Any], samples: dict[str, SampleInfo], path: str | Path) -> Path:
    """Write every observable as per-process TH1Ds with the naming scheme above.

    The TH1Ds are built from the summed arrays directly (the same objects uproot makes from a
    weighted ``hist.Hist``, without converting tens of thousands of them through the histogram
    protocol)."""
    path = Path(path)
    # a TH1's unused y and z axes, as ROOT writes them; serialised, never modified, so shared
    unused = [to_TAxis(fName=name, fTitle="", fNbins=1, fXmin=0.0, fXmax=1.0) for name in ("yaxis", "zaxis")]
    directories = sum(len(h.axes["channel"]) * len(h.axes["region"]) for h in output["histograms"].values())
    with uproot.recreate(path, initial_directory_bytes=_KEY_BYTES * max(directories, 2)) as f:
        for observable, h in output["histograms"].items():
            axis = h.axes[-1]
            edges = np.asarray(axis.edges, dtype=np.float64)
            regular = isinstance(axis, hist.axis.Regular) and getattr(axis, "transform", None) is None
            xaxis = to_TAxis(fName="xaxis", fTitle=axis.label or "", fNbins=len(axis), fXmin=edges[0],
                             fXmax=edges[-1], fXbins=np.array([], ">f8") if regular else edges.astype(">f8"))
            centers = (edges[:-1] + edges[1:]) / 2.0
            by_directory: dict[str, dict[str, Any]] = defaultdict(dict)
            for (channel, region, syst, process), (values, variances) in process_arrays(h, samples).items():
                name = process if syst == NOMINAL else f"{process}_{syst}"
                by_directory[f"{channel}_{region}_{observable}"][name] = _th1d(values, variances, (xaxis, *unused), centers)
            for directory, objects in by_directory.items():
                f.mkdir(directory, initial_directory_bytes=_KEY_BYTES * len(objects)).update(objects)
    return path


def cutflow_dict(output: dict[str, Any], order: list[str] | None = None) -> dict[str, Any]:
    """Unweighted counts and normalised yields per dataset, channel and cut; datasets in ``order``
    (the config's) when given, never in the order chunks happened to finish."""
    datasets = list(output["cutflow"])
    if order is not None:
        datasets = sorted(datasets, key=lambda d: order.index(d) if d in order else len(order))
    return {
        ds: {
            ch: {cut: {"events": n, "yield": output["cutflow_yield"][ds][ch][cut]} for cut, n in cuts.items()}
            for ch, cuts in output["cutflow"][ds].items()
        }
        for ds in datasets
    }


def compact(x: float, exact_below: float = 0.0) -> str:
    """``x`` with 3 significant digits and a k/M/G suffix from 1000 on (7980.4 -> ``7.98k``);
    integers below ``exact_below`` are written in full (event counts)."""
    if abs(x) < exact_below and float(x).is_integer():
        return str(int(x))
    if abs(x) < 999.5:
        return f"{x:.3g}"
    for suffix, scale in (("k", 1e3), ("M", 1e6), ("G", 1e9)):
        if abs(x) / scale < 999.5:
            return f"{x / scale:.3g}{suffix}"
    return f"{x:.3g}"


def fold(name: str, width: int) -> str:
    """``name`` on lines of at most ``width`` characters, broken after ``_``, ``-`` or ``.`` where
    possible (a dataset name in a narrow column stays whole, never cut to ``XHH_80...``)."""
    lines, line = [], ""
    for piece in re.findall(r"[^_.-]*[_.-]|[^_.-]+$", name):
        while len(piece) > width:  # no separator close enough: break inside the word
            if line:
                lines.append(line)
                line = ""
            lines.append(piece[:width])
            piece = piece[width:]
        if len(line) + len(piece) > width:
            lines.append(line)
            line = ""
        line += piece
    return "\n".join([*lines, line] if line else lines)


# the tables have no vertical borders and no edge padding (box.SIMPLE_HEAD): three characters
# between two columns
_COLUMN_EXTRA = 3
_CUT_WIDTH = 24  # longer cut names fold


def print_cutflow(output: dict[str, Any], console: Console | None = None, order: list[str] | None = None) -> None:
    """One table per channel: cuts as rows, datasets as columns (events / normalised yield).

    The tables fit the console: numbers in 3 significant digits (event counts below 10000 in full),
    dataset names folded onto several header lines rather than cut, and datasets split over
    several tables when they do not fit side by side."""
    console = console or Console()
    per_channel: dict[str, dict[str, dict[str, tuple[int, float]]]] = defaultdict(dict)
    for ds, chans in cutflow_dict(output, order).items():
        for ch, cuts in chans.items():
            per_channel[ch][ds] = {cut: (v["events"], v["yield"]) for cut, v in cuts.items()}
    lumi = output.get("luminosity_fb") or 0
    for ch, datasets in per_channel.items():
        cuts = list(next(iter(datasets.values())))
        cut_width = min(max(len(c) for c in [*cuts, "cut"]), _CUT_WIDTH)
        room = console.width - cut_width  # what the dataset columns and their spacing may use
        cells = {ds: [f"{compact(d[c][0], 10_000)} / {compact(d[c][1])}" for c in cuts] for ds, d in datasets.items()}
        widths = {}
        for ds, column in cells.items():
            numbers = max(map(len, column))
            header = min(len(ds), max(numbers, 12))  # longer names fold onto several header lines
            widths[ds] = max(numbers, min(header, room - _COLUMN_EXTRA))
        blocks = _blocks(list(datasets), widths, room)
        for i, block in enumerate(blocks):
            part = f" [{i + 1}/{len(blocks)}]" if len(blocks) > 1 else ""
            title = f"Cutflow, {ch.upper()} channel{part}: events / yield at {lumi:g} fb^-1"
            table = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
                          min_width=min(len(title), console.width))  # a title on one line
            table.add_column("cut", max_width=cut_width, overflow="fold")
            for ds in block:
                table.add_column(fold(ds, widths[ds]), justify="right", no_wrap=True, width=widths[ds])
            for row, cut in enumerate(cuts):
                table.add_row(cut, *(cells[ds][row] for ds in block))
            console.print(table)


def _blocks(names: list[str], widths: dict[str, int], room: int) -> list[list[str]]:
    """``names`` in as few consecutive groups as fit side by side in ``room`` columns, as even as can be."""
    def fits(block: list[str]) -> bool:
        return sum(widths[d] + _COLUMN_EXTRA for d in block) <= room

    blocks: list[list[str]] = [[]]
    for name in names:
        if blocks[-1] and not fits([*blocks[-1], name]):
            blocks.append([])
        blocks[-1].append(name)
    n = len(blocks)
    sizes = [len(names) // n + (i < len(names) % n) for i in range(n)]
    even = [names[sum(sizes[:i]):sum(sizes[:i + 1])] for i in range(n)]
    return even if all(map(fits, even)) else blocks


def undefined_fractions(report: dict[str, Any], cutflow: dict[str, Any]) -> dict[str, dict[str, float]]:
    """channel -> observable -> fraction of the selected events (all datasets) without a value of
    the observable (so not filled), from report.json's ``undefined`` and the cutflow's last cut
    (``output["cutflow"]`` or cutflow.json)."""
    missing: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    selected: dict[str, int] = defaultdict(int)
    for ds, chans in report.get("undefined", {}).items():
        for ch, observables in chans.items():
            cuts = cutflow.get(ds, {}).get(ch)
            if not cuts:
                continue
            last = list(cuts.values())[-1]
            selected[ch] += int(last["events"] if isinstance(last, dict) else last)  # cutflow.json or output
            for obs, n in observables.items():
                missing[ch][obs] += int(n)
    return {ch: {obs: n / selected[ch] for obs, n in sorted(obs_n.items(), key=lambda kv: -kv[1]) if n}
            for ch, obs_n in missing.items() if selected[ch]}


def print_problems(report, console: Console, cutflow: dict[str, Any] | None = None) -> None:
    """What was skipped, lost or not finite, in a panel (none when everything was read); then, given
    the run's ``cutflow`` (events per dataset, channel and cut), which observables some selected
    events have no value of."""
    from rich.panel import Panel

    d = report.to_dict()
    lines = report.lines()
    nonfinite = {b: n for b, n in d.get("nonfinite", {}).items() if n}
    if nonfinite:
        worst = sorted(nonfinite.items(), key=lambda kv: -kv[1])
        lines.append(f"non-finite or unphysical values in {len(nonfinite)} branch(es): "
                     + ", ".join(f"{b} ({n})" for b, n in worst[:5]) + (", ..." if len(worst) > 5 else ""))
    if lines or d.get("error"):
        head = (f"{d['lost_events_total']} events lost of {d['processed_events'] + d['lost_events_total']} "
                f"({len(d['bad_files'])} bad files, {len(d['bad_chunks'])} bad chunks); details in report.json")
        shown = lines[:8] + ([f"... and {len(lines) - 8} more"] if len(lines) > 8 else [])
        console.print(Panel("\n".join([head, *shown]), title=f"run {d['status']}: problems", border_style="yellow",
                            expand=False))
    fractions = undefined_fractions(d, cutflow or {})
    if any(fractions.values()):
        parts = [f"{ch.upper()}: " + ", ".join(f"{obs} {_percent(f)}" for obs, f in obs_f.items())
                 for ch, obs_f in fractions.items() if obs_f]
        console.print("selected events without a value (not filled): " + "; ".join(parts), style="dim",
                      highlight=False)


def _percent(f: float) -> str:
    return "<1%" if 0 < f < 0.01 else f"{100 * f:.0f}%"


def write_report(report: dict[str, Any], outdir: str | Path) -> Path:
    """Write report.json (atomically: an interrupted write never leaves half a report)."""
    path = Path(outdir) / "report.json"
    tmp = path.with_name(".report.json.tmp")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(path)
    return path


def write_histograms(output: dict[str, Any], samples: dict[str, SampleInfo], outdir: Path,
                     style: RunStyle | None = None) -> dict[str, Path]:
    """histograms.npz (crema.histograms.io, no pickle) and run.json (luminosity, samples, scales and,
    given ``style``, the plot style under ``plots``)."""
    paths = {"histograms": outdir / "histograms.npz", "run": outdir / "run.json"}
    store.save({"histograms": output["histograms"]}, paths["histograms"])
    meta = {
        "luminosity_fb": output.get("luminosity_fb"),
        "samples": {name: {"kind": s.kind, "process": s.process, "xsec_pb": s.xsec_pb} for name, s in samples.items()},
        "scale": {k: float(v) for k, v in output.get("scale", {}).items()},
    }
    if style is not None:
        meta["plots"] = style.to_dict()
    paths["run"].write_text(json.dumps(meta, indent=2))
    return paths


def read_histograms(outdir: str | Path) -> tuple[dict[str, Any], dict[str, SampleInfo]]:
    """What :func:`write_histograms` wrote: ``({"histograms", "luminosity_fb"}, samples)``; never unpickles."""
    from crema.schema import ConfigError

    outdir = Path(outdir)
    missing = [n for n in ("histograms.npz", "run.json") if not (outdir / n).is_file()]
    if missing:
        raise ConfigError(f"{outdir}: no {missing[0]} (written by crema run; output.coffea is not read, "
                          "as unpickling it could run code)")
    try:
        hists = store.load(outdir / "histograms.npz")["histograms"]
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{outdir / 'histograms.npz'}: {err}") from None
    meta = json.loads((outdir / "run.json").read_text())
    samples = {name: SampleInfo(name, s["kind"], s["process"], s["xsec_pb"]) for name, s in meta["samples"].items()}
    return {"histograms": hists, "luminosity_fb": meta.get("luminosity_fb")}, samples


def read_plot_style(outdir: str | Path) -> RunStyle | None:
    """The plot style stored in ``outdir/run.json`` (None for runs written without one)."""
    from crema.plotting import read_style

    return read_style(outdir)


def write_outputs(output: dict[str, Any], samples: dict[str, SampleInfo], outdir: str | Path,
                  order: list[str] | None = None, style: RunStyle | None = None) -> dict[str, Path]:
    """Write histograms.root, histograms.npz, run.json, cutflow.json and output.coffea."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    paths = {
        "coffea": outdir / "output.coffea",
        "root": outdir / "histograms.root",
        "cutflow": outdir / "cutflow.json",
    }
    save(output, paths["coffea"])  # for coffea users; a pickle, so crema itself never reads it back
    write_root(output, samples, paths["root"])
    paths.update(write_histograms(output, samples, outdir, style))
    paths["cutflow"].write_text(json.dumps(cutflow_dict(output, order or list(samples)), indent=2))
    return paths
