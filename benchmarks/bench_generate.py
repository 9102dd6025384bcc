"""Benchmark of the synthetic NanoAODv12 generator: ``write_nanoaod`` throughput on one core.

    python benchmarks/bench_generate.py            # 1M tt_sl events
    python benchmarks/bench_generate.py -n 200000 -p hh_sl

Runs single-threaded (BLAS/OpenMP threads limited to 1 before numpy loads; the
generator itself uses no threads), times the JEC/JER table set-up separately from
the generation + writing, and records wall and CPU time, events/s, the time for
1M events and the file size in benchmarks/RESULTS.md (section "generate").  On a
shared machine the CPU time is the better measure of the generator's cost.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

sys.path.insert(0, str(Path(__file__).parent))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=1_000_000, help="events to generate (default 1M)")
    parser.add_argument("-p", "--process", default="tt_sl")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--chunk-size", type=int, default=100_000)
    parser.add_argument("--keep", action="store_true", help="keep the output file")
    parser.add_argument("--no-record", action="store_true", help="do not write benchmarks/RESULTS.md")
    args = parser.parse_args(argv)

    from crema.generate import write_nanoaod
    from crema.generate.jec import jec, jer

    t0 = time.perf_counter()
    jec(), jer()
    setup = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{args.process}.root"
        wall0, cpu0 = time.perf_counter(), time.process_time()
        write_nanoaod(path, args.process, args.n, seed=args.seed, chunk_size=args.chunk_size)
        wall = time.perf_counter() - wall0
        cpu = time.process_time() - cpu0
        size = path.stat().st_size
        if args.keep:
            kept = Path.cwd() / path.name
            path.replace(kept)
            print(f"kept {kept}")

    rate = args.n / wall
    per_million = 1e6 / rate
    print(f"{args.process}: {args.n} events in {wall:.1f} s wall ({cpu:.1f} s CPU) -> {rate:,.0f} events/s")
    print(f"1M events: {per_million:.1f} s wall, {cpu * 1e6 / args.n:.1f} s CPU; table set-up {setup:.1f} s; file {size / 1e6:.0f} MB")
    if args.no_record:
        return
    from _results import write_section

    body = f"""
`write_nanoaod` (generation + LZ4 writing, chunk_size {args.chunk_size:,}) of **{args.n:,} `{args.process}` events**, one core.

| quantity | value |
|---|---|
| wall time | {wall:.1f} s |
| CPU time | {cpu:.1f} s |
| throughput | {rate:,.0f} events/s |
| time for 1M events | {per_million:.1f} s wall, {cpu * 1e6 / args.n:.1f} s CPU |
| JEC/JER table set-up (once per process) | {setup:.1f} s |
| file size | {size / 1e6:.0f} MB ({size / args.n:.0f} B/event) |
"""
    write_section("generate", body)


if __name__ == "__main__":
    main()
