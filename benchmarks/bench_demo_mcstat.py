"""MC statistical precision of a run's plotted histograms (the ``crema demo`` output).

For every plotted nominal histogram (``<channel>_<region>_<observable>`` of RUN_DIR/histograms.root,
the regions and observables of the run's ``plots:`` block) the backgrounds are summed; every bin
holding more than ``--fraction`` (default 1%) of that histogram's total background must have a
relative MC statistical uncertainty sqrt(sum w^2) / sum w below ``--max-relative`` (default 20%).
Prints the worst bins, the number of bins checked and failing, and exits 1 if any fails.

Usage: python benchmarks/bench_demo_mcstat.py RUN_DIR [--fraction 0.01] [--max-relative 0.2] [--write]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import uproot

from crema.workflows.config import load_config
from crema.workflows.fit import _processes, read_channel


@dataclass(frozen=True)
class BinCheck:
    histogram: str
    bin: int
    low: float
    high: float
    fraction: float  # of the histogram's total background
    relative: float  # relative MC statistical uncertainty of the background sum


def mc_stat_bins(run_dir: str | Path, fraction: float = 0.01) -> list[BinCheck]:
    """Every plotted background bin above ``fraction`` of its histogram's total, with its relative MC stat."""
    run_dir = Path(run_dir)
    config = load_config(run_dir / "config.yaml")
    processes = _processes(config)
    regions = config.plots.regions
    observables = config.plots.observables
    out = []
    path = run_dir / "histograms.root"
    with uproot.open(path) as f:
        for directory in sorted(f.keys(cycle=False, recursive=False)):
            region = next((r for r in (regions or []) if f"_{r}_" in directory), None)
            if regions is not None and region is None:
                continue
            observable = directory.split(f"_{region}_", 1)[1] if region else directory
            if observables is not None and observable not in observables:
                continue
            ch = read_channel(f, directory, processes, directory, path)
            backgrounds = [v for p, v in ch.nominal.items() if processes[p] == "background"]
            if not backgrounds:
                continue
            values = np.sum([v for v, _ in backgrounds], axis=0)
            variances = np.sum([var for _, var in backgrounds], axis=0)
            total = values.sum()
            if total <= 0:
                continue
            for i in np.flatnonzero(values > fraction * total):
                out.append(BinCheck(directory, int(i), float(ch.edges[i]), float(ch.edges[i + 1]),
                                    float(values[i] / total), float(np.sqrt(variances[i]) / values[i])))
    return out


def _regions(histogram: str) -> list[str]:
    channel, rest = histogram.split("_", 1)
    return [r for r in ("inclusive", "resolved_1b", "resolved_2b", "boosted") if rest.startswith(r + "_")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--fraction", type=float, default=0.01)
    parser.add_argument("--max-relative", type=float, default=0.2)
    parser.add_argument("--worst", type=int, default=10, help="bins listed (default 10)")
    args = parser.parse_args()
    bins = mc_stat_bins(args.run_dir, args.fraction)
    failing = [b for b in bins if b.relative >= args.max_relative]
    histograms = {b.histogram for b in bins}
    print(f"{len(bins)} bins above {args.fraction:.0%} of their histogram's background in {len(histograms)} plotted "
          f"histograms; {len(failing)} with relative MC stat >= {args.max_relative:.0%}; "
          f"largest {max((b.relative for b in bins), default=0):.1%}")
    for name in sorted({b.histogram.split("_")[0] + "_" + region for b in bins for region in _regions(b.histogram)}):
        these = [b for b in bins if b.histogram.startswith(name + "_")]
        bad = sum(b.relative >= args.max_relative for b in these)
        print(f"  {name}: {len(these)} bins, {bad} failing, median MC stat {np.median([b.relative for b in these]):.1%}")
    for b in sorted(bins, key=lambda b: -b.relative)[: args.worst]:
        print(f"  {b.histogram} bin {b.bin} [{b.low:g}, {b.high:g}): {b.fraction:.1%} of background, "
              f"MC stat {b.relative:.1%}")
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
