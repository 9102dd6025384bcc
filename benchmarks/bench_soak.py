"""Soak: resident memory after each chunk of a long HH->bbWW run with all systematics and DeepHME.

A run over many chunks must keep its memory flat: anything that grows per chunk (a cache keyed by
arrays, a session or file handle per call, arena fragmentation) ends an overnight run over a
thousand files. The run goes through ``crema.workflows.run.run`` with the iterative executor over
generated files (alternately X->HH->bbWW SL and DL, one chunk each, so both channels run DeepHME
from the start); a thin wrapper around the processor records the RSS after every chunk.

    nice python benchmarks/bench_soak.py --chunks 30 --chunksize 400 --workdir /tmp/soak

``--tracemalloc`` also prints the Python allocations that grew most between chunk 3 and the last.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

#: (chunk number, RSS in MB, seconds since the run started) per processed chunk
RSS: list[tuple[int, float, float]] = []
TRACE: dict[int, object] = {}


def _rss_mb() -> float:
    import psutil  # a dependency of distributed, which crema requires

    return psutil.Process().memory_info().rss / 2**20


def _recording_class():
    from coffea import processor

    return processor.ProcessorABC


class Recording(_recording_class()):
    """The processor, plus one RSS reading after each chunk (kept in this module: coffea pickles the processor)."""

    def __init__(self, proc, trace_at: tuple[int, ...] = ()) -> None:
        self.proc = proc
        self.trace_at = trace_at
        self.start = time.perf_counter()  # unpickled copies keep it: time since the run started

    def required_branches(self, sample):
        return self.proc.required_branches(sample)

    def process(self, events):
        out = self.proc.process(events)
        gc.collect()
        n = len(RSS) + 1
        RSS.append((n, _rss_mb(), time.perf_counter() - self.start))
        print(f"chunk {n}: RSS {RSS[-1][1]:.1f} MB at {RSS[-1][2]:.0f} s", flush=True)
        if n in self.trace_at:
            import tracemalloc

            TRACE[n] = tracemalloc.take_snapshot()
        return out

    def postprocess(self, accumulator):
        return self.proc.postprocess(accumulator)


def make_inputs(workdir: Path, chunks: int, chunksize: int) -> list[Path]:
    from crema.generate import write_nanoaod

    workdir.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(chunks):
        process = "hh_sl" if i % 2 == 0 else "hh_dl"
        path = workdir / f"{process}_{chunksize}_{i}.root"
        if not path.exists():
            write_nanoaod(path, process, chunksize, seed=100 + i)
        files.append(path)
    return files


def config_for(workdir: Path, files: list[Path], chunksize: int):
    import yaml

    from crema.workflows.config import load_config

    config = {
        "luminosity_fb": 10.0,
        "processor": {"name": "hhbbww", "options": {
            "deephme": {}, "corrections": {"jets": True, "weights": True, "systematics": True}}},
        "executor": {"name": "iterative", "chunksize": chunksize, "progress": False},
        "output": str(workdir / "out"),
        "datasets": [{"name": "XHH", "kind": "signal", "process": "hh", "xsec_pb": 1.0,
                      "files": [str(f) for f in files]}],
    }
    path = workdir / "soak.yaml"
    path.write_text(yaml.safe_dump(config))
    return load_config(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chunks", type=int, default=30)
    p.add_argument("--chunksize", type=int, default=400, help="events per chunk (one generated file each)")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/crema-soak"))
    p.add_argument("--tracemalloc", action="store_true", help="diff Python allocations between chunk 3 and the last")
    p.add_argument("--write", action="store_true", help="write the result into benchmarks/RESULTS.md")
    p.add_argument("--label", default="", help="what this run measures (e.g. the code version), for RESULTS.md")
    args = p.parse_args()

    from crema.workflows.run import build_processor, run

    # coffea's executors cloudpickle the processor per chunk, by value for a class of __main__:
    # the recorder comes from this file imported as a module, so every copy appends to one list
    import bench_soak as this

    files = make_inputs(args.workdir / "samples", args.chunks, args.chunksize)
    config = config_for(args.workdir, files, args.chunksize)
    if args.tracemalloc:
        import tracemalloc

        tracemalloc.start(12)
    before = _rss_mb()
    proc = this.Recording(build_processor(config), (3, args.chunks) if args.tracemalloc else ())
    output, report = run(config, proc)
    RSS, TRACE = this.RSS, this.TRACE
    assert report.to_dict()["processed_events"] == args.chunks * args.chunksize and len(RSS) == args.chunks
    rss = {n: mb for n, mb, _ in RSS}
    growth = rss[args.chunks] / rss[3] - 1.0
    seconds = RSS[-1][2]
    print(f"RSS before the run {before:.1f} MB; after chunk 3 {rss[3]:.1f} MB, after chunk {args.chunks} "
          f"{rss[args.chunks]:.1f} MB: {100 * growth:+.1f}% ({seconds:.0f} s)")
    if args.tracemalloc:
        stats = TRACE[args.chunks].compare_to(TRACE[3], "traceback")
        for stat in stats[:8]:
            print(f"{stat.size_diff / 2**20:+.2f} MB in {stat.count_diff:+d} blocks")
            for line in stat.traceback.format()[-8:]:
                print("   ", line)
    if args.write:
        from _results import write_section

        every = ", ".join(f"{mb:.0f}" for _, mb, _ in RSS)
        body = (f"{args.chunks} chunks of {args.chunksize} generated X->HH->bbWW events (one file each, SL and DL "
                f"alternating), HH->bbWW processor with DeepHME, JEC/JER, weights and all systematic variations, "
                f"iterative executor, one process; RSS read with psutil after each chunk (after gc.collect()).\n\n"
                f"| | RSS after chunk 3 | RSS after chunk {args.chunks} | growth | run time |\n|---|---:|---:|---:|---:|\n"
                f"| {args.label or 'this version'} | {rss[3]:.1f} MB | {rss[args.chunks]:.1f} MB | {100 * growth:+.1f}% "
                f"| {seconds:.0f} s |\n\nRSS per chunk (MB): {every}\n")
        write_section("soak", body, command=f"nice python benchmarks/bench_soak.py --chunks {args.chunks} "
                                            f"--chunksize {args.chunksize} --write")


if __name__ == "__main__":
    main()
