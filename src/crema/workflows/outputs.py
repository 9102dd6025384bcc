"""Writing a run's results: fit-ready ROOT histograms, safe histograms.npz + run.json (what
``crema plot`` reads), output.coffea for coffea users, cutflow JSON and table, report.json.

ROOT naming (combine / cabinetry style): directory ``<channel>_<region>_<observable>``, one TH1D per
process (datasets summed by their ``process`` label), ``data_obs`` for data; variations are
``<process>_<systematic>`` with systematic names ending in ``Up``/``Down``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import hist
import uproot
from coffea.util import save
from rich.console import Console
from rich.table import Table

from crema.histograms import io as store
from crema.plotting import RunStyle
from crema.processors.common import SampleInfo

NOMINAL = "nominal"


def process_histograms(h: hist.Hist, samples: dict[str, SampleInfo],
                       systematics: list[str] | None = None) -> dict[tuple[str, str, str, str], hist.Hist]:
    """1D histograms keyed by (channel, region, systematic, process), datasets summed per process.

    Works on the numpy view in one pass (slicing the hist object per key costs ~1 ms each, and a
    run with systematics has tens of thousands of keys). ``systematics`` restricts which are made.
    """
    view = h.view(flow=True)
    values, variances = view["value"], view["variance"]
    axis = h.axes[-1]
    groups: dict[str, list[int]] = defaultdict(list)
    for i, dataset in enumerate(h.axes["dataset"]):
        info = samples[dataset]
        groups["data_obs" if info.kind == "data" else info.process].append(i)
    out: dict[tuple[str, str, str, str], hist.Hist] = {}
    for c, channel in enumerate(h.axes["channel"]):
        for r, region in enumerate(h.axes["region"]):
            for s, syst in enumerate(h.axes["systematic"]):
                if systematics is not None and syst not in systematics:
                    continue
                for process, rows in groups.items():
                    one = hist.Hist(axis, storage=hist.storage.Weight())
                    target = one.view(flow=True)
                    target["value"] = values[rows, c, r, s].sum(axis=0)
                    target["variance"] = variances[rows, c, r, s].sum(axis=0)
                    out[(channel, region, syst, process)] = one
    return out


def write_root(output: dict[str, Any], samples: dict[str, SampleInfo], path: str | Path) -> Path:
    """Write every observable as per-process TH1Ds with the naming scheme above."""
    path = Path(path)
    with uproot.recreate(path) as f:
        for observable, h in output["histograms"].items():
            for (channel, region, syst, process), one in process_histograms(h, samples).items():
                name = process if syst == NOMINAL else f"{process}_{syst}"
                f[f"{channel}_{region}_{observable}/{name}"] = one
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


def print_cutflow(output: dict[str, Any], console: Console | None = None, order: list[str] | None = None) -> None:
    """One table per channel: cuts as rows, datasets as columns (events, and normalised yield)."""
    console = console or Console()
    per_channel: dict[str, dict[str, dict[str, tuple[int, float]]]] = defaultdict(dict)
    for ds, chans in cutflow_dict(output, order).items():
        for ch, cuts in chans.items():
            per_channel[ch][ds] = {cut: (v["events"], v["yield"]) for cut, v in cuts.items()}
    for ch, datasets in per_channel.items():
        table = Table(title=f"Cutflow, {ch.upper()} channel (events / yield at {output.get('luminosity_fb', 0):g} fb^-1)")
        table.add_column("cut")
        for ds in datasets:
            table.add_column(ds, justify="right")
        cuts = list(next(iter(datasets.values())))
        for cut in cuts:
            table.add_row(cut, *(f"{d[cut][0]} / {d[cut][1]:.4g}" for d in datasets.values()))
        console.print(table)


def print_problems(report, console: Console) -> None:
    """A short panel of what was skipped or lost (nothing when the run read everything)."""
    from rich.panel import Panel

    d = report.to_dict()
    lines = report.lines()
    if not lines and not d.get("error"):
        return
    head = (f"{d['lost_events_total']} events lost of {d['processed_events'] + d['lost_events_total']} "
            f"({len(d['bad_files'])} bad files, {len(d['bad_chunks'])} bad chunks); details in report.json")
    shown = lines[:8] + ([f"... and {len(lines) - 8} more"] if len(lines) > 8 else [])
    console.print(Panel("\n".join([head, *shown]), title=f"run {d['status']}: problems", border_style="yellow",
                        expand=False))


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
                  report: dict[str, Any] | None = None, order: list[str] | None = None,
                  style: RunStyle | None = None) -> dict[str, Path]:
    """Write histograms.root, histograms.npz, run.json, cutflow.json, output.coffea (plus report.json)."""
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
    if report is not None:
        paths["report"] = write_report(report, outdir)
    return paths
