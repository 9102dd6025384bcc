"""Throughput and memory of the HH->bbWW processor (no ML), measured side by side in one run.

(a) a pure uproot read of exactly the branches the processor reads, (b) the full processor with the
iterative executor, (c) dask LocalCluster with 1 and 2 workers (cluster started before timing).
Each measurement runs in its own Python process, so its peak RSS is its own.

    python benchmarks/bench_processor.py -n 1000000 --chunksize 100000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def make_inputs(workdir: Path, n_events: int, n_files: int) -> list[Path]:
    """Generated tt_sl + hh_sl NanoAODv12 (generated data compresses like real data; tiled data does not)."""
    from crema.generate import write_nanoaod

    workdir.mkdir(parents=True, exist_ok=True)
    files = []
    per_file = n_events // n_files
    for i in range(n_files):
        process = "hh_sl" if i % 5 == 4 else "tt_sl"
        path = workdir / f"{process}_{per_file}_{i}.root"
        if not path.exists():
            print(f"generating {path.name}", flush=True)
            write_nanoaod(path, process, per_file, seed=1000 + i)
        files.append(path)
    return files


def write_config(workdir: Path, files: list[Path], chunksize: int) -> Path:
    import yaml

    config = {
        "luminosity_fb": 7.98,
        "executor": {"name": "iterative", "chunksize": chunksize, "progress": False},
        "output": str(workdir / "out"),
        "datasets": [{"name": "bench", "kind": "background", "process": "ttbar", "xsec_pb": 1.0,
                      "files": [str(f) for f in files]}],
    }
    path = workdir / "bench.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


# ---------------------------------------------------------------- measurements (run in subprocesses)
def _maxrss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def accessed_branches(config_path: str) -> list[str]:
    """The branches the processor really reads, from coffea's access log on a small chunk."""
    import warnings

    from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

    from crema.workflows.config import load_config
    from crema.workflows.run import build_processor

    config = load_config(config_path)
    proc = build_processor(config)
    log: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        events = NanoEventsFactory.from_root(
            {config.datasets[0].files[0]: "Events"}, schemaclass=NanoAODSchema, mode="virtual",
            entry_stop=2000, access_log=log, metadata={"dataset": "bench", "filename": "x"},
        ).events()
        proc.process(events)
    return sorted({a.branch for a in log})


def measure_uproot(config_path: str, chunksize: int) -> dict:
    import uproot

    from crema.workflows.config import load_config

    branches = accessed_branches(config_path)
    files = load_config(config_path).datasets[0].files
    start = time.perf_counter()
    n = 0
    for arrays in uproot.iterate([{f: "Events"} for f in files], branches, step_size=chunksize, library="ak"):
        n += len(arrays)
    return {"seconds": time.perf_counter() - start, "events": n, "branches": len(branches), "rss_mb": _maxrss_mb()}


def measure_run(config_path: str, executor: str, workers: int, options: dict | None = None,
                maxchunks: int | None = None) -> dict:
    from dataclasses import replace

    from crema.workflows.config import load_config
    from crema.workflows.run import run

    config = load_config(config_path)
    if options:
        config = replace(config, processor=replace(config.processor, options=options))
    if maxchunks:
        config = config.with_executor(maxchunks=maxchunks)
    cluster = client = None
    if executor == "dask":
        from distributed import Client, LocalCluster

        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(cluster)
        config = config.with_executor(name="dask", scheduler=cluster.scheduler_address)
    else:
        config = config.with_executor(name=executor, workers=workers)
    # one small chunk per worker first: one-off costs (imports, numba compilation in NanoEvents,
    # correctionlib/ONNX set-up) stay out of the throughput, as in any long-running pool
    run(config.with_executor(chunksize=2000, maxchunks=max(workers, 1), progress=False))
    start = time.perf_counter()
    output, report = run(config)
    seconds = time.perf_counter() - start
    result = {"seconds": seconds, "events": sum(report.processed.values()), "rss_mb": _maxrss_mb()}
    if client is not None:
        import resource

        rss = client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        result["worker_rss_mb"] = max(rss.values())
        client.close()
        cluster.close()
    return result


def _subprocess(func: str, *args) -> dict:
    code = f"import json, bench_processor as b; print('RESULT', json.dumps(b.{func}(*{args!r})))"
    env = {**os.environ, "PYTHONPATH": str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--events", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, default=10)
    parser.add_argument("--chunksize", type=int, default=100_000)
    parser.add_argument("--workdir", type=Path, default=HERE / "work")
    parser.add_argument("--subset-chunks", type=int, default=2,
                        help="chunks (of the first file) for the model/correction comparisons")
    parser.add_argument("--no-write", action="store_true", help="print only; do not update RESULTS.md")
    args = parser.parse_args()

    files = make_inputs(args.workdir, args.events, args.files)
    config = str(write_config(args.workdir, files, args.chunksize))
    results = {
        "uproot read": _subprocess("measure_uproot", config, args.chunksize),
        "processor, iterative": _subprocess("measure_run", config, "iterative", 1),
        "processor, dask 1 worker": _subprocess("measure_run", config, "dask", 1),
        "processor, dask 2 workers": _subprocess("measure_run", config, "dask", 2),
    }
    cores = {"uproot read": 1, "processor, iterative": 1, "processor, dask 1 worker": 1, "processor, dask 2 workers": 2}
    rows = []
    for name, r in results.items():
        rate = r["events"] / r["seconds"]
        rss = r.get("worker_rss_mb", r["rss_mb"])
        rows.append(f"| {name} | {r['events']:,} | {r['seconds']:.2f} | {rate:,.0f} | {rate / cores[name]:,.0f} | {rss:,.0f} |")
    read = results["uproot read"]["events"] / results["uproot read"]["seconds"]
    it = results["processor, iterative"]["events"] / results["processor, iterative"]["seconds"]
    d1 = results["processor, dask 1 worker"]["events"] / results["processor, dask 1 worker"]["seconds"]
    d2 = results["processor, dask 2 workers"]["events"] / results["processor, dask 2 workers"]["seconds"]
    body = "\n".join([
        f"Input: {args.events:,} generated events (tt_sl, hh_sl) in {args.files} files, chunksize {args.chunksize:,}; "
        f"the uproot read loads the {results['uproot read']['branches']} branches the processor reads (coffea access log).",
        "",
        "| measurement | events | seconds | events/s | events/s per core | peak RSS per process [MB] |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        f"- processor (iterative) / uproot read time ratio: **{read / it:.2f}x**",
        f"- processor per core: **{it:,.0f} events/s**",
        f"- dask 2 workers / 1 worker: **{d2 / d1:.2f}x**",
        "- times include coffea preprocessing; excluded: cluster start-up and one warm-up chunk per worker "
        "(imports, numba compilation, correction/model set-up).",
    ])
    print(body)
    if not args.no_write:
        from _results import write_section

        write_section("HH->bbWW processor without ML", body)

    # models and corrections, side by side on the same subset of events
    subset = str(write_config(args.workdir, files[:1], args.chunksize // 2))
    hme = {"deephme": {"models": {"sl": "predict_quantiles3D_SL_v3", "dl": "predict_quantiles3D_DL_v8"}}}
    variants = {
        "no ML, no corrections": {},
        "with DeepHME": hme,
        "corrections, nominal only": {"corrections": {"systematics": False}},
        "corrections, all variations (33 systematics)": {"corrections": {"systematics": True}},
    }
    timed = {name: _subprocess("measure_run", subset, "iterative", 1, opts, args.subset_chunks)
             for name, opts in variants.items()}
    base = timed["no ML, no corrections"]["seconds"]
    rows = [f"| {name} | {r['events']:,} | {r['seconds']:.2f} | {r['events'] / r['seconds']:,.0f} | "
            f"{r['seconds'] / base:.2f} |" for name, r in timed.items()]
    n_shape = 24
    per_variation = (timed["corrections, all variations (33 systematics)"]["seconds"]
                     - timed["corrections, nominal only"]["seconds"]) / n_shape
    body2 = "\n".join([
        f"Same {timed['with DeepHME']['events']:,} generated events (tt_sl), iterative executor, one core.",
        "",
        "| processor | events | seconds | events/s | time / no-ML time |",
        "|---|---|---|---|---|",
        *rows,
        "",
        f"- DeepHME costs {timed['with DeepHME']['seconds'] / base:.2f}x the time of the processor without it.",
        f"- nominal corrections add {100 * (timed['corrections, nominal only']['seconds'] / base - 1):.0f}% "
        ".",
        f"- each of the {n_shape} JES/JER shape variations costs {per_variation:.2f} s "
        f"= {per_variation / timed['corrections, nominal only']['seconds']:.2f}x a full nominal run; "
        "the 8 weight variations only re-fill.",
    ])
    print(body2)
    if not args.no_write:
        write_section("HH->bbWW processor with DeepHME and corrections", body2)


if __name__ == "__main__":
    main()
