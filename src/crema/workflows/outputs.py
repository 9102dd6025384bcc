"""Writing a run's results: coffea output, fit-ready ROOT histograms, cutflow JSON and table.

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


def cutflow_dict(output: dict[str, Any]) -> dict[str, Any]:
    """Unweighted counts and normalised yields per dataset, channel and cut."""
    return {
        ds: {
            ch: {cut: {"events": n, "yield": output["cutflow_yield"][ds][ch][cut]} for cut, n in cuts.items()}
            for ch, cuts in chans.items()
        }
        for ds, chans in output["cutflow"].items()
    }


def print_cutflow(output: dict[str, Any], console: Console | None = None) -> None:
    """One table per channel: cuts as rows, datasets as columns (events, and normalised yield)."""
    console = console or Console()
    per_channel: dict[str, dict[str, dict[str, tuple[int, float]]]] = defaultdict(dict)
    for ds, chans in cutflow_dict(output).items():
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


def write_outputs(output: dict[str, Any], samples: dict[str, SampleInfo], outdir: str | Path,
                  report: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write output.coffea, histograms.root and cutflow.json (plus report.json) into ``outdir``."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    paths = {
        "coffea": outdir / "output.coffea",
        "root": outdir / "histograms.root",
        "cutflow": outdir / "cutflow.json",
    }
    save(output, paths["coffea"])
    write_root(output, samples, paths["root"])
    paths["cutflow"].write_text(json.dumps(cutflow_dict(output), indent=2))
    if report is not None:
        paths["report"] = outdir / "report.json"
        paths["report"].write_text(json.dumps(report, indent=2))
    return paths
