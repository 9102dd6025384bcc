"""Cost of the jet calibration DNN inside the HH->bbWW processor, next to the correctionlib JEC.

On generated tt_sl NanoAODv12 with the PFNano tables (crema.generate, ``pfnano=True``), the same
events run through the HH->bbWW processor (iterative executor, one core, nominal corrections:
JEC or DNN + JER smearing + MET, no weights or systematics) with

* ``jet_calibration: {method: correctionlib}`` (the era's L1L2L3Res JEC),
* ``{method: dnn, model: deepsets_generated}`` (Deep Sets over the PF candidates and SVs),
* ``{method: dnn, model: jet_only_generated}`` (jet-level inputs only),

and the time spent in the calibration wrapper during those runs is recorded (jets/s). The wrapper
alone on events in memory is split into feature extraction (awkward -> numpy) and the network
(onnxruntime, one thread). Each configuration gets one warm-up chunk first (session creation,
imports); times are the best of --repeat.

    python benchmarks/bench_calibration.py -n 20000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _timed import STATS, Timed

CONFIGS = {
    "correctionlib JEC": {"method": "correctionlib"},
    "DNN deepsets_generated": {"method": "dnn", "model": "deepsets_generated", "threads": 1},
    "DNN jet_only_generated": {"method": "dnn", "model": "jet_only_generated", "threads": 1},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--events", type=int, default=20_000, help="generated tt_sl events")
    parser.add_argument("--chunksize", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the generated file here")
    args = parser.parse_args()

    import awkward as ak
    import numpy as np
    from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

    from crema.generate import write_nanoaod
    from crema.models.jet_calibration import (
        JetCalibration,
        compute_features,
        extract,
        shipped_model,
    )
    from crema.workflows.config import Config, Dataset, ExecutorConfig, ProcessorConfig
    from crema.workflows.run import build_processor, run

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="crema-bench-calib-"))
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"tt_sl_pfnano_{args.events}.root"
    if not path.exists():
        print(f"generating {path}", flush=True)
        write_nanoaod(path, "tt_sl", args.events, seed=43, pfnano=True)

    def config(calibration: dict, maxchunks: int | None = None) -> Config:
        options = {"corrections": {"jets": True, "weights": False, "systematics": False, "jet_calibration": calibration}}
        return Config(datasets=[Dataset("TT", "background", "ttbar", files=[str(path)], xsec_pb=1.0)], luminosity_fb=1.0,
                      processor=ProcessorConfig("hhbbww", options),
                      executor=ExecutorConfig(chunksize=args.chunksize, maxchunks=maxchunks, progress=False))

    rows = []
    for label, calibration in CONFIGS.items():
        cfg = config(calibration)
        run(config(calibration, maxchunks=1))  # warm-up: sessions, correctionlib, imports
        best, timed = None, None
        for _ in range(args.repeat):
            proc = build_processor(cfg)
            if proc.jet_corrector.calibration is not None:
                proc.jet_corrector.calibration = Timed(proc.jet_corrector.calibration, label)
            start = time.perf_counter()
            output, _ = run(cfg, proc)
            seconds = time.perf_counter() - start
            if best is None or seconds < best:
                best, timed = seconds, dict(STATS[label]) if label in STATS else None
        n = sum(output["nevents"].values())
        rows.append((label, n, best, timed))
        print(f"{label}: {n / best:,.0f} events/s" + (f", wrapper {timed['jets'] / timed['seconds']:,.0f} jets/s" if timed else ""),
              flush=True)

    # the wrapper alone, on events in memory: feature extraction vs network
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        events = NanoEventsFactory.from_root({str(path): "Events"}, schemaclass=NanoAODSchema, mode="eager",
                                             entry_stop=min(args.events, args.chunksize)).events()
    n_jets = int(ak.sum(ak.num(events.Jet, axis=1)))
    alone = []
    for label, calibration in CONFIGS.items():
        if calibration["method"] != "dnn":
            continue
        model = JetCalibration(shipped_model(calibration["model"]), threads=1)
        model(events.Jet[:10], events[:10])  # session
        times = {"features": [], "network": []}
        for _ in range(args.repeat):
            start = time.perf_counter()
            flat = {k: np.asarray(ak.to_numpy(v)) for k, v in extract(model.features, events.Jet, events).items()}
            arrays = compute_features(model.features, flat)
            mid = time.perf_counter()
            model.evaluate(arrays)
            times["features"].append(mid - start)
            times["network"].append(time.perf_counter() - mid)
        alone.append((label, min(times["features"]), min(times["network"])))

    base = rows[0][2]
    body = [
        (f"{rows[0][1]:,} generated tt_sl events with PFNano tables ({n_jets / min(args.events, args.chunksize):.1f} AK4 jets "
         f"per event), HH->bbWW processor, iterative executor, chunksize {args.chunksize:,}, one core; corrections "
         "nominal only (calibration + JER + MET; no weights, no systematics); best of "
         f"{args.repeat} after a warm-up chunk."),
        "",
        "| jet calibration | events | seconds | events/s | time / JEC time | wrapper jets/s (in the processor) | wrapper share of the time |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, n, seconds, timed in rows:
        jets_s = f"{timed['jets'] / timed['seconds']:,.0f}" if timed else "-"
        share = f"{100 * timed['seconds'] / seconds:.0f} %" if timed else "-"
        body.append(f"| {label} | {n:,} | {seconds:.2f} | {n / seconds:,.0f} | {seconds / base:.2f} | {jets_s} | {share} |")
    body += [
        "",
        f"The wrapper alone on {n_jets:,} jets in memory (one chunk), one onnxruntime thread:",
        "",
        "| model | features (awkward -> numpy) jets/s | network (onnxruntime) jets/s | total jets/s |",
        "|---|---:|---:|---:|",
    ]
    body += [f"| {label} | {n_jets / f:,.0f} | {n_jets / t:,.0f} | {n_jets / (f + t):,.0f} |" for label, f, t in alone]
    text = "\n".join(body)
    print(text)
    from _results import write_section

    write_section("Jet calibration DNN", text)


if __name__ == "__main__":
    main()
