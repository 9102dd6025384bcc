"""ML4EFT: the ONNX terms and r(x, c) per event on one core, and the training throughput of one network.

Times are CPU time of this (single-threaded) process: the machine is shared, so wall time measures the load.

    python benchmarks/bench_ml4eft.py [MODEL_DIR]

Without MODEL_DIR the default architecture (18 features, 2 WCs = 5 terms, 5 replicas each, hidden
100-100-100) is exported with random weights: inference time does not depend on the weights.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from crema.models import ml4eft_train as mt
from crema.models.ml4eft import ML4EFTModel, load_train_config


def best(f, repeat=3):
    times = []
    for _ in range(repeat):
        t = time.process_time()
        f()
        times.append(time.process_time() - t)
    return min(times)


def random_model(tmp: Path, replicas: int = 5) -> Path:
    import json

    cfg = load_train_config()
    torch.manual_seed(0)
    nets = [[mt.TermNet(len(cfg.features), cfg.hidden, k) for _ in range(replicas)] for k in cfg.term_scales().values()]
    mt.export_onnx(mt.Ensemble(np.zeros(len(cfg.features)), np.ones(len(cfg.features)), nets).eval(),
                   tmp / "ml4eft.onnx", len(cfg.features))
    (tmp / "ml4eft.json").write_text(json.dumps({"wc_names": cfg.wc_names, "features": cfg.features,
                                                 "terms": list(cfg.term_scales()), "quantile_edges": {},
                                                 "training": {"fold": "even"}}))
    return tmp


def main(model_dir: str | None = None, n: int = 200_000) -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(model_dir) if model_dir else random_model(Path(tmp))
        model = ML4EFTModel(path, threads=1)
        x = np.random.default_rng(1).normal(size=(n, len(model.features))).astype(np.float32)
        model(x[:1000])  # session
        t_nn = best(lambda: model(x))
        terms = model(x)
        points = np.random.default_rng(2).normal(size=(10, len(model.wc_names)))
        t_r = best(lambda: [model.ratio_from_terms(terms, p) for p in points]) / len(points)
        print(f"model: {model_dir or 'random weights, default architecture, 5 replicas'}")
        print(f"networks (all terms, replica median), {n} events: {t_nn:.2f} s -> {n / t_nn:,.0f} events/s")
        print(f"r(x, c) from the terms, one point: {t_r * 1e3:.2f} ms -> {n / t_r:,.0f} events/s")
    # training throughput of one network (one thread), extrapolated in RESULTS.md
    cfg = load_train_config(None, max_epochs=3, patience=3)
    m = 20_000
    xt = torch.randn(m, len(cfg.features))
    w = torch.ones(m)
    t = time.process_time()
    _, info = mt.train_network(xt, w, w * 1.2, np.arange(16_000), np.arange(16_000, m), 2.0, cfg, seed=1)
    dt = time.process_time() - t
    print(f"training: {info['epochs']} epochs x 16,000 events (batch {cfg.batch_size}) in {dt:.1f} s -> "
          f"{info['epochs'] * 16_000 / dt:,.0f} event-epochs/s")


if __name__ == "__main__":
    main(*sys.argv[1:2])
