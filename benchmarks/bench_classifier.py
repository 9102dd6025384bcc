"""Signal-vs-background classifiers: physics metrics and the speed of the classifier inside the processor.

Inputs are the outputs of the classifier commands on the HH->bbWW SL study config::

    crema classifier-dataset configs/classifier_hhbbww_sl.yaml -o WORK/data
    crema classifier-train WORK/data -o WORK/model --method all --threads 1
    crema classifier-report WORK/model -o WORK/report

(a) the report's metrics (weighted, out of fold) and each classifier's best-threshold Asimov
    significance over the cut-and-count's;
(b) the model evaluation alone: :class:`ClassifierModel` (fold dispatch by event parity + ONNX)
    on the dataset's feature matrix, tiled to ``--rows`` rows, one thread (events/s per core);
(c) in the processor: the HH->bbWW processor (DeepHME on, no corrections) on the generated
    signal and ttbar SL samples with the BDT on, iterative executor, one core; the time spent in
    the classifier step (features from the observable language + model) per selected event.

Times are CPU seconds of the process (``time.process_time``, everything single-threaded), so
the rates are per core even when the machine is shared.

Usage: python benchmarks/bench_classifier.py --work WORK [--rows 1000000] [--repeat 3] [--no-write]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _results import write_section

from _timed_classifier import STATS, TimedClassifier

from crema.models.classifier.inference import ClassifierModel, read_features, read_training

def model_speed(model_dir: Path, data_dir: Path, method: str, rows: int, repeat: int) -> dict:
    table = pd.read_parquet(data_dir / "features.parquet")
    features = list(read_features(model_dir / "features.yaml"))
    k = read_training(model_dir)["folds"]
    paths = {f"fold{f}": model_dir / method / f"fold{f}" / "model.onnx" for f in range(k)}
    wrapper = ClassifierModel(paths, [], k, threads=1)
    reps = max(1, rows // len(table))
    X = np.tile(table[features].to_numpy(np.float32), (reps, 1))
    event = np.tile(table["event"].to_numpy(), reps)
    wrapper.numpy_call(X[:1000], event[:1000])  # sessions built outside the timing
    best = min(_cpu_seconds(lambda: wrapper.numpy_call(X, event)) for _ in range(repeat))
    return {"method": method, "rows": len(X), "seconds": best, "rate": len(X) / best}


def _cpu_seconds(fn) -> float:
    """CPU seconds of this process (one thread): events/s per core even on a shared machine."""
    start = time.process_time()
    fn()
    return time.process_time() - start


def processor_speed(work: Path, model_dir: Path) -> dict:
    from crema.workflows.config import load_config
    from crema.workflows.run import build_processor, run

    config = load_config(HERE.parent / "configs" / "classifier_hhbbww_sl.yaml")
    samples = work / "data" / "samples"
    datasets = [replace(d, files=[str(samples / f"{d.name}.root")], generate=None)
                for d in config.datasets if d.name in ("XHH_800_SL", "TTto1L")]
    options = {**config.processor.options, "classifier": {"model": str(model_dir), "method": "bdt"}, "channels": ["sl"]}
    config = replace(config, datasets=datasets, processor=replace(config.processor, options=options),
                     executor=replace(config.executor, progress=False))
    proc = build_processor(config)
    proc.classifier = TimedClassifier(proc.classifier)
    start = time.process_time()
    output, _ = run(config, proc)
    total = time.process_time() - start
    return {"events": sum(output["nevents"].values()), "selected": STATS["events"], "seconds": total,
            "classifier_seconds": STATS["seconds"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, required=True, help="directory holding data/, model/, report/")
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    model_dir = args.work / "model"
    report = json.loads((args.work / "report" / "classifier_report.json").read_text())
    data = yaml_load(args.work / "data" / "features.yaml")

    work = args.work
    lines = ["Made with:", "", "```bash",
             f"crema classifier-dataset configs/classifier_hhbbww_sl.yaml -o {work}/data",
             f"crema classifier-train {work}/data -o {work}/model --method all --threads 1",
             f"crema classifier-report {work}/model -o {work}/report",
             f"python benchmarks/bench_classifier.py --work {work} --rows {args.rows}", "```", "",
             "Rates are CPU seconds of one single-threaded process (`time.process_time`): per core, on a 2-core "
             "machine shared with other jobs.", "",
             f"HH->bbWW SL selection, X(800) vs ttbar + W+jets + DY + ttH generated with crema's generator "
             f"(`configs/classifier_hhbbww_sl.yaml`, {data['luminosity_fb']} fb^-1, DeepHME on): "
             f"{report['events']:,} selected events, signal yield {report['signal_yield']:.0f}, background yield "
             f"{report['background_yield']:.3g}. Two folds by event parity; every number is out of fold. "
             f"`max_sig`: best Asimov Z_A over score thresholds keeping >= {report['min_background']:g} weighted and "
             f">= {report['min_background_events']} simulated background events.", "",
             "| method | acc | AUC | Z_A (working point) | max_sig | max_sig / cut-and-count | s at best | b at best | R50 | R99 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for m, s in report["methods"].items():
        lines.append(f"| {m} | {s['accuracy']:.4f} | {s['auc']:.4f} | {s['asimov_significance']:.3f} | "
                     f"{s['max_significance']:.3f} | {s.get('max_significance_over_cut', float('nan')):.2f} | "
                     f"{s['best_s']:.0f} | {s['best_b']:.0f} | {s['r50']:.0f} | {s['r99']:.2f} |")
    lines += ["", f"Model evaluation alone (fold dispatch + onnxruntime, one thread, CPU time, best of {args.repeat}):", "",
              "| method | rows | CPU seconds | events/s per core |", "|---|---:|---:|---:|"]
    for method in read_training(model_dir)["methods"]:
        r = model_speed(model_dir, args.work / "data", method, args.rows, args.repeat)
        lines.append(f"| {method} | {r['rows']:,} | {r['seconds']:.3f} | {r['rate']:,.0f} |")
        print(r, flush=True)
    r = processor_speed(args.work, model_dir)
    print(r, flush=True)
    lines += ["", "In the processor (DeepHME on, no corrections, SL channel, iterative executor, one core): "
              f"{r['events']:,} events ({r['selected']:,} selected) in {r['seconds']:.1f} CPU s; the classifier step "
              f"(features from the observable language + BDT) took {r['classifier_seconds']:.2f} CPU s = "
              f"{r['selected'] / r['classifier_seconds']:,.0f} selected events/s, "
              f"{100 * r['classifier_seconds'] / r['seconds']:.1f}% of the run."]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section("Signal-vs-background classifiers", body)


def yaml_load(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


if __name__ == "__main__":
    main()
