"""Throughput and memory of the HH->bbWW processor, every figure a ratio measured side by side in one run.

Rows: (1) the processor without ML and corrections against a pure uproot read of exactly the
branches it reads; (2) crema's nominal JEC + JER against bare correctionlib on the same jets (the
compound L1L2L3Res, the JER resolution and scale factor, inputs already flat numpy); (3) all
systematic variations against the nominal-only run with corrections; (4) reading and adding up the
chunk outputs; (5) dask with 1 worker against the iterative executor; (6) dask with 2 workers against 1,
also at half the chunk size (the executors of (5) and (6) take turns run by run in one process); (7) with
``--memory-chunks``: RSS after each chunk and peak RSS of one process running DeepHME + all systematics.

Each measurement runs in its own Python process (its peak RSS is its own); with ``--before SRC`` every
one is also run on another crema source tree (e.g. ``git archive`` of an older commit), interleaved
with this one, so machine load falls on both alike.

    python benchmarks/bench_processor.py -n 100000 --files 2 --chunksize 50000 --before /tmp/base/src
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
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
    workdir.mkdir(parents=True, exist_ok=True)
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
            entry_stop=2000, access_log=log, metadata={"dataset": config.datasets[0].name, "filename": "x"},
        ).events()
        proc.process(events)
    return sorted({a.branch for a in log})


def measure_uproot(config_path: str, chunksize: int, runs: int = 1) -> dict:
    import uproot

    from crema.workflows.config import load_config

    branches = accessed_branches(config_path)
    files = load_config(config_path).datasets[0].files
    best = {}
    for _ in range(runs):
        start, cpu = time.perf_counter(), time.process_time()
        n = 0
        for arrays in uproot.iterate([{f: "Events"} for f in files], branches, step_size=chunksize, library="ak"):
            n += len(arrays)
        best = _best(best, time.perf_counter() - start, time.process_time() - cpu)
    return {**best, "events": n, "branches": len(branches), "rss_mb": _maxrss_mb()}


def _best(best: dict, seconds: float, cpu: float) -> dict:
    """Keep the shortest wall and CPU time over repeated runs (the run least disturbed by other jobs)."""
    return {"seconds": min(seconds, best.get("seconds", seconds)), "cpu": min(cpu, best.get("cpu", cpu))}


def measure_run(config_path: str, options: dict | None = None, maxchunks: int | None = None,
                runs: int = 1) -> dict:
    """Best of ``runs`` with the iterative executor: wall and CPU time of this process."""
    from dataclasses import replace

    from crema.workflows.config import load_config
    from crema.workflows.run import run

    config = load_config(config_path).with_executor(name="iterative")
    if options:
        config = replace(config, processor=replace(config.processor, options=options))
    if maxchunks:
        config = config.with_executor(maxchunks=maxchunks)
    # one small chunk first: one-off costs (imports, numba compilation in NanoEvents, correctionlib/ONNX
    # set-up) stay out of the throughput, as in any long-running process
    run(config.with_executor(chunksize=2000, maxchunks=1, progress=False))
    best = {}
    for _ in range(runs):
        start, start_cpu = time.perf_counter(), time.process_time()
        _, report = run(config)
        best = _best(best, time.perf_counter() - start, time.process_time() - start_cpu)
    return {**best, "events": sum(report.processed.values()), "rss_mb": _maxrss_mb()}


def measure_merge(config_path: str, repeat: int) -> dict:
    """Reading and adding up the chunk outputs of one run (what a run does after its last chunk, in one
    process whatever the executor): best of ``repeat``, per chunk file."""
    import inspect
    import tempfile

    from coffea import processor

    from crema.histograms import io as store
    from crema.workflows.config import load_config
    from crema.workflows.run import run

    try:
        from crema.workflows.run import OrderedMerge
    except ImportError:  # an older tree: its run loads every file, then accumulates
        OrderedMerge = None

    with tempfile.TemporaryDirectory() as folder:
        run(load_config(config_path).with_executor(name="iterative", progress=False), checkpoint=folder)
        files = sorted(Path(folder).rglob("*.npz"))
        keys = [f.stem for f in files]
        best = float("inf")
        for _ in range(repeat):
            start = time.process_time()
            if OrderedMerge is not None:  # as crema.workflows.run merges
                OrderedMerge(files[0].parent, keys).finish(set(keys))
            elif "layouts" in inspect.signature(store.load).parameters:
                layouts: dict = {}
                processor.accumulate(store.load(f, layouts) for f in files)
            else:
                processor.accumulate(store.load(f) for f in files)
            best = min(best, time.process_time() - start)
    return {"files": len(files), "per_file": best / len(files)}


def measure_alternating(config_path: str, executors: list, rounds: int, chunksize: int | None = None) -> dict:
    """Executors measured in turn in one process, ``rounds`` times: each entry of ``executors`` is
    "iterative" or a number of dask workers (a cluster each, kept warm). Alternating run by run, a change
    in machine load falls on every executor alike; the order rotates each round.

    CPU time: iterative, this process's main thread (the only one it runs on; the idle clusters' threads in
    this process stay out); dask, this whole process (client, scheduler) plus the cluster's workers.
    """
    from crema.workflows.config import load_config
    from crema.workflows.run import run

    config = load_config(config_path)
    if chunksize:
        config = config.with_executor(chunksize=chunksize)
    setups, clusters = {}, []
    try:
        for ex in executors:
            if ex == "iterative":
                setups[ex] = (config.with_executor(name="iterative", workers=1), None)
                continue
            from distributed import Client

            cluster = _local_cluster(ex)
            client = Client(cluster)
            clusters += [client, cluster]
            setups[ex] = (config.with_executor(name="dask", scheduler=cluster.scheduler_address), client)
        for ex, (cfg, _) in setups.items():  # warm-up, as in measure_run
            run(cfg.with_executor(chunksize=2000, maxchunks=ex if ex != "iterative" else 1, progress=False))

        def cpu(ex) -> float:
            client = setups[ex][1]
            if client is None:
                return time.thread_time()
            return time.process_time() + sum(client.run(time.process_time).values())

        results, events, chunks = [], 0, 0
        for i in range(rounds):
            measured = {}
            for ex in executors[i % len(executors):] + executors[:i % len(executors)]:
                start, start_cpu = time.perf_counter(), cpu(ex)
                _, report = run(setups[ex][0])
                measured[str(ex)] = {"seconds": time.perf_counter() - start, "cpu": cpu(ex) - start_cpu}
                events, chunks = sum(report.processed.values()), report.total_chunks
            results.append(measured)
    finally:
        for c in clusters:
            c.close()
    return {"rounds": results, "events": events, "chunks": chunks}


def _local_cluster(workers: int):
    from crema.workflows import run as run_module

    if hasattr(run_module, "local_cluster"):  # the cluster `crema run --executor dask` starts
        return run_module.local_cluster(workers)
    from distributed import LocalCluster  # an older crema tree (--before)

    return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)


def ratios(result: dict, num: str, den: str, key: str) -> list[float]:
    """Per round, ``num``'s time over ``den``'s: the speed of ``den`` relative to ``num``."""
    return [r[num][key] / r[den][key] for r in result["rounds"]]


def _subprocess(func: str, *args, src: str | None = None) -> dict:
    code = f"import json, bench_processor as b; print('RESULT', json.dumps(b.{func}(*{args!r})))"
    crema_src = src or os.environ.get("PYTHONPATH", "")
    env = {**os.environ, "PYTHONPATH": str(HERE) + os.pathsep + crema_src}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def measure_jec(path: str, entry_stop: int, repeat: int) -> dict:
    """crema's nominal JEC + JER (``JetCorrector.correct``) against bare correctionlib on the same jets."""
    import warnings

    import awkward as ak
    import numpy as np
    from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

    from crema.corrections import files as cfiles
    from crema.corrections.era import load_era
    from crema.corrections.jets import JetCorrector

    jc = JetCorrector(load_era("2022"))
    cfg = jc.config
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        events = NanoEventsFactory.from_root({path: "Events"}, schemaclass=NanoAODSchema, mode="eager",
                                             entry_stop=entry_stop, uproot_options={"filter_name": [
                                                 "nJet", "Jet_*", "nGenJet", "GenJet_*", "Rho_*", "run",
                                                 "luminosityBlock", "event", "genWeight"]}).events()
    cset = cfiles.correction_set(jc.path)
    jets = events.Jet
    counts = ak.to_numpy(ak.num(jets, axis=1))
    flat = lambda a: np.asarray(ak.to_numpy(ak.flatten(a, axis=1)), dtype=np.float64)  # noqa: E731
    pt_raw = flat(jets.pt) * (1 - flat(jets.rawFactor))
    values = {"JetA": flat(jets.area), "JetEta": flat(jets.eta), "JetPhi": flat(jets.phi), "JetPt": pt_raw,
              "Rho": np.repeat(ak.to_numpy(events.Rho.fixedGridRhoFastjetAll), counts).astype(np.float64),
              "run": np.repeat(ak.to_numpy(events.run), counts)}
    compound, resolution, sf = cset.compound[cfg.jec], cset[cfg.jer_resolution], cset[cfg.jer_scale_factor]

    def bare():
        jec = compound.evaluate(*[values[i.name] for i in compound.inputs])
        v = {**values, "JetPt": pt_raw * jec, "systematic": next(iter(cfg.jer_values))}
        resolution.evaluate(*[v[i.name] for i in resolution.inputs])
        sf.evaluate(*[v[i.name] for i in sf.inputs])

    def timed(fn) -> float:
        best = float("inf")
        for _ in range(repeat):
            start = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - start)
        return best

    jc.correct(events)  # one-off: compiling the file, the random-number correction
    t_crema, t_bare = [], []
    for _ in range(repeat):  # interleaved, so load changes fall on both
        t_crema.append(timed(lambda: jc.correct(events)))
        t_bare.append(timed(bare))
    return {"jets": int(counts.sum()), "crema": min(t_crema), "bare": min(t_bare)}


def measure_memory(config_path: str, chunksize: int, chunks: int) -> dict:
    """RSS after each chunk and peak RSS of one process: DeepHME + all systematics, iterative executor."""
    from dataclasses import replace

    import bench_soak
    from crema.workflows.config import load_config
    from crema.workflows.run import build_processor, run

    config = load_config(config_path)
    options = {"deephme": {"models": {"sl": "predict_quantiles3D_SL_v3", "dl": "predict_quantiles3D_DL_v8"}},
               "corrections": {"systematics": True}}
    config = replace(config, processor=replace(config.processor, options=options))
    config = config.with_executor(chunksize=chunksize, maxchunks=chunks)
    start = time.perf_counter()
    run(config, bench_soak.Recording(build_processor(config)))
    return {"rss_mb": [mb for _, mb, _ in bench_soak.RSS], "peak_mb": _maxrss_mb(),
            "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--events", type=int, default=100_000)
    parser.add_argument("--files", type=int, default=2)
    parser.add_argument("--chunksize", type=int, default=50_000)
    parser.add_argument("--workdir", type=Path, default=HERE / "work")
    parser.add_argument("--subset", type=int, default=20_000,
                        help="events (one chunk of the first file) for the systematics row")
    parser.add_argument("--jec-events", type=int, default=50_000, help="events for the JEC row")
    parser.add_argument("--repeat", type=int, default=3, help="best of, for the JEC row")
    parser.add_argument("--runs", type=int, default=2, help="best of, for the run rows")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of alternating runs, for the dask rows")
    parser.add_argument("--no-dask", action="store_true", help="skip the dask rows")
    parser.add_argument("--memory-chunks", type=int, default=0, help="chunks for the memory row (0: no memory row)")
    parser.add_argument("--memory-chunksize", type=int, default=200_000)
    parser.add_argument("--memory-only", action="store_true", help="only the memory row (a long soak)")
    parser.add_argument("--before", help="crema source tree (the folder holding crema/) to measure alongside")
    parser.add_argument("--section", default="HH->bbWW processor performance", help="RESULTS.md section to write")
    parser.add_argument("--no-write", action="store_true", help="print only; do not update RESULTS.md")
    args = parser.parse_args()

    files = make_inputs(args.workdir, args.events, args.files)
    config = str(write_config(args.workdir, files, args.chunksize))
    subset = str(write_config(args.workdir / "subset", files[:1], args.subset))
    versions = {"after": None} if not args.before else {"before": args.before, "after": None}
    nominal = {"corrections": {"systematics": False}}
    every = {"corrections": {"systematics": True}}
    res: dict[str, dict[str, dict]] = {v: {} for v in versions}

    def measure(name, func, *fargs):
        for version, src in versions.items():  # interleaved: before, after, per measurement
            print(f"{version}: {name}", flush=True)
            res[version][name] = _subprocess(func, *fargs, src=src)

    if args.memory_only and not args.memory_chunks:
        parser.error("--memory-only needs --memory-chunks")
    if not args.memory_only:
        measure("read", "measure_uproot", config, args.chunksize, args.runs)
        measure("iterative", "measure_run", config, None, None, args.runs)
        measure("jec", "measure_jec", str(files[0]), args.jec_events, args.repeat)
        measure("nominal", "measure_run", subset, nominal, 1, args.runs)
        measure("systematics", "measure_run", subset, every, 1, args.runs)
        measure("merge", "measure_merge", config, 5)
    if not args.no_dask and not args.memory_only:
        measure("dask1", "measure_alternating", config, ["iterative", 1], args.rounds)
        measure("dask2", "measure_alternating", config, [1, 2], args.rounds)
        measure("dask2_small", "measure_alternating", config, [1, 2], args.rounds, args.chunksize // 2)
    if args.memory_chunks:
        measure("memory", "measure_memory", config, args.memory_chunksize, args.memory_chunks)

    def rate(r: dict, key: str = "cpu") -> float:
        return r["events"] / r[key]

    rows = [] if args.memory_only else [
        ("processor (no ML, no corrections): events per CPU second", lambda r: f"{rate(r['iterative']):,.0f}",
         ">= 100,000 per core"),
        ("processor / uproot read of its branches, CPU time",
         lambda r: f"{r['iterative']['cpu'] / r['read']['cpu']:.2f}x", "<= 4x"),
        ("nominal JEC + JER: crema / bare correctionlib, same jets",
         lambda r: f"{r['jec']['crema'] / r['jec']['bare']:.2f}x ({r['jec']['crema'] / r['jec']['jets'] * 1e6:.2f} "
                   f"vs {r['jec']['bare'] / r['jec']['jets'] * 1e6:.2f} s per 1M jets)", "<= 1.3x"),
        ("all systematics / nominal corrections, CPU time",
         lambda r: f"{r['systematics']['cpu'] / r['nominal']['cpu']:.2f}x", "<= 8x"),
        ("merging the chunk outputs (reading and adding them), CPU per chunk file",
         lambda r: f"{r['merge']['per_file'] * 1e3:.1f} ms", "-"),
    ]
    if not args.no_dask and not args.memory_only:
        def median(result: dict, num: str, den: str, key: str) -> str:
            values = ratios(result, num, den, key)
            return f"{statistics.median(values):.2f}x ({min(values):.2f}-{max(values):.2f})"

        def at_most(result: dict) -> str:  # equal chunks on 2 workers: one of them runs ceil(n / 2)
            n = result["chunks"]
            return f"{n} chunks, at most {n / math.ceil(n / 2):.2f}x"

        rows += [
            ("dask 1 worker / iterative, events per CPU second (workers + client)",
             lambda r: median(r["dask1"], "iterative", "1", "cpu"), ">= 0.9x"),
            ("dask 1 worker / iterative, events per wall second",
             lambda r: median(r["dask1"], "iterative", "1", "seconds"), ">= 0.9x"),
            (f"dask 2 workers / 1 worker, events per wall second ({at_most(res['after']['dask2'])})",
             lambda r: median(r["dask2"], "1", "2", "seconds"), ">= 1.8x"),
            (f"the same, chunksize {args.chunksize // 2:,} ({at_most(res['after']['dask2_small'])})",
             lambda r: median(r["dask2_small"], "1", "2", "seconds"), ">= 1.8x"),
        ]
    if args.memory_chunks:
        rows += [
            (f"peak RSS, DeepHME + all systematics, chunksize {args.memory_chunksize:,}",
             lambda r: f"{r['memory']['peak_mb']:,.0f} MB", "<= 2,000 MB"),
            ("RSS after each chunk (MB)", lambda r: ", ".join(f"{mb:.0f}" for mb in r["memory"]["rss_mb"]), "flat"),
        ]
    header = "| quantity | " + " | ".join(versions) + " | goal |"
    table = [header, "|---|" + "---:|" * len(versions) + "---|"]
    table += [f"| {name} | " + " | ".join(fmt(res[v]) for v in versions) + f" | {goal} |" for name, fmt, goal in rows]
    after = res["after"]
    times = ", ".join(f"{name} {r['seconds']:.1f} s ({r['cpu']:.1f} s CPU)" for name, r in after.items() if "cpu" in r)
    for name, result in after.items():  # alternating runs: the median of each executor's rounds
        for ex in result.get("rounds", [{}])[0]:
            label = "iterative" if ex == "iterative" else f"dask {ex} worker{'s' * (ex != '1')}"
            wall = statistics.median(r[ex]["seconds"] for r in result["rounds"])
            cpu = statistics.median(r[ex]["cpu"] for r in result["rounds"])
            times += f"; {name}: {label} {wall:.1f} s ({cpu:.1f} s CPU)"
    if args.memory_only:
        memory = after["memory"]
        inputs = (f"Input: {args.events:,} generated events ({', '.join(p.name for p in files)}); DeepHME, JEC/JER and "
                  f"all systematic variations, iterative executor, one process, chunksize {args.memory_chunksize:,}, "
                  f"{len(memory['rss_mb'])} chunks, {memory['seconds']:.0f} s; RSS read after each chunk "
                  "(after gc.collect()).")
    else:
        inputs = (
            f"Input: {args.events:,} generated events ({', '.join(p.name for p in files)}), chunksize {args.chunksize:,}; "
            f"the uproot read loads the {after['read']['branches']} branches the processor reads (coffea access log). "
            f"Systematics row: {after['nominal']['events']:,} events (one chunk), iterative. JEC row: "
            f"{after['jec']['jets']:,} jets of the first file in memory, best of {args.repeat}, interleaved. "
            f"Run rows: best of {args.runs} runs after a warm-up chunk per worker (cluster start-up excluded; coffea "
            f"preprocessing included); dask rows: the executors alternate run by run in one process, {args.rounds} "
            "rounds, median ratio of the rounds (range in brackets). Ratios use CPU time where the machine is shared "
            "(other jobs lengthen wall time, hardly CPU time); the 2-vs-1-worker rows need wall time and a quiet "
            "machine.")
    body = "\n".join([
        inputs,
        "",
        *table,
        "",
        *([f"Wall (CPU) times, after: {times}."] if times else []),
        f"Load: {os.getloadavg()[0]:.1f} (1-min load average at the end) on {os.cpu_count()} cores.",
    ])
    print(body)
    if not args.no_write:
        from _results import write_section

        write_section(args.section, body)


if __name__ == "__main__":
    main()
