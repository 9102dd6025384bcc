"""Discriminants compared in crema fit: the trained classifier's score against the DeepHME mass.

One command runs the whole chain on the demo's samples (``src/crema/configs/demo.yaml``: generated
signal and filtered/biased backgrounds, 7.98 fb^-1), single-lepton channel:

1. generate the samples (``WORK/samples``, kept for reruns);
2. ``crema classifier-dataset``: the builtin ``hhbbww_sl`` features of every SL-selected event
   (``WORK/data``);
3. ``crema classifier-train --method <methods>``: 2 folds by event parity (``WORK/model``);
4. per method a run with ``processor.options.classifier: {model: WORK/model, method: M}``
   (``WORK/run_<M>``): every event is scored by the fold that did not train on it;
5. ``crema fit`` of the same run with observable ``hme_mass`` and with ``classifier_score``, the same
   channel (sl) and regions (the demo's ``fit:`` regions), normalisation uncertainties, luminosity
   uncertainty and MC statistical uncertainties; bins merged until the background's MC
   statistical uncertainty is at most ``--max-mc-stat`` in each (the same rule for both).

Corrections (and so shape systematics) are off by default to keep the chain short; ``--corrections``
uses the demo's. Nothing is tuned on the fitted events: training and model choice are fixed before,
and each event's score comes from the model of the other fold.

Usage: python benchmarks/bench_discriminants.py --work WORK [--methods bdt mlp] [--scale 1] [--reuse] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from crema.processors.classifier_dataset import ClassifierDatasetConfig
from crema.schema import from_dict
from crema.workflows.classifier import make_dataset, train
from crema.workflows.cli import run_and_write
from crema.workflows.config import dump_config, load_config
from crema.workflows.fit import run_fit
from crema.workflows.run import generate_inputs

DEMO = Path(__file__).resolve().parents[1] / "src" / "crema" / "configs" / "demo.yaml"
CHANNEL = "sl"


def with_options(config, **options):
    processor = replace(config.processor, options={**config.processor.options, **options})
    return replace(config, processor=processor)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True, help="working folder (samples, dataset, models, runs, fits)")
    parser.add_argument("--config", default=str(DEMO), help="run config (default: the demo's)")
    parser.add_argument("--methods", nargs="+", default=["bdt", "mlp"], choices=["bdt", "mlp", "cut"])
    parser.add_argument("--scale", type=float, default=1.0, help="scale the generated events (default 1)")
    parser.add_argument("--max-mc-stat", type=float, default=0.15,
                        help="merge bins until the background's relative MC stat is at most this (default 0.15)")
    parser.add_argument("--reuse", action="store_true",
                        help="keep the dataset, models and runs already in WORK (only the fits run again)")
    parser.add_argument("--corrections", action="store_true", help="keep the config's corrections and systematics")
    parser.add_argument("--no-write", action="store_true", help="do not update benchmarks/RESULTS.md")
    args = parser.parse_args()
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    config = load_config(args.config)
    if not args.corrections:
        config = with_options(config, corrections=None)
    config = replace(config, classifier=from_dict(ClassifierDatasetConfig, {"features": "hhbbww_sl", "channels": [CHANNEL]},
                                                  "classifier"))
    start = time.perf_counter()
    config = generate_inputs(config, work / "samples", args.scale, print, reuse=True)
    timings["generate"] = time.perf_counter() - start
    dump_config(config, work / "config.yaml")

    start = time.perf_counter()
    if not (args.reuse and (work / "data" / "features.parquet").is_file()):
        make_dataset(work / "config.yaml", work / "data")
        timings["classifier-dataset"] = time.perf_counter() - start
    start = time.perf_counter()
    if not (args.reuse and (work / "model" / "training.json").is_file()):
        train(work / "data", work / "model", args.methods, folds=2, seed=0)
        timings["classifier-train"] = time.perf_counter() - start

    fits: dict[str, dict] = {}
    for i, method in enumerate(args.methods):
        run_dir = work / f"run_{method}"
        start = time.perf_counter()
        if not (args.reuse and (run_dir / "histograms.root").is_file()):
            run_and_write(with_options(config, classifier={"model": str(work / "model"), "method": method}), run_dir,
                          plots=False)
            timings[f"run ({method})"] = time.perf_counter() - start
        for observable in (["hme_mass"] if i == 0 else []) + ["classifier_score"]:
            name = observable if observable == "hme_mass" else f"{method} score"
            fit = replace(config.fit, observable=observable, channels=[CHANNEL], ranking=0,
                          rebin=config.fit.rebin if observable == "hme_mass" else 1, max_mc_stat=args.max_mc_stat)
            start = time.perf_counter()
            fits[name] = run_fit(run_dir, work / f"fit_{method}_{observable}", fit, plots=False)
            timings[f"fit ({name})"] = time.perf_counter() - start

    hme = fits["hme_mass"]["expected_limit"]["median"]
    rows = []
    for name, r in fits.items():
        e = r["expected_limit"]
        rows.append(f"| {name} | {len(r['parameters'])} | {r['expected_significance']:.3f} | {e['median']:.3f} | "
                    f"[{e['minus1']:.3f}, {e['plus1']:.3f}] | {r['mu_hat']:.4f} | {hme / e['median']:.2f} |")
        print(f"{name}: expected significance {r['expected_significance']:.3f}, expected limit {e['median']:.3f} "
              f"[{e['minus1']:.3f}, {e['plus1']:.3f}], HME limit / this limit {hme / e['median']:.2f}")
    (work / "discriminants.json").write_text(json.dumps(
        {name: {k: r[k] for k in ("expected_significance", "expected_limit", "mu_hat", "channels")} for name, r in fits.items()},
        indent=2))
    body = (
        f"Demo samples (`{Path(args.config).name}`, scale {args.scale:g}, {config.luminosity_fb:g} fb^-1), channel "
        f"{CHANNEL}, regions {', '.join(config.fit.regions)}; corrections {'on' if args.corrections else 'off'} "
        f"(statistical, normalisation and luminosity uncertainties only); bins merged to background MC stat <= "
        f"{args.max_mc_stat:g}; Asimov data (mu = 1); classifier trained with 2 folds, each event scored by the "
        "fold that did not see it.\n\n"
        "| discriminant | parameters | expected significance | expected 95% CL limit on mu | 68% band | mu_hat (Asimov) "
        "| HME-mass limit / this limit |\n|---|---:|---:|---:|---|---:|---:|\n" + "\n".join(rows) + "\n\n"
        + "Stage wall times (machine shared with other jobs): "
        + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + "\n"
    )
    print(body)
    if not args.no_write:
        sys.path.insert(0, str(Path(__file__).parent))
        from _results import write_section

        write_section("Discriminants in crema fit", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
