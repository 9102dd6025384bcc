"""``crema fit``: a finished run's histograms -> pyhf workspace, significance, CLs limits, plots, mass scan.

Reads ``RUN_DIR/histograms.root`` (``<channel>_<region>_<observable>/<process>``, variations
``<process>_<systematic>Up/Down``, ``data_obs``) and ``RUN_DIR/config.yaml`` (datasets, era, the
``fit:`` block); never the pickled ``output.coffea``. Writes into FIT_DIR ``workspace.json``,
``fit_results.json`` and plots; with ``--scan`` also ``scan.json`` and the Brazil plot. See docs/fit.md.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import uproot

from crema.corrections.era import load_era
from crema.schema import ConfigError
from crema.stats import FitFailed, inference
from crema.stats.config import FitConfig
from crema.stats.workspace import POI, ChannelTemplates, build_workspace
from crema.workflows.config import Config, load_config
from crema.workflows.run import InputError

DATA = "data_obs"


@dataclass(frozen=True)
class FitInputs:
    """A run directory as the fit sees it: its config and per-(channel, region) templates."""

    config: Config
    fit: FitConfig
    channels: list[ChannelTemplates]
    signals: list[str]
    lumi_uncertainty: float


def _processes(config: Config) -> dict[str, str]:
    """Process label -> kind (``data_obs`` for data), as histograms.root names them."""
    return {(DATA if d.kind == "data" else d.process): d.kind for d in config.datasets}


def signal_masses(config: Config) -> dict[str, float]:
    """Signal process -> mass: the datasets' ``mass``, else the ``generate.mass`` of a generated ``hh_*`` signal.

    Datasets of one process must agree; a signal without any mass is an error naming it.
    """
    masses: dict[str, set[float]] = {}
    for d in config.datasets:
        if d.kind != "signal":
            continue
        mass = d.mass
        if mass is None and d.generate is not None and d.generate.process.startswith("hh_"):
            mass = d.generate.mass
        if mass is None:
            raise ConfigError(f"datasets.{d.name}.mass: the mass scan needs a mass for every signal dataset")
        masses.setdefault(d.process, set()).add(float(mass))
    for process, values in masses.items():
        if len(values) > 1:
            raise ConfigError(f"datasets: signal process {process!r} has datasets with different masses {sorted(values)}")
    return {p: v.pop() for p, v in sorted(masses.items(), key=lambda kv: min(kv[1]))}


def read_channel(f: uproot.ReadOnlyDirectory, directory: str, processes: dict[str, str], name: str,
                 path: Path) -> ChannelTemplates:
    """The templates of one ``<channel>_<region>_<observable>`` directory of histograms.root."""
    nominal, variations, data, edges = {}, {}, None, None
    # longest first: a process named like another plus a suffix is matched as itself
    known = sorted(processes, key=len, reverse=True)
    for key in f[directory].keys(cycle=False, recursive=False):
        h = f[f"{directory}/{key}"]
        values, variances = h.values(flow=False).astype(float), h.variances(flow=False).astype(float)
        edges = h.axis().edges()
        if key == DATA:
            data = values
        elif key in processes:
            nominal[key] = (values, variances)
        else:
            process = next((p for p in known if key.startswith(p + "_")), None)
            systematic = key[len(process) + 1:] if process else ""
            if process is None or processes[process] == "data" or not systematic.endswith(("Up", "Down")):
                raise InputError(f"{path}: {directory}/{key}: not a process of the run's config.yaml "
                                 f"nor a <process>_<systematic>Up/Down variation")
            stem, up = (systematic[:-2], True) if systematic.endswith("Up") else (systematic[:-4], False)
            sides = variations.setdefault(process, {}).setdefault(stem, [None, None])
            sides[0 if up else 1] = values
    if not nominal:
        raise InputError(f"{path}: {directory} holds no simulated process")
    variations = {p: {s: tuple(v) for s, v in by.items()} for p, by in variations.items()}
    return ChannelTemplates(name, edges, nominal, variations, data)


def load_inputs(run_dir: str | Path, fit: FitConfig | None = None, signal: str | None = None) -> FitInputs:
    """Read RUN_DIR's config.yaml and the fitted histograms of histograms.root.

    ``fit``: settings replacing the config's ``fit:`` block; ``signal``: the one signal process to fit
    (needed when the run has several; ``None`` with one signal process takes it).
    """
    run_dir = Path(run_dir)
    config = load_config(run_dir / "config.yaml")
    fit = fit or config.fit
    era = load_era(config.era)
    if era.lumi_uncertainty is None:
        raise ConfigError(f"era {config.era}: lumi_uncertainty is not set (crema fit needs it)")
    processes = _processes(config)
    unknown = sorted(set(fit.norm_uncertainties) - set(processes))
    if unknown:
        raise ConfigError(f"fit.norm_uncertainties.{unknown[0]}: no such process in the datasets "
                          f"(known: {', '.join(p for p in processes if p != DATA)})")
    signals = sorted(p for p, kind in processes.items() if kind == "signal")
    if signal is not None:
        if signal not in signals:
            raise ConfigError(f"signal {signal!r}: not a signal process (signal processes: {', '.join(signals) or 'none'})")
        signals = [signal]
    if not signals:
        raise ConfigError(f"{run_dir / 'config.yaml'}: no dataset has kind: signal, so there is nothing to fit")
    path = run_dir / "histograms.root"
    if not path.exists():
        raise InputError(f"{path}: file not found (crema fit reads a finished run's histograms.root)")
    channels = []
    with uproot.open(path) as f:
        directories = set(f.keys(cycle=False, recursive=False))
        suffixes = {region: f"_{region}_{fit.observable}" for region in fit.regions}
        found = sorted({d[: -len(sfx)] for d in directories for sfx in suffixes.values() if d.endswith(sfx)})
        wanted = fit.channels if fit.channels is not None else found
        if not wanted:
            raise InputError(f"{path}: no histograms of observable {fit.observable!r} in regions "
                             f"{', '.join(fit.regions)} (it has: {', '.join(sorted(directories)[:12])} ...)")
        for channel in wanted:
            for region in fit.regions:
                directory = f"{channel}{suffixes[region]}"
                if directory not in directories:
                    known = sorted(directories)
                    raise InputError(f"{path}: no histograms '{directory}' (channel {channel!r}, region {region!r}, "
                                     f"observable {fit.observable!r}); it has: {', '.join(known[:12])}"
                                     f"{' ...' if len(known) > 12 else ''}")
                ch = read_channel(f, directory, processes, f"{channel}_{region}", path).merged(fit.rebin)
                if not fit.shape_systematics:
                    ch = replace(ch, variations={})
                # other signals are not part of this fit
                nominal = {p: v for p, v in ch.nominal.items() if processes[p] != "signal" or p in signals}
                ch = replace(ch, nominal=nominal)
                if fit.max_mc_stat is not None:
                    ch = ch.grouped(ch.background_groups(signals, fit.max_mc_stat))
                channels.append(ch)
    return FitInputs(config, fit, channels, signals, era.lumi_uncertainty)


def _several_signals(inputs: FitInputs) -> None:
    if len(inputs.signals) > 1:
        raise ConfigError(f"the run has several signal processes ({', '.join(inputs.signals)}): choose one with "
                          "--signal, or scan them all with --scan")


def run_fit(run_dir: str | Path, outdir: str | Path, fit: FitConfig | None = None, signal: str | None = None,
            plots: bool = True, workers: int = 1) -> dict[str, Any]:
    """Fit one signal: write workspace.json, fit_results.json and the plots; returns the results.
    ``workers`` > 1: the CLs scan's points are tested by that many processes (the same results)."""
    start = time.perf_counter()
    inputs = load_inputs(run_dir, fit, signal)
    _several_signals(inputs)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    built = build_workspace(inputs.channels, inputs.signals, inputs.lumi_uncertainty, inputs.fit.norm_uncertainties,
                            prune=inputs.fit.prune)
    (outdir / "workspace.json").write_text(json.dumps(built.spec, indent=1))
    import pyhf

    try:
        results, model, fitted, ranked = inference.analyse(built.spec, built.observed, inputs.fit.confidence_level,
                                                           inputs.fit.ranking if plots else 0, workers)
    except (pyhf.exceptions.FailedMinimization, ValueError, AssertionError) as err:
        raise FitFailed(f"the fit of {outdir / 'workspace.json'} did not converge ({_reason(err)})") from None
    results = {
        "signal": inputs.signals[0],
        "observable": inputs.fit.observable,
        "channels": [c.name for c in inputs.channels],
        "luminosity_fb": inputs.config.luminosity_fb,
        "lumi_uncertainty": inputs.lumi_uncertainty,
        **results,
        "notes": built.notes,
    }
    (outdir / "fit_results.json").write_text(json.dumps(results, indent=2))
    if plots:
        from crema.workflows import fit_plots

        fit_plots.draw_all(model.model, fitted, ranked, built, outdir, inputs.fit.ranking,
                           _plot_style(run_dir, inputs.config), _observable_label(inputs.config, inputs.fit.observable))
    results["seconds"] = time.perf_counter() - start  # printed, not written: the JSON is deterministic
    return results


def run_scan(run_dir: str | Path, outdir: str | Path, fit: FitConfig | None = None, plots: bool = True) -> dict[str, Any]:
    """Expected limit per signal mass: one workspace per signal (``scan/workspace_<process>.json``),
    ``scan.json`` and the Brazil plot ``brazil.png``."""
    config = load_config(Path(run_dir) / "config.yaml")
    masses = signal_masses(config)
    outdir = Path(outdir)
    (outdir / "scan").mkdir(parents=True, exist_ok=True)
    points = []
    for process, mass in masses.items():
        inputs = load_inputs(run_dir, fit, process)
        built = build_workspace(inputs.channels, [process], inputs.lumi_uncertainty, inputs.fit.norm_uncertainties,
                            prune=inputs.fit.prune)
        (outdir / "scan" / f"workspace_{process}.json").write_text(json.dumps(built.spec, indent=1))
        import pyhf

        try:
            model = inference.Model.from_spec(built.spec)
            limits = inference.limits(model, built.observed, inputs.fit.confidence_level)
            significance = inference.significance(model, built.observed)
        except (pyhf.exceptions.FailedMinimization, ValueError, AssertionError) as err:
            raise FitFailed(f"the fit of {process} (m = {mass:g} GeV) did not converge ({_reason(err)})") from None
        points.append({"process": process, "mass": mass, **limits, **significance, "notes": built.notes})
    scan = {"observable": inputs.fit.observable, "channels": [c.name for c in inputs.channels],
            "parameter": POI, "confidence_level": inputs.fit.confidence_level, "points": points}
    (outdir / "scan.json").write_text(json.dumps(scan, indent=2))
    if plots:
        from crema.workflows import fit_plots

        fit_plots.brazil(scan, _plot_style(run_dir, config), outdir / "brazil.png")
    return scan


def _plot_style(run_dir: str | Path, config: Config):
    """The run's plot style (run.json), so fit plots share its colours and labels."""
    from crema.workflows.outputs import read_plot_style
    from crema.workflows.plots import run_style

    return read_plot_style(run_dir) or run_style(None, config.samples, config)


def _observable_label(config: Config, observable: str) -> str:
    """The axis label of ``observable`` from the run's histogram definitions (else its name)."""
    from crema.processors.common import load_histogram_specs

    try:
        specs = load_histogram_specs(config.processor.options.get("histograms", config.processor.name))
    except ConfigError:
        return observable
    spec = specs.get(observable)
    return spec.label if spec is not None and spec.label else observable


def _reason(err: BaseException) -> str:
    """One line on why a fit failed (Minuit's result holds several)."""
    text = str(err).strip()
    if type(err).__name__ == "FailedMinimization":  # pyhf: the optimiser's result, with Minuit's verdict
        text = next((line.strip() for line in text.splitlines() if "fail" in line.lower()), "Minuit did not converge")
    return f"{type(err).__name__}: {text.splitlines()[0] if text else 'no message'}"


def result_block(results: dict[str, Any], outdir: str | Path) -> str:
    """A few lines for a user: expected significance and CLs limit on mu, where the fit outputs are.

    On an Asimov dataset with mu = 1 the fit must return mu_hat = 1; a line says so when it does not.
    """
    e = results["expected_limit"]
    cl = round(100 * results["confidence_level"])
    channels = ", ".join(results["channels"])
    lines = [
        f"Expected result for {results['signal']} ({results['observable']} in {channels}; "
        f"{results['luminosity_fb']:g} fb^-1, {results['fit_data']}):",
        f"  expected significance      {results['expected_significance']:.2f} sigma",
        f"  expected {cl}% CL limit on mu  {e['median']:.3g}   (68% band {e['minus1']:.3g} - {e['plus1']:.3g}, "
        f"95% band {e['minus2']:.3g} - {e['plus2']:.3g})",
    ]
    if results["observed"]:
        lines.append(f"  observed: significance {results['observed_significance']:.2f} sigma, "
                     f"limit on mu {results['observed_limit']:.3g}")
    elif abs(results["mu_hat"] - 1.0) > 1e-2:
        lines.append(f"  note: the Asimov fit returned mu_hat = {results['mu_hat']:.4f}, not 1: the fit did not "
                     "converge cleanly")
    lines.append(f"  fit outputs (workspace.json, fit_results.json, plots) in {outdir}")
    return "\n".join(lines)


def summary(results: dict[str, Any]) -> str:
    """One line: expected significance and limit (and observed ones with data)."""
    e = results["expected_limit"]
    cl = round(100 * results["confidence_level"])
    line = (f"{results['signal']}: expected significance {results['expected_significance']:.2f} sigma; "
            f"expected {cl}% CL limit on mu {e['median']:.3g} (68%: [{e['minus1']:.3g}, {e['plus1']:.3g}], "
            f"95%: [{e['minus2']:.3g}, {e['plus2']:.3g}])")
    if results["observed"]:
        line += (f"; observed significance {results['observed_significance']:.2f} sigma, "
                 f"observed limit {results['observed_limit']:.3g}")
    return line + f"; mu_hat = {results['mu_hat']:.3f} +- {results['mu_hat_uncertainty']:.3f}"
