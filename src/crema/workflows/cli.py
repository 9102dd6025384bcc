"""The ``crema`` command: demo, run, generate, plot."""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from crema.extras import require_torch
from crema.schema import ConfigError
from crema.stats import FitFailed
from crema.workflows.errors import InputError, RunInterrupted

if TYPE_CHECKING:
    from crema.workflows.config import Config

# Commands import what they need inside their functions: `crema --help` and the parser must not pay
# for coffea, onnxruntime, matplotlib or torch (tests/test_startup.py checks it).

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEMO_CONFIGS = {"hhbbww": CONFIG_DIR / "demo.yaml", "tth": CONFIG_DIR / "demo_tth.yaml",
                "eft": CONFIG_DIR / "demo_eft.yaml"}
EFT_DEMO_OBSERVABLES = ["m_ll", "pt_ll"]  # crema demo --analysis eft fits these
console = Console(stderr=True)
CHECKPOINT = "checkpoint"  # folder of a run's per-chunk outputs inside its output directory


def _add_executor_options(p: argparse.ArgumentParser) -> None:
    # None: the config's executor section decides (its defaults: iterative, 1 worker, 100000 events per chunk)
    p.add_argument("--executor", choices=["iterative", "futures", "dask"],
                   help="how chunks run (default: the config's executor.name, else iterative)")
    p.add_argument("--workers", type=int,
                   help="worker processes of futures and the dask LocalCluster (default: executor.workers, else 1)")
    p.add_argument("--scheduler", help="address of a running dask scheduler, tcp://host:8786 (implies --executor dask)")
    p.add_argument("--chunksize", type=int, help="events per chunk (default: executor.chunksize, else 100000)")
    p.add_argument("--maxchunks", type=int, help="at most this many chunks per dataset (default: all)")
    p.add_argument("--skip-bad-files", action="store_true", default=None,
                   help="skip unreadable files and chunks, and report the events lost (default: the run fails "
                        "with an error naming them)")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                   help="no progress bar (default: shown)")


def _executor_overrides(args: argparse.Namespace) -> dict:
    overrides = {
        "name": args.executor, "workers": args.workers, "scheduler": args.scheduler,
        "chunksize": args.chunksize, "maxchunks": args.maxchunks,
        "skip_bad_files": args.skip_bad_files, "progress": args.progress,
    }
    if args.scheduler and not args.executor:
        overrides["name"] = "dask"
    return overrides


@contextlib.contextmanager
def _status(text: str):
    """A spinner with ``text`` while a step runs on a terminal; elsewhere (logs, CI) ``text`` as a
    plain line. Yields a function that replaces the text."""
    if console.is_terminal:
        with console.status(text) as status:
            yield status.update
    else:
        console.print(text, highlight=False)
        yield lambda t: console.print(t, highlight=False)


def _write_html(outdir: Path, plots_since: float | None = None) -> Path | None:
    """report.html of ``outdir``; a failure to build it is a warning, never the end of a run."""
    from crema.workflows.html_report import write_html_report

    try:
        return write_html_report(outdir, plots_since=plots_since)
    except Exception as err:  # the run's own outputs are written; the page is a summary of them
        console.print(f"[yellow]warning:[/] report.html not written ({type(err).__name__}: {err})")
        return None


def run_and_write(config: Config, outdir: Path, plots: bool = True, resume: bool = False) -> dict:
    """Run ``config`` with checkpoints in ``outdir/checkpoint``, print the cutflow, write all outputs
    into ``outdir`` (report.html last) and print what was lost or not finite. report.json and
    report.html are written also when the run fails or is interrupted (the checkpoint is then kept for
    ``--resume``); after a complete run the checkpoint is removed."""
    from crema.workflows.config import dump_config
    from crema.workflows.outputs import print_cutflow, print_problems, write_outputs, write_report
    from crema.workflows.run import run

    outdir.mkdir(parents=True, exist_ok=True)
    config = replace(config, output=str(outdir.resolve()))
    dump_config(config, outdir / "config.yaml")
    started = (outdir / "config.yaml").stat().st_mtime  # file-system clock: older plots are an earlier run's
    start = time.perf_counter()
    try:
        output, report = run(config, checkpoint=outdir / CHECKPOINT, resume=resume)
    except Exception as err:  # RunInterrupted and RunFailed carry the report; other errors may
        report = getattr(err, "report", None) or getattr(err, "crema_report", None)
        if report is not None:
            write_report(report.to_dict(), outdir)
            _write_html(outdir)
            if report.bad_files or report.bad_chunks:
                print_problems(report, console)
        raise
    elapsed = time.perf_counter() - start
    # stdout, as wide as the terminal (COLUMNS when set; 80 columns when not a terminal)
    print_cutflow(output, Console(), order=list(config.samples))
    from crema.workflows.plots import run_style

    style = run_style(output, config.samples, config)  # one look for every plot of the run, kept in run.json
    written = ["histograms.root", "histograms.npz", "output.coffea"] + (["plots"] if plots else [])
    with contextlib.ExitStack() as stack:
        update = stack.enter_context(_status(f"writing {', '.join(written)} in {outdir}"))
        drawn = None
        if plots:
            from concurrent.futures import ProcessPoolExecutor
            from multiprocessing import get_context

            from crema.workflows.plots import plot_all

            # plots are drawn by other processes while this one writes the ROOT file (both take tens
            # of seconds with all systematics), the observables shared out between as many processes as
            # the run had workers; spawn, as forking a process with threads is unsafe
            observables = [o for o in output["histograms"]
                           if config.plots.observables is None or o in config.plots.observables]
            workers = max(1, min(len(observables), config.executor.local_processes))
            pool = stack.enter_context(ProcessPoolExecutor(workers, mp_context=get_context("spawn")))
            plots_start = time.perf_counter()
            drawn = [pool.submit(plot_all, output, config.samples, outdir / "plots", config.plots.regions,
                                 observables[i::workers], style) for i in range(workers)]
        outputs_start = time.perf_counter()
        paths = write_outputs(output, config.samples, outdir, order=list(config.samples), style=style)
        if "eft_histograms" in output:
            from crema.workflows.eft_outputs import write_eft_outputs

            paths.update(write_eft_outputs(output, config.samples, outdir))
        if output.get("processed_lumis"):  # dataset -> CMS lumi JSON, the input of brilcalc
            paths["processed_lumis"] = outdir / "processed_lumis.json"
            paths["processed_lumis"].write_text(json.dumps(output["processed_lumis"]) + "\n")
        report.timings["outputs"] = time.perf_counter() - outputs_start
        paths["report"] = write_report(report.to_dict(), outdir)
        if drawn is not None:
            update("drawing plots")
            for part in drawn:
                part.result()
            report.timings["plots"] = time.perf_counter() - plots_start
            write_report(report.to_dict(), outdir)
        update("writing report.html")
        if html := _write_html(outdir, plots_since=started):
            paths["html"] = html
    shutil.rmtree(outdir / CHECKPOINT, ignore_errors=True)
    n = report.to_dict()["processed_events"]
    resumed = f", {report.resumed_chunks} of {report.total_chunks} chunks from the checkpoint" if report.resumed_chunks else ""
    where = "outputs and report.html" if "html" in paths else "outputs"
    console.print(f"processed {n} events in {elapsed:.1f} s ({config.executor.name}{resumed}); {where} in {outdir}")
    print_problems(report, console, output.get("cutflow"))
    return {"output": output, "report": report, "paths": paths}


def cmd_run(args: argparse.Namespace) -> None:
    from crema.workflows.config import load_config
    from crema.workflows.run import generate_inputs

    config = load_config(args.config).with_executor(**_executor_overrides(args))
    outdir = Path(args.output or config.output)
    # datasets given as a generator spec (no files) are generated next to the outputs
    config = generate_inputs(config, outdir / "samples", log=console.print, only_missing=True, reuse=args.resume)
    run_and_write(config, outdir, plots=not args.no_plots, resume=args.resume)


def cmd_demo(args: argparse.Namespace) -> None:
    from crema.workflows.config import load_config
    from crema.workflows.run import generate_inputs

    outdir = Path(args.output or f"crema-demo{'' if args.analysis == 'hhbbww' else '-' + args.analysis}").resolve()
    config = load_config(DEMO_CONFIGS[args.analysis]).with_executor(**_executor_overrides(args))
    config = generate_inputs(config, outdir / "samples", args.scale, console.print, reuse=args.resume)
    run_and_write(config, outdir, plots=not args.no_plots, resume=args.resume)
    if args.analysis == "hhbbww":  # the demo ends in a result: crema fit on its own histograms
        from crema.workflows.fit import result_block, run_fit

        console.print(f"fitting {config.fit.observable} in {', '.join(config.fit.regions)} (crema fit) ...")
        try:
            print(result_block(run_fit(outdir, outdir / "fit", config.fit, plots=not args.no_plots,
                                       workers=config.executor.local_processes), outdir / "fit"))
        except FitFailed as err:  # the run's outputs are complete; small --scale samples may not give a limit
            console.print(f"the demo's fit gave no result: {err}. The run's outputs in {outdir} are complete; "
                          f"with --scale {args.scale:g} the samples may be too small (at --scale 0.5 it converged).")
    if args.analysis == "eft":
        from crema.stats.eft import fit

        _print_intervals(fit(outdir, EFT_DEMO_OBSERVABLES, outdir / "eft_fit", plots=not args.no_plots))


def cmd_generate(args: argparse.Namespace) -> None:
    from crema.generate import PROCESSES, write_nanoaod

    if args.process not in PROCESSES:
        raise ConfigError(f"unknown process {args.process!r} (known: {', '.join(PROCESSES)})")
    path = write_nanoaod(args.output, args.process, args.events, seed=args.seed, mass=args.mass, pfnano=args.pfnano,
                         data=args.data)
    tables = " with PFNano constituents" if args.pfnano else ""
    kind = " collision-data-like" if args.data else ""
    console.print(f"wrote {args.events}{kind} {args.process} events{tables} to {path}")


def cmd_btag_eff(args: argparse.Namespace) -> None:
    from crema.corrections.btag import write_efficiency_map
    from crema.workflows.config import load_config
    from crema.workflows.run import run

    config = load_config(args.config).with_executor(**_executor_overrides(args))
    options = dict(config.processor.options)
    if options.get("corrections"):  # only the nominal jets matter for efficiencies
        options["corrections"] = {**options["corrections"], "systematics": False}
    options["deephme"] = None
    config = replace(config, processor=replace(config.processor, options=options))
    wanted = args.datasets or [d.name for d in config.datasets if d.kind != "data"]
    unknown = sorted(set(wanted) - {d.name for d in config.datasets})
    if unknown:
        raise ConfigError(f"--datasets: no dataset {unknown[0]!r} in {args.config}")
    config = replace(config, datasets=[d for d in config.datasets if d.name in wanted])
    output, _ = run(config)
    maps = [output["btag_efficiency"][d] for d in wanted if d in output["btag_efficiency"]]
    if not maps:
        raise ConfigError("no simulated events passed the selection: no efficiency map to write")
    path = write_efficiency_map(sum(maps[1:], maps[0]), args.output,
                                description=f"b-tag efficiencies from {', '.join(wanted)}")
    console.print(f"wrote b-tag efficiency map of {len(maps)} dataset(s) to {path}")


def cmd_plot(args: argparse.Namespace) -> None:
    from crema.workflows.config import load_config
    from crema.workflows.outputs import read_histograms, read_plot_style
    from crema.workflows.plots import plot_all, run_style

    outdir = Path(args.output_dir)
    config = load_config(outdir / "config.yaml")
    # histograms.npz and run.json hold no code (never output.coffea, a pickle: reading it runs code)
    output, samples = read_histograms(outdir)
    # the run's own colours, signal scale and labels (runs written without them: from the config)
    style = (read_plot_style(outdir) or run_style(output, samples, config)).with_options(logy=args.logy)
    regions = None if args.all else config.plots.regions
    observables = args.observable or config.plots.observables
    if args.observable:
        unknown = [o for o in args.observable if o not in output["histograms"]]
        if unknown:
            raise ConfigError(f"--observable: no observable {unknown[0]!r} in {outdir} "
                              f"(known: {', '.join(output['histograms'])})")
    target = Path(args.output or outdir / "plots")
    if args.systematic:
        from crema.workflows.plots import plot_variation

        try:
            paths = plot_variation(output, samples, args.systematic, target, args.process, regions, observables,
                                   style)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    else:
        paths = plot_all(output, samples, target, regions, observables, style)
    console.print(f"wrote {len(paths)} plots")


def cmd_report(args: argparse.Namespace) -> None:
    from crema.workflows.html_report import write_html_report

    path = write_html_report(args.run_dir, args.output)
    console.print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


def cmd_fit(args: argparse.Namespace) -> None:
    from crema.schema import from_dict, to_dict
    from crema.stats.config import FitConfig
    from crema.workflows.config import load_config
    from crema.workflows.fit import run_fit, run_scan, summary

    config = load_config(Path(args.run_dir) / "config.yaml")
    overrides = {"channels": args.channel, "regions": args.region, "observable": args.observable,
                 "ranking": args.ranking, "rebin": args.rebin}
    fit = from_dict(FitConfig, {**to_dict(config.fit), **{k: v for k, v in overrides.items() if v is not None}}, "fit")
    outdir = Path(args.output)
    if args.scan:
        scan = run_scan(args.run_dir, outdir, fit, plots=not args.no_plots)
        for point in scan["points"]:
            e = point["expected_limit"]
            print(f"{point['process']} (m = {point['mass']:g} GeV): expected limit on mu {e['median']:.3g} "
                  f"[{e['minus1']:.3g}, {e['plus1']:.3g}]")
        console.print(f"wrote {outdir / 'scan.json'}")
        return
    results = run_fit(args.run_dir, outdir, fit, args.signal, plots=not args.no_plots, workers=args.workers)
    print(summary(results))
    console.print(f"fit of {len(results['channels'])} channels in {results['seconds']:.1f} s; outputs in {outdir}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="crema", description="ML models inside coffea processors for CMS NanoAODv12.")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="generate a small signal+background sample and run the HH->bbWW analysis")
    d.add_argument("-o", "--output", help="output directory (default: crema-demo, crema-demo-tth, crema-demo-eft)")
    d.add_argument("--analysis", choices=sorted(DEMO_CONFIGS), default="hhbbww",
                   help="hhbbww (DeepHME, corrections, systematics), tth (SPANet) or eft (EFT ttbar, fit and "
                        "intervals) (default: hhbbww)")
    d.add_argument("--scale", type=float, default=1.0, help="scale the number of generated events (default: 1)")
    d.add_argument("--no-plots", action="store_true", help="write no plots")
    d.add_argument("--resume", action="store_true", help="continue an interrupted or failed demo in the same folder")
    _add_executor_options(d)
    d.set_defaults(func=cmd_demo)

    r = sub.add_parser("run", help="run a YAML config")
    r.add_argument("config", help="run configuration (YAML)")
    r.add_argument("-o", "--output", help="output directory (default: the config's output)")
    r.add_argument("--no-plots", action="store_true", help="write no plots")
    r.add_argument("--resume", action="store_true",
                   help="continue an interrupted or failed run: only chunks missing from OUTPUT/checkpoint run")
    _add_executor_options(r)
    r.set_defaults(func=cmd_run)

    g = sub.add_parser("generate", help="generate NanoAODv12 events with crema's generator")
    g.add_argument("process", help="hh_sl, hh_dl, tt_sl, tt_dl, tt_dl_eft, dy, wjets, tth_sl")
    g.add_argument("-n", "--events", type=int, default=10_000, help="events to write (default: 10000)")
    g.add_argument("-o", "--output", required=True, help="output ROOT file")
    g.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives the same file (default: 0)")
    g.add_argument("--mass", type=float, default=800.0, help="resonance mass for hh_* in GeV (default: 800)")
    g.add_argument("--pfnano", action="store_true",
                   help="also write PFNano tables: AK4 jet constituents (PFCands, JetPFCands) and secondary vertices (SV, JetSVs)")
    g.add_argument("--data", action="store_true",
                   help="collision-data-like: 2022 C-D runs (10%% of lumi sections outside the golden JSON), "
                        "no generator branches, data MET-filter rates")
    g.set_defaults(func=cmd_generate)

    b = sub.add_parser("btag-eff", help="b-tag efficiency maps (pt x |eta| x flavour) from simulation, as correctionlib JSON")
    b.add_argument("config", help="run configuration (YAML)")
    b.add_argument("-o", "--output", required=True, help="output file (.json or .json.gz)")
    b.add_argument("--datasets", nargs="+", help="datasets to use (default: every simulated one)")
    _add_executor_options(b)
    b.set_defaults(func=cmd_btag_eff)

    pl = sub.add_parser("plot", help="redraw the plots of a finished run")
    pl.add_argument("output_dir", help="a run's output directory (holding config.yaml, histograms.npz and run.json)")
    pl.add_argument("-o", "--output", help="where to write the PNGs (default: OUTPUT_DIR/plots)")
    pl.add_argument("--all", action="store_true", help="every region, not only the config's plots.regions")
    pl.add_argument("--systematic", help="draw this variation's Up/Down against nominal (e.g. JES_Absolute, pileup)")
    pl.add_argument("--process", help="with --systematic: one process (default: all backgrounds summed)")
    pl.add_argument("--observable", nargs="+", help="only these observables")
    pl.add_argument("--logy", action=argparse.BooleanOptionalAction, default=None,
                    help="logarithmic y axis (default: the config's plots.logy, false unless set)")
    pl.set_defaults(func=cmd_plot)

    rp = sub.add_parser("report", help="(re)write the HTML summary of a finished run (after crema plot, say)")
    rp.add_argument("run_dir", help="a run's output directory (holding report.json)")
    rp.add_argument("-o", "--output", help="the HTML file to write (default: RUN_DIR/report.html)")
    rp.set_defaults(func=cmd_report)

    f = sub.add_parser("fit", help="pyhf workspace, expected significance and CLs limits from a finished run")
    f.add_argument("run_dir", help="a run's output directory (holding config.yaml and histograms.root)")
    f.add_argument("-o", "--output", required=True, help="fit output directory")
    f.add_argument("--channel", nargs="+", help="channels to fit (default: the config's fit.channels, else all)")
    f.add_argument("--region", nargs="+", help="regions to fit (default: the config's fit.regions)")
    f.add_argument("--observable", help="observable to fit (default: the config's fit.observable)")
    f.add_argument("--signal", help="the signal process to fit, when the run has several")
    f.add_argument("--ranking", type=int, help="rank the impacts of this many parameters (0: no ranking)")
    f.add_argument("--rebin", type=int, help="merge this many adjacent bins before fitting (default: the config's fit.rebin)")
    f.add_argument("--scan", action="store_true", help="expected limit for every signal mass (scan.json, brazil.png)")
    f.add_argument("--workers", type=int, default=1,
                   help="processes testing the points of the CLs limit scan (default: 1; same results)")
    f.add_argument("--no-plots", action="store_true", help="write no plots")
    f.set_defaults(func=cmd_fit)
    _spanet_commands(sub)
    _calibration_commands(sub)
    _eft_commands(sub)
    from crema.workflows.classifier import add_commands as _classifier_commands

    _classifier_commands(sub)
    return p


def cmd_spanet_dataset(args: argparse.Namespace) -> None:
    from crema.workflows.spanet import dataset_config, dataset_summary, write_dataset

    config = dataset_config(args.config).with_executor(**_executor_overrides(args))
    start = time.perf_counter()
    output, report = write_dataset(config, args.output, scale=args.scale, workdir=args.samples, log=console.print)
    for line in report.lines():
        console.print(f"[yellow]warning:[/] {line}")
    for name, s in dataset_summary(output).items():
        matched = ", ".join(f"{p} {f:.2f}" for p, f in s["matched"].items())
        console.print(f"{name}: {s['events']} events (fully matched: {matched})")
    console.print(f"wrote {len(output['event'])} events to {args.output} in {time.perf_counter() - start:.1f} s")


def cmd_spanet_train(args: argparse.Namespace) -> None:
    require_torch("spanet-train")
    from crema.models.spanet_train import load_train_config, train

    config = load_train_config(args.config)
    start = time.perf_counter()
    path = train(args.h5, args.event_file, args.output, config, log=console.print)
    console.print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB) in {time.perf_counter() - start:.0f} s")


def cmd_spanet_report(args: argparse.Namespace) -> None:
    from crema.schema import load
    from crema.workflows.spanet import REPORT_CONFIG, ReportConfig, spanet_report

    config = load(ReportConfig, args.config or REPORT_CONFIG)
    if args.model:
        config = replace(config, model=args.model)
    if args.events:
        config = replace(config, events=args.events)
    result = spanet_report(config, args.output, log=console.print)
    print("\n".join(result["table"]))
    console.print(f"wrote {Path(args.output) / 'spanet_report.json'}")


def _spanet_commands(sub) -> None:
    s = sub.add_parser("spanet-dataset", help="SPANet HDF5 training file from NanoAOD (default: generated ttH + ttbar SL)")
    s.add_argument("config", nargs="?", help="run config with processor spanet_dataset (default: the shipped ttH one)")
    s.add_argument("-o", "--output", required=True, help="output .h5 file")
    s.add_argument("--scale", type=float, default=1.0, help="scale the number of generated events (default: 1)")
    s.add_argument("--samples", help="keep generated NanoAOD files in this folder (default: a temporary one)")
    _add_executor_options(s)
    s.set_defaults(func=cmd_spanet_dataset)

    t = sub.add_parser("spanet-train", help="train crema's SPANet-style network on a training file and export ONNX")
    t.add_argument("h5", help="training file (crema spanet-dataset)")
    t.add_argument("-o", "--output", required=True, help="output .onnx file")
    t.add_argument("--event-file", default="tth_sl", help="shipped event file name or path (default: tth_sl)")
    t.add_argument("--config", help="training YAML (TrainConfig fields; default: the shipped models' settings)")
    t.set_defaults(func=cmd_spanet_train)

    r = sub.add_parser("spanet-report", help="purity of a SPANet model vs the chi-square baseline on held-out events")
    r.add_argument("-o", "--output", default="spanet-report", help="output folder (default: spanet-report)")
    r.add_argument("--config", help="report YAML (default: the shipped ttH one)")
    r.add_argument("--model", help="model name or .onnx path (overrides the config)")
    r.add_argument("--events", type=int, help="held-out events per signal dataset (overrides the config)")
    r.set_defaults(func=cmd_spanet_report)


def cmd_calib_dataset(args: argparse.Namespace) -> None:
    from crema.processors.jet_calib_dataset import prepare_output
    from crema.workflows.calibration import make_dataset
    from crema.workflows.config import load_config
    from crema.workflows.run import generate_inputs

    config = load_config(args.config).with_executor(**_executor_overrides(args))
    outdir = prepare_output(args.output, args.overwrite)  # before generating any sample
    config = generate_inputs(config, outdir / "samples", log=console.print, only_missing=True)
    start = time.perf_counter()
    result = make_dataset(config, args.calibration, outdir, log=console.print)
    console.print(f"wrote {result['total']} jets in {len(result['shards'])} shards to {outdir} in {time.perf_counter() - start:.1f} s")


def cmd_calib_transform(args: argparse.Namespace) -> None:
    from crema.workflows.calibration import make_transform

    path = make_transform(args.directory, args.config, max_jets=args.max_jets)
    console.print(f"wrote {path}")


def cmd_calib_train(args: argparse.Namespace) -> None:
    require_torch("calib-train")
    from crema.workflows.calibration import train_model

    start = time.perf_counter()
    result = train_model(args.config, args.output, data=args.data, transform=args.transform, log=console.print,
                         epochs=args.epochs, threads=args.threads, max_jets=args.max_jets)
    console.print(f"wrote {', '.join(p.name for p in result['paths'].values())} to {args.output} "
                  f"(best epoch {result['best_epoch']}) in {time.perf_counter() - start:.0f} s")


def cmd_calib_report(args: argparse.Namespace) -> None:
    from crema.workflows.calibration import calib_report, report_table

    start = time.perf_counter()
    report = calib_report(args.model, args.output, samples=args.samples, scale=args.scale, seed_offset=args.seed_offset,
                          workdir=args.keep_samples, threads=args.threads, executor=_executor_overrides(args),
                          plots=not args.no_plots, log=console.print)
    print("\n".join(report_table(report)))
    console.print(f"wrote {Path(args.output) / 'calib_report.json'} in {time.perf_counter() - start:.0f} s")


def cmd_eft_fit(args: argparse.Namespace) -> None:
    from crema.stats.eft import fit

    if args.unbinned:
        if args.observable or args.systematics:
            raise ConfigError("eft-fit --unbinned: --observable and --systematics are for the binned fit")
        from crema.workflows.ml4eft import fit_unbinned

        _print_intervals(fit_unbinned(args.run_dir, args.unbinned, args.output))
        return
    if not args.observable:
        raise ConfigError("eft-fit: give --observable (binned) or --unbinned MODEL_DIR")
    try:
        result = fit(args.run_dir, args.observable, args.output, systematics=args.systematics)
    except (FileNotFoundError, KeyError) as err:
        raise ConfigError(str(err).strip("'\"")) from None
    _print_intervals(result)


def cmd_eft_train(args: argparse.Namespace) -> None:
    require_torch("eft-train")
    from crema.models.ml4eft import load_train_config
    from crema.models.ml4eft_train import train

    config = load_train_config(args.config, replicas=args.replicas, max_events=args.max_events,
                               max_epochs=args.epochs, threads=args.threads)
    start = time.perf_counter()
    meta = train(args.features, args.output, config, log=console.print)
    rejected = sum(len(r["rejected"]) for r in meta["replicas"].values())
    console.print(f"wrote {args.output} ({len(meta['terms'])} terms x {config.replicas} replicas, {rejected} rejected, "
                  f"{meta['training']['events']} events) in {time.perf_counter() - start:.0f} s")


def _print_intervals(result: dict) -> None:
    console.print(f"EFT intervals from {', '.join(result['observables'])}:")
    for wc, modes in result["intervals"].items():
        for mode, levels in modes.items():
            console.print(f"  {wc:8s} {mode:8s} " + "  ".join(f"{lvl}%: [{lo:+.3f}, {hi:+.3f}]"
                                                            for lvl, (lo, hi) in levels.items()))


def cmd_eft_report(args: argparse.Namespace) -> None:
    require_torch("eft-report")
    from crema.workflows.ml4eft import report

    start = time.perf_counter()
    result = report(args.output, args.model, args.parton, events=args.events, seed=args.seed,
                    plots=not args.no_plots, log=console.print)
    for name, g in result["comparisons"].items():
        console.print(f"  {name:40s} {g['value']:.4f}  (reference {g['reference']}: {'within' if g['within'] else 'outside'})")
    console.print(f"wrote {Path(args.output) / 'eft_report.json'} in {time.perf_counter() - start:.0f} s")


def _eft_commands(sub) -> None:
    e = sub.add_parser("eft-fit", help="binned EFT intervals (Asimov SM data) from a ttbar_eft run's templates")
    e.add_argument("run_dir", help="run folder with eft_templates.root")
    e.add_argument("--observable", action="append", help="observable(s) to fit (repeat to combine)")
    e.add_argument("--unbinned", metavar="MODEL_DIR",
                   help="unbinned fit with an ML4EFT model on the run's held-out events (eft_features.parquet)")
    e.add_argument("-o", "--output", required=True, help="folder for eft_fit.json and the plots")
    mode = e.add_mutually_exclusive_group()
    mode.add_argument("--stat-only", dest="systematics", action="store_false", help="no nuisance parameters (default)")
    mode.add_argument("--systematics", dest="systematics", action="store_true",
                      help="the run's weight variations as nuisance parameters")
    e.set_defaults(func=cmd_eft_fit, systematics=False)

    t = sub.add_parser("eft-train", help="train ML4EFT likelihood-ratio networks on a ttbar_eft feature table (torch)")
    t.add_argument("features", help="feature table (RUN/eft_features.parquet)")
    t.add_argument("-o", "--output", required=True, help="model folder (ml4eft.onnx, ml4eft.json, replicas/)")
    t.add_argument("--config", help="training YAML (default: src/crema/configs/ml4eft/default.yaml)")
    t.add_argument("--replicas", type=int, help="override replicas")
    t.add_argument("--max-events", type=int, help="override max_events")
    t.add_argument("--epochs", type=int, help="override max_epochs")
    t.add_argument("--threads", type=int, help="override threads")
    t.set_defaults(func=cmd_eft_train)

    r = sub.add_parser("eft-report", help="ML4EFT networks vs analytic truth and binned fits on fresh held-out events")
    r.add_argument("model", nargs="?", help="model folder trained on the reco features (reco and replicas sections)")
    r.add_argument("--parton", metavar="MODEL_DIR", help="model folder trained on m_tt, y_tt, cos_theta_star (parton section)")
    r.add_argument("-o", "--output", required=True, help="folder for eft_report.json, plots and the held-out run")
    r.add_argument("--events", type=int, default=100_000, help="generated held-out events (default: 100000)")
    r.add_argument("--seed", type=int, default=9001, help="generator seed of the held-out events (default: 9001)")
    r.add_argument("--no-plots", action="store_true", help="write no plots")
    r.set_defaults(func=cmd_eft_report)


def _calibration_commands(sub) -> None:
    c = sub.add_parser("calib-dataset", help="jet calibration training shards (gen-matched jets, features, constituents)")
    c.add_argument("config", help="run config naming the (simulated) datasets; its datasets and executor are used")
    c.add_argument("-o", "--output", required=True, help="output directory (data.yaml, shards/)")
    c.add_argument("--calibration", default="deepsets",
                   help="calibration master config: its dataset and features sections (shipped name or path; default: deepsets)")
    c.add_argument("--overwrite", action="store_true", help="replace a dataset already in the output directory")
    _add_executor_options(c)
    c.set_defaults(func=cmd_calib_dataset)

    t = sub.add_parser("calib-transform", help="fit the feature transform of a calibration dataset (DIR/transform.yaml)")
    t.add_argument("directory", help="calibration dataset directory (crema calib-dataset)")
    t.add_argument("--config", help="master or features config (default: the features the dataset was written with)")
    t.add_argument("--max-jets", type=int, default=2_000_000, help="fit on at most this many jets (default: 2000000)")
    t.set_defaults(func=cmd_calib_transform)

    r = sub.add_parser("calib-train", help="train a jet calibration; writes model.onnx, checkpoint.pt, config.yaml, transform.yaml")
    r.add_argument("config", help="calibration master config (shipped name deepsets/jet_only, or path)")
    r.add_argument("-o", "--output", required=True, help="model directory")
    r.add_argument("--data", help="calibration dataset directory (default: the config's training.data)")
    r.add_argument("--transform", help="transform.yaml to use (default: DATA/transform.yaml if it fits, else fitted)")
    r.add_argument("--epochs", type=int, help="override training.epochs")
    r.add_argument("--threads", type=int, help="override training.threads")
    r.add_argument("--max-jets", type=int, help="override training.max_jets (use at most this many jets)")
    r.set_defaults(func=cmd_calib_train)

    e = sub.add_parser("calib-report", help="resolution and flavour response of a jet calibration vs raw, JEC and PNet "
                                            "on held-out jets (JSON and plots)")
    e.add_argument("model", nargs="?", help="model directory or shipped name (default: deepsets_generated)")
    e.add_argument("-o", "--output", default="calib-report", help="output folder (default: calib-report)")
    e.add_argument("--samples", help="run config of the held-out datasets (default: the shipped models' generated "
                                     "samples, regenerated with seed + --seed-offset)")
    e.add_argument("--scale", type=float, default=0.1, help="scale the generated datasets' events (default: 0.1)")
    e.add_argument("--seed-offset", type=int, default=1000, help="added to the generator seeds (default: 1000)")
    e.add_argument("--keep-samples", help="write the generated files to this folder (default: a temporary one)")
    e.add_argument("--threads", type=int, default=1, help="onnxruntime threads of the DNN (default: 1)")
    e.add_argument("--no-plots", action="store_true", help="write no plots")
    _add_executor_options(e)
    e.set_defaults(func=cmd_calib_report)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``crema`` command."""
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except (ConfigError, InputError) as err:
        print(f"crema: error: {err}", file=sys.stderr)
        return 2
    except RunInterrupted as err:
        print(err, file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except FitFailed as err:
        print(f"crema: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
