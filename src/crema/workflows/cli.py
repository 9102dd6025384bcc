"""The ``crema`` command: demo, run, generate, plot."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from dataclasses import replace
from pathlib import Path

from rich.console import Console

from crema.schema import ConfigError
from crema.workflows.config import Config, dump_config, load_config
from crema.workflows.run import InputError, run

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"
console = Console(stderr=True)


def _add_executor_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--executor", choices=["iterative", "futures", "dask"], help="how chunks run")
    p.add_argument("--workers", type=int, help="worker processes (futures, dask LocalCluster)")
    p.add_argument("--scheduler", help="address of a running dask scheduler (tcp://host:8786)")
    p.add_argument("--chunksize", type=int, help="events per chunk")
    p.add_argument("--maxchunks", type=int, help="at most this many chunks per dataset")
    p.add_argument("--skip-bad-files", action="store_true", default=None,
                   help="skip unreadable files and chunks, and report the events lost")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="no progress bar")


def _executor_overrides(args: argparse.Namespace) -> dict:
    overrides = {
        "name": args.executor, "workers": args.workers, "scheduler": args.scheduler,
        "chunksize": args.chunksize, "maxchunks": args.maxchunks,
        "skip_bad_files": args.skip_bad_files, "progress": args.progress,
    }
    if args.scheduler and not args.executor:
        overrides["name"] = "dask"
    return overrides


def run_and_write(config: Config, outdir: Path, plots: bool = True) -> dict:
    """Run ``config``, print the cutflow and any losses, write all outputs into ``outdir``."""
    from crema.workflows.outputs import print_cutflow, write_outputs

    outdir.mkdir(parents=True, exist_ok=True)
    config = replace(config, output=str(outdir.resolve()))
    dump_config(config, outdir / "config.yaml")
    start = time.perf_counter()
    output, report = run(config)
    elapsed = time.perf_counter() - start
    # rich wraps at 80 columns when not writing to a terminal; a cutflow reads better unwrapped
    print_cutflow(output, Console(width=None if sys.stdout.isatty() else 200))
    for line in report.lines():
        console.print(f"[yellow]warning:[/] {line}")
    with contextlib.ExitStack() as stack:
        drawn = None
        if plots:
            from concurrent.futures import ProcessPoolExecutor
            from multiprocessing import get_context

            from crema.workflows.plots import plot_all

            # plots are drawn in a second process while this one writes the ROOT file (both take
            # tens of seconds with all systematics); spawn, as forking a process with threads is unsafe
            pool = stack.enter_context(ProcessPoolExecutor(1, mp_context=get_context("spawn")))
            drawn = pool.submit(plot_all, output, config.samples, outdir / "plots",
                                config.plots.regions, config.plots.observables)
        paths = write_outputs(output, config.samples, outdir, report.to_dict())
        if drawn is not None:
            drawn.result()
    n = report.to_dict()["processed_events"]
    console.print(f"processed {n} events in {elapsed:.1f} s ({config.executor.name}); outputs in {outdir}")
    return {"output": output, "report": report, "paths": paths}


def cmd_run(args: argparse.Namespace) -> None:
    config = load_config(args.config).with_executor(**_executor_overrides(args))
    run_and_write(config, Path(args.output or config.output), plots=not args.no_plots)


def cmd_demo(args: argparse.Namespace) -> None:
    from crema.generate import write_nanoaod

    outdir = Path(args.output).resolve()
    config = load_config(DEMO_CONFIG).with_executor(**_executor_overrides(args))
    datasets = []
    for d in config.datasets:
        g = d.generate
        path = outdir / "samples" / f"{d.name}.root"
        path.parent.mkdir(parents=True, exist_ok=True)
        n = max(1, int(g.events * args.scale))
        console.print(f"generating {n} {g.process} events -> {path}")
        write_nanoaod(path, g.process, n, seed=g.seed, mass=g.mass)
        datasets.append(replace(d, files=[str(path)], generate=replace(g, events=n)))
    run_and_write(replace(config, datasets=datasets), outdir, plots=not args.no_plots)


def cmd_generate(args: argparse.Namespace) -> None:
    from crema.generate import PROCESSES, write_nanoaod

    if args.process not in PROCESSES:
        raise ConfigError(f"unknown process {args.process!r} (known: {', '.join(PROCESSES)})")
    path = write_nanoaod(args.output, args.process, args.events, seed=args.seed, mass=args.mass)
    console.print(f"wrote {args.events} {args.process} events to {path}")


def cmd_btag_eff(args: argparse.Namespace) -> None:
    from crema.corrections.btag import write_efficiency_map
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
    from coffea.util import load

    from crema.workflows.plots import plot_all

    outdir = Path(args.output_dir)
    config = load_config(outdir / "config.yaml")
    output = load(outdir / "output.coffea")
    regions = None if args.all else config.plots.regions
    observables = args.observable or config.plots.observables
    target = Path(args.output or outdir / "plots")
    if args.systematic:
        from crema.workflows.plots import plot_variation

        try:
            paths = plot_variation(output, config.samples, args.systematic, target, args.process, regions, observables)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    else:
        paths = plot_all(output, config.samples, target, regions, observables)
    console.print(f"wrote {len(paths)} plots")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="crema", description="ML models inside coffea processors for CMS NanoAODv12.")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="generate a small signal+background sample and run the HH->bbWW analysis")
    d.add_argument("-o", "--output", default="crema-demo", help="output directory (default: crema-demo)")
    d.add_argument("--scale", type=float, default=1.0, help="scale the number of generated events")
    d.add_argument("--no-plots", action="store_true")
    _add_executor_options(d)
    d.set_defaults(func=cmd_demo)

    r = sub.add_parser("run", help="run a YAML config")
    r.add_argument("config", help="run configuration (YAML)")
    r.add_argument("-o", "--output", help="output directory (default: the config's output)")
    r.add_argument("--no-plots", action="store_true")
    _add_executor_options(r)
    r.set_defaults(func=cmd_run)

    g = sub.add_parser("generate", help="generate NanoAODv12 events with crema's generator")
    g.add_argument("process", help="hh_sl, hh_dl, tt_sl, tt_dl, dy, wjets, tth_sl")
    g.add_argument("-n", "--events", type=int, default=10_000)
    g.add_argument("-o", "--output", required=True, help="output ROOT file")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--mass", type=float, default=800.0, help="resonance mass for hh_* (GeV)")
    g.set_defaults(func=cmd_generate)

    b = sub.add_parser("btag-eff", help="b-tag efficiency maps (pt x |eta| x flavour) from simulation, as correctionlib JSON")
    b.add_argument("config", help="run configuration (YAML)")
    b.add_argument("-o", "--output", required=True, help="output file (.json or .json.gz)")
    b.add_argument("--datasets", nargs="+", help="datasets to use (default: every simulated one)")
    _add_executor_options(b)
    b.set_defaults(func=cmd_btag_eff)

    pl = sub.add_parser("plot", help="redraw the plots of a finished run")
    pl.add_argument("output_dir", help="a run's output directory (holding config.yaml and output.coffea)")
    pl.add_argument("-o", "--output", help="where to write the PNGs (default: OUTPUT_DIR/plots)")
    pl.add_argument("--all", action="store_true", help="every region, not only the config's plots.regions")
    pl.add_argument("--systematic", help="draw this variation's Up/Down against nominal (e.g. JES_Absolute, pileup)")
    pl.add_argument("--process", help="with --systematic: one process (default: all backgrounds summed)")
    pl.add_argument("--observable", nargs="+", help="only these observables")
    pl.set_defaults(func=cmd_plot)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``crema`` command."""
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except (ConfigError, InputError) as err:
        print(f"crema: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
