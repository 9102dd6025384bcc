"""Jet calibration workflow: the glue behind ``crema calib-dataset``, ``calib-transform`` and ``calib-train``.

* :func:`make_dataset` runs :class:`~crema.processors.jet_calib_dataset.JetCalibDataset`
  over the simulated datasets of a crema run config (its ``datasets`` and ``executor``
  sections; ``processor``, ``era`` and ``luminosity_fb`` are not used), with the
  ``dataset`` and ``features`` sections of a calibration master config;
* :func:`make_transform` fits ``transform.yaml`` on a dataset;
* :func:`train_model` trains a master config and writes the model directory
  (torch, the ``train`` extra);
* :func:`calib_report` evaluates a model on held-out jets against the raw pt, the
  correctionlib JEC and the PNet regression (``crema calib-report``): response, resolution
  and flavour dependence as JSON and plots.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from crema.models.jet_calibration import (
    FLAVOURS,
    config_path,
    load_features,
    shipped_model,
    write_transform,
)
from crema.processors.jet_calib_dataset import (
    JetCalibDataset,
    load_options,
    prepare_output,
)
from crema.extras import require_torch
from crema.schema import ConfigError
from crema.workflows.config import Config, load_config
from crema.workflows.run import generate_inputs, run

__all__ = ["calib_report", "make_dataset", "make_transform", "summarise", "train_model"]

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "calibration"
#: The generated samples of the shipped models (run config: datasets with generator specs, PFNano).
SAMPLES_CONFIG = CONFIG_DIR / "samples" / "generated.yaml"
#: The model ``crema calib-report`` evaluates by default.
DEFAULT_MODEL = "deepsets_generated"


def make_dataset(config: Config, master: str | os.PathLike, output: str | os.PathLike, *, overwrite: bool = False,
                 log=print) -> dict[str, Any]:
    """Write a calibration dataset (``output/data.yaml``, ``output/shards/``) from ``config``'s simulated datasets."""
    path = config_path(master)
    features, options = load_features(path), load_options(path)
    simulated = [d for d in config.datasets if d.kind != "data"]
    skipped = [d.name for d in config.datasets if d.kind == "data"]
    if skipped:
        log(f"skipping datasets without generator truth: {', '.join(skipped)}")
    if not simulated:
        raise ConfigError("datasets: no simulated dataset (a calibration needs GenJets)")
    config = replace(config, datasets=simulated)
    out = prepare_output(output, overwrite)
    result, report = run(config, JetCalibDataset(features, options, out))
    for line in report.lines():
        log(f"warning: {line}")
    return result


def make_transform(directory: str | os.PathLike, features: str | os.PathLike | None = None,
                   max_jets: int | None = 2_000_000) -> Path:
    """Fit and write ``directory/transform.yaml`` (features: a master/feature config, default the dataset's)."""
    return write_transform(directory, features, max_jets=max_jets)


def train_model(master: str | os.PathLike, output: str | os.PathLike, *, data: str | os.PathLike | None = None,
                transform: str | os.PathLike | None = None, log=print, **training: Any) -> dict[str, Any]:
    """Train ``master`` on ``data`` (default: the config's ``training.data``) and write the model directory.

    ``training``: overrides of the config's ``training`` section (``epochs``, ``threads``,
    ``max_jets``...; ``None`` values are ignored); the model's ``config.yaml`` records them.
    """
    require_torch("calib-train")
    from crema.models.jet_calibration_train import TrainingConfig, train
    from crema.models.jet_calibration_train import load_config as load_master
    from crema.schema import from_dict, to_dict

    config = load_master(master)
    changes = {k: v for k, v in training.items() if v is not None}
    if changes:
        merged = {**to_dict(config.training), **changes}
        config = replace(config, training=from_dict(TrainingConfig, merged, "training"))
    return train(config, data, output, transform=transform, log=log)


# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------
#: |eta| bins of the report (barrel, endcap in the tracker, endcap beyond, forward).
ETA_BINS = (0.0, 1.3, 2.5, 3.0, 5.0)
#: GenJet pt bins (GeV) of the curves vs pt.
PT_BINS = (30.0, 40.0, 50.0, 70.0, 100.0, 150.0, 200.0, 300.0, 500.0, 1000.0, 3000.0)
PT_MIN = 30.0  # GeV, on the GenJet pt: the jets of the summary numbers
METHODS = ("raw", "jec", "dnn", "pnet")
REPORT_FLAVOURS = ("uds", "c", "b", "g")
MIN_JETS = 20  # fewer jets in a bin: no number (null)


def _stats(response: np.ndarray) -> tuple[float, float]:
    """(median, resolution = half the 16-84 % spread / median); NaN with fewer than MIN_JETS jets."""
    response = response[np.isfinite(response)]
    if len(response) < MIN_JETS:
        return math.nan, math.nan
    q16, q50, q84 = np.quantile(response, [0.16, 0.5, 0.84])
    return float(q50), float((q84 - q16) / 2 / q50)


def _spread(jets: dict[str, np.ndarray], sel: np.ndarray, method: str) -> float:
    """Largest difference of the median response between uds, c, b and g jets of ``sel``."""
    medians = []
    for f in REPORT_FLAVOURS:
        one = sel & (jets["flavour"] == FLAVOURS.index(f))
        median = _stats(jets[method][one] / jets["pt_gen"][one])[0]
        if np.isfinite(median):
            medians.append(median)
    return float(max(medians) - min(medians)) if len(medians) > 1 else math.nan


def _summary(jets: dict[str, np.ndarray], sel: np.ndarray, methods: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"jets": int(sel.sum()), "median_response": {}, "resolution": {}, "flavour_spread": {}}
    for m in methods:
        median, resolution = _stats(jets[m][sel] / jets["pt_gen"][sel])
        out["median_response"][m], out["resolution"][m] = median, resolution
        out["flavour_spread"][m] = _spread(jets, sel, m)
    return out


def _vs_pt(jets: dict[str, np.ndarray], sel: np.ndarray, methods: list[str]) -> dict[str, Any]:
    edges = np.asarray(PT_BINS)
    which = np.digitize(jets["pt_gen"], edges) - 1
    out: dict[str, Any] = {"pt_bins": list(PT_BINS), "jets": [], "median_response": {m: [] for m in methods},
                           "resolution": {m: [] for m in methods}}
    for i in range(len(edges) - 1):
        in_bin = sel & (which == i)
        out["jets"].append(int(in_bin.sum()))
        for m in methods:
            median, resolution = _stats(jets[m][in_bin] / jets["pt_gen"][in_bin])
            out["median_response"][m].append(median)
            out["resolution"][m].append(resolution)
    return out


def _eta_label(lo: float, hi: float) -> str:
    return f"{lo:.1f}-{hi:.1f}"


def summarise(jets: dict[str, np.ndarray], pt_min: float = PT_MIN) -> dict[str, Any]:
    """The report numbers of per-jet arrays (:class:`~crema.processors.jet_calib_eval.JetCalibEval` output).

    Response = pt / pt_gen; resolution = half the 16-84 % quantile spread of the response over
    its median; flavour spread = largest difference of the median response between uds, c, b, g.
    ``pnet`` is included where ``Jet_PNetRegPtRawCorr`` was present (over the jets that have it).
    """
    methods = [m for m in METHODS if m != "pnet" or np.isfinite(jets["pnet"]).any()]
    base = (jets["pt_gen"] > pt_min) & (np.abs(jets["eta"]) < ETA_BINS[-1])
    out = {"selection": f"gen-matched jets, pt_gen > {pt_min:g} GeV, |eta| < {ETA_BINS[-1]:g}", "methods": methods,
           **_summary(jets, base, methods)}
    out["per_eta"], out["vs_pt"] = {}, {}
    abs_eta = np.abs(jets["eta"])
    for lo, hi in itertools.pairwise(ETA_BINS):
        in_eta = base & (abs_eta >= lo) & (abs_eta < hi)
        out["per_eta"][_eta_label(lo, hi)] = _summary(jets, in_eta, methods)
        out["vs_pt"][_eta_label(lo, hi)] = _vs_pt(jets, in_eta, methods)
    out["per_flavour"], out["flavour_vs_pt"] = {}, {}
    for f in REPORT_FLAVOURS:
        is_f = jets["flavour"] == FLAVOURS.index(f)
        one = _summary(jets, base & is_f, methods)
        del one["flavour_spread"]
        out["per_flavour"][f] = one
        out["flavour_vs_pt"][f] = _vs_pt(jets, base & is_f, methods)
    jec, dnn = out["resolution"]["jec"], out["resolution"]["dnn"]
    sj, sd = out["flavour_spread"]["jec"], out["flavour_spread"]["dnn"]
    # the DNN against the correctionlib JEC: how much narrower its resolution is (fraction of the
    # JEC's; negative: wider) and the JEC's flavour spread over the DNN's (> 1: the DNN's is smaller)
    out["dnn_vs_jec"] = {"resolution_narrower": 1 - dnn / jec, "flavour_spread_ratio": sj / sd if sd else math.inf}
    return out


def _clean(obj: Any) -> Any:
    """NaN/inf -> None (strict JSON), floats rounded to 6 significant digits."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, float):
        return float(f"{obj:.6g}") if math.isfinite(obj) else None
    return obj


def held_out(config: Config, seed_offset: int = 1000, scale: float = 1.0) -> Config:
    """``config``'s simulated datasets; generated ones with ``seed + seed_offset`` and ``events x scale``."""
    datasets = []
    for d in config.datasets:
        if d.kind == "data":
            continue
        if d.generate is not None and not d.files:
            d = replace(d, generate=replace(d.generate, seed=d.generate.seed + seed_offset))
        datasets.append(d)
    if not datasets:
        raise ConfigError("datasets: no simulated dataset (the report needs GenJets)")
    return replace(config, datasets=datasets)


def calib_report(model: str | os.PathLike | None = None, output: str | os.PathLike = "calib-report", *,
                 samples: str | os.PathLike | None = None, scale: float = 0.1, seed_offset: int = 1000,
                 workdir: str | os.PathLike | None = None, threads: int = 1, executor: dict | None = None,
                 plots: bool = True, log=print) -> dict[str, Any]:
    """Evaluate a calibration model on held-out jets; writes ``calib_report.json`` and PNGs into ``output``.

    ``model``: a model directory or shipped name (default :data:`DEFAULT_MODEL`). ``samples``: a
    run config whose simulated datasets are evaluated (default :data:`SAMPLES_CONFIG`, the
    training samples); datasets with a generator spec are generated afresh with their seed +
    ``seed_offset`` and ``scale`` x their events (into ``workdir``, default a temporary folder).
    ``executor``: overrides of the run config's executor section.
    """
    from crema.corrections.era import load_era
    from crema.corrections.jets import JetCorrector
    from crema.models.jet_calibration import JetCalibration
    from crema.processors.jet_calib_eval import JetCalibEval

    model_dir = shipped_model(model or DEFAULT_MODEL)
    wrapper = JetCalibration(model_dir, threads=threads)
    config = held_out(load_config(samples or SAMPLES_CONFIG), seed_offset)
    if executor:
        config = config.with_executor(**executor)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="crema-calib-report-") as tmp:
        config = generate_inputs(config, Path(workdir or tmp), scale, log, only_missing=True)
        proc = JetCalibEval(wrapper, JetCorrector(load_era(config.era)), pt_gen_min=PT_MIN)
        result, run_report = run(config, proc)
    for line in run_report.lines():
        log(f"warning: {line}")
    report = {
        "model": str(model_dir),
        "model_name": str(model or DEFAULT_MODEL),
        "era": config.era,
        "samples": [{"name": d.name, "process": d.generate.process if d.generate else d.process,
                     "events": d.generate.events if d.generate else None,
                     "seed": d.generate.seed if d.generate else None} for d in config.datasets],
        "events": int(sum(result["processed"].values())),
        **summarise(result["jets"]),
    }
    report = _clean(report)
    (out / "calib_report.json").write_text(json.dumps(report, indent=1) + "\n")
    if plots:
        report["plots"] = [str(p) for p in plot_report(report, out)]
    return report


def report_table(report: dict[str, Any]) -> list[str]:
    """A few text lines with the headline numbers and the DNN against the JEC."""
    methods = report["methods"]

    def fmt(v, pct=True):
        return "-" if v is None else (f"{100 * v:6.2f} %" if pct else f"{v:6.4f}")

    lines = [f"{report['jets']} jets ({report['selection']})", f"{'':16s}" + "".join(f"{m:>10s}" for m in methods)]
    lines.append(f"{'resolution':16s}" + "".join(f"{fmt(report['resolution'][m]):>10s}" for m in methods))
    lines.append(f"{'median response':16s}" + "".join(f"{fmt(report['median_response'][m], False):>10s}" for m in methods))
    lines.append(f"{'flavour spread':16s}" + "".join(f"{fmt(report['flavour_spread'][m]):>10s}" for m in methods))
    narrower, ratio = report["dnn_vs_jec"]["resolution_narrower"], report["dnn_vs_jec"]["flavour_spread_ratio"]
    if narrower is not None:
        lines.append(f"DNN vs JEC: resolution {100 * abs(narrower):.1f} % {'narrower' if narrower >= 0 else 'wider'}"
                     + ("" if ratio is None else f"; flavour spread JEC / DNN = {ratio:.2f}"))
    return lines


_COLOURS = {"raw": "tab:gray", "jec": "tab:blue", "dnn": "tab:red", "pnet": "tab:green"}
_LABELS = {"raw": "raw", "jec": "L1L2L3Res JEC", "dnn": "DNN", "pnet": "PNet regression"}


def plot_report(report: dict[str, Any], outdir: str | os.PathLike) -> list[Path]:
    """``response_vs_pt.png``, ``resolution_vs_pt.png`` (per |eta| bin) and ``flavour_response.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    outdir = Path(outdir)
    written = []

    def pt_axis(ax):
        ax.set_xscale("log")
        ax.set_xticks([30, 50, 100, 200, 500, 1000])
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())

    def centres(edges):
        e = np.asarray(edges, dtype=float)
        return np.sqrt(e[:-1] * e[1:])

    def values(v):
        return np.asarray([np.nan if x is None else x for x in v], dtype=float)

    for key, ylabel, name in (("median_response", "median response (pt / pt_gen)", "response_vs_pt.png"),
                              ("resolution", "resolution (q84 - q16) / 2 / median", "resolution_vs_pt.png")):
        fig, axes = plt.subplots(2, 2, figsize=(12, 9), sharex=True)
        for ax, (eta, table) in zip(axes.flat, report["vs_pt"].items()):
            x = centres(table["pt_bins"])
            for m in report["methods"]:
                ax.plot(x, values(table[key][m]), "o-", color=_COLOURS[m], label=_LABELS[m], markersize=4)
            if key == "median_response":
                ax.axhline(1.0, color="black", linewidth=0.8, linestyle=":")
            pt_axis(ax)
            ax.set_title(f"|eta| {eta}", fontsize=11)
            ax.set_ylabel(ylabel, fontsize=10)
            ax.grid(alpha=0.3)
        for ax in axes[-1]:
            ax.set_xlabel("GenJet pt [GeV]")
        axes.flat[0].legend(fontsize=9)
        fig.tight_layout()
        fig.savefig(outdir / name, dpi=80)
        plt.close(fig)
        written.append(outdir / name)

    fig, axes = plt.subplots(1, len(report["methods"]), figsize=(4.5 * len(report["methods"]), 4.5), sharey=True)
    for ax, m in zip(np.atleast_1d(axes), report["methods"]):
        for f, table in report["flavour_vs_pt"].items():
            ax.plot(centres(table["pt_bins"]), values(table["median_response"][m]), "o-", markersize=4, label=f)
        ax.axhline(1.0, color="black", linewidth=0.8, linestyle=":")
        spread = report["flavour_spread"][m]
        ax.set_title(f"{_LABELS[m]}" + ("" if spread is None else f" (spread {100 * spread:.2f} %)"), fontsize=11)
        pt_axis(ax)
        ax.set_xlabel("GenJet pt [GeV]")
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("median response per flavour")
    np.atleast_1d(axes)[0].legend(fontsize=9)
    fig.tight_layout()
    fig.savefig(outdir / "flavour_response.png", dpi=80)
    plt.close(fig)
    written.append(outdir / "flavour_response.png")
    return written
