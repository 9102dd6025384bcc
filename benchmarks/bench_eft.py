"""EFTHist fill: time against a plain weighted hist fill (2 WCs), and peak memory at 26 WCs (378 terms).

    python benchmarks/bench_eft.py
"""

from __future__ import annotations

import time
import tracemalloc

import hist
import numpy as np

from crema.histograms.eft import EFTHist, n_terms


def axes():
    return (hist.axis.StrCategory(["nominal"], name="systematic"), hist.axis.Regular(40, 0, 1000, name="x"))


def best(f, repeat=30):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times)


def main(n: int = 100_000) -> None:
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1000, n)
    w = rng.normal(1, 0.2, n)
    coef2 = rng.normal(size=(n, n_terms(2)))
    plain = hist.Hist(*axes(), storage=hist.storage.Weight())
    eft = EFTHist(*axes(), wc_names=["a", "b"])
    eft.fill(coef2[:10], weight=w[:10], systematic="nominal", x=x[:10])  # compile the fill loop first
    t_plain, t_eft = [], []
    for _ in range(5):  # interleaved: the machine is shared, its load drifts
        t_plain.append(best(lambda: plain.fill(systematic="nominal", x=x, weight=w)))
        t_eft.append(best(lambda: eft.fill(coef2, weight=w, systematic="nominal", x=x)))
    t_plain, t_eft = min(t_plain), min(t_eft)
    print(f"{n} events, 2 WCs (6 terms): plain weighted fill {t_plain * 1e3:.2f} ms, EFT fill {t_eft * 1e3:.2f} ms, "
          f"ratio {t_eft / t_plain:.2f}")

    names = [f"c{i}" for i in range(26)]
    coef = rng.normal(size=(n, n_terms(26))).astype(np.float32)
    h26 = EFTHist(*axes(), wc_names=names, benchmarks=[[0.0] * 26, [1.0] * 26])
    h26.copy().fill(coef[:10], weight=w[:10], systematic="nominal", x=x[:10])  # compile for float32 first
    tracemalloc.start()
    t0 = time.perf_counter()
    h26.fill(coef, weight=w, systematic="nominal", x=x)
    dt = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    mb = coef.nbytes / 1e6
    print(f"{n} events, 26 WCs ({n_terms(26)} terms): coefficient array {mb:.0f} MB (float32), fill peak extra "
          f"{peak / 1e6:.1f} MB, total {mb + peak / 1e6:.0f} MB ({(mb + peak / 1e6) / mb:.2f}x the array), {dt:.2f} s")


if __name__ == "__main__":
    main()
