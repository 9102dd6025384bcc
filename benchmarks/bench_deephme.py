"""Throughput of DeepHME inference: crema's wrapper vs DeepHME 1.2.0 vs a bare ONNX Runtime call.

All three on the same events (real NanoAODv12 ttbar events with two leptons,
tiled to >= 100k) and one thread:

(a) ``crema.models.deephme.DeepHME`` from awkward collections (unsorted jets)
    to the awkward output record;
(b) DeepHME 1.2.0 ``predict(output_format="mass")`` on the same events
    (jets pre-sorted for it), a fresh object per call as it requires; its
    sessions are forced to one thread;
(c) bare ``InferenceSession.run`` of the two folds on the already-built,
    already-standardised float32 input matrices -- once as a single call per
    fold (as 1.2.0 does) and once in the same batches crema uses.

Usage: python benchmarks/bench_deephme.py [--events 100000] [--repeat 3] [--no-write]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import platform
import sys
import time
import warnings
from pathlib import Path

import awkward as ak
import numpy as np
import onnxruntime as ort

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from _results import write_section  # noqa: E402

from crema.models.deephme import DEFAULT_MODELS, DeepHME, cvnotb_from_v12  # noqa: E402

DATA = HERE.parent / "tests" / "data" / "nano_tt_v12.root"
KIN = ["pt", "eta", "phi", "mass"]


def load(n_events: int) -> dict:
    """Two-lepton events of the real v12 file, tiled to >= n_events."""
    from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ev = NanoEventsFactory.from_root({str(DATA): "Events"}, schemaclass=NanoAODSchema, mode="eager").events()
    mu = ev.Muon[(ev.Muon.pt > 5) & ev.Muon.looseId]
    el = ev.Electron[(ev.Electron.pt > 5) & (ev.Electron.cutBased >= 1)]
    lep = ak.concatenate([ak.zip({k: mu[k] for k in KIN}), ak.zip({k: el[k] for k in KIN})], axis=1)
    lep = lep[ak.argsort(lep.pt, axis=1, ascending=False)]
    keep = ak.num(lep) >= 2
    jets = ev.Jet[(ev.Jet.pt > 20) & (abs(ev.Jet.eta) < 2.5) & (ev.Jet.jetId >= 2)][keep]
    fat = ev.FatJet[ev.FatJet.pt > 200][keep]
    jet_fields = KIN + ["btagPNetB", "btagPNetCvB", "btagPNetCvL", "btagPNetQvG", "PNetRegPtRawCorr", "PNetRegPtRawCorrNeutrino", "PNetRegPtRawRes"]
    jets = ak.zip({k: jets[k] for k in jet_fields} | {"btagPNetCvNotB": cvnotb_from_v12(jets.btagPNetB, jets.btagPNetCvL, jets.btagPNetTauVJet)})
    fat_fields = KIN + ["particleNet_QCD", "particleNet_XbbVsQCD", "particleNetWithMass_QCD", "particleNetWithMass_HbbvsQCD", "particleNet_massCorr"]
    objs = {
        "event_id": ev.event[keep],
        "leptons": lep[keep],
        "jets": jets,
        "fatjets": ak.zip({k: fat[k] for k in fat_fields}),
        "met": ak.zip({k: ev.PuppiMET[k][keep] for k in ("pt", "phi")}),
    }
    reps = -(-n_events // len(objs["event_id"]))
    # tile; event ids keep their parity (fold) but become unique
    tiled = {k: ak.concatenate([v] * reps) for k, v in objs.items()}
    eid = ak.to_numpy(tiled["event_id"]).astype(np.uint64)
    tiled["event_id"] = eid + 2 * np.repeat(np.arange(reps, dtype=np.uint64), len(objs["event_id"])) * np.uint64(1 << 20)
    # materialise into fresh contiguous buffers so no variant pays for lazy indexing
    return {k: ak.Array(ak.to_packed(v)) if isinstance(v, ak.Array) else v for k, v in tiled.items()}


def predict_kwargs(objs: dict) -> dict:
    jets = objs["jets"][ak.argsort(objs["jets"].btagPNetB, axis=1, ascending=False)]
    fat = objs["fatjets"][ak.argsort(objs["fatjets"].pt, axis=1, ascending=False)]
    lep = objs["leptons"]
    kw = {"event_id": objs["event_id"], "met_pt": objs["met"].pt, "met_phi": objs["met"].phi}
    for i in (1, 2):
        kw.update({f"lep{i}_{k}": lep[k][:, i - 1] for k in KIN})
    kw.update({f"jet_{k}": jets[k] for k in jets.fields})
    kw.update({f"fatjet_{k}": fat[k] for k in fat.fields})
    return {k: ak.Array(ak.to_packed(v)) if isinstance(v, ak.Array) else v for k, v in kw.items()}


def timed(fn, repeat: int) -> tuple[float, object]:
    best, result = np.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="print only, do not update RESULTS.md")
    args = parser.parse_args()

    objs = load(args.events)
    n = len(objs["event_id"])
    hme = DeepHME("DL", threads=1)

    # (c) inputs: the exact matrices crema feeds to each fold, captured once
    batches: dict[str, list[np.ndarray]] = {}
    run = hme.run

    def capture(x, model=None, output_names=None):
        batches.setdefault(model, []).append(x)
        return run(x, model=model, output_names=output_names)

    hme.run = capture
    hme(objs["event_id"], objs["leptons"], objs["jets"], objs["fatjets"], objs["met"])
    del hme.run  # back to the class method
    captured = {m: np.concatenate(b) for m, b in batches.items()}
    assert sum(len(x) for x in captured.values()) == n
    sessions = {m: hme.session(m) for m in captured}
    outputs = [o.name for o in sessions["even"].get_outputs()]

    def bare_single():
        for m, x in captured.items():
            sessions[m].run(outputs, {"input": x})

    def bare_batched():
        for m, x in captured.items():
            for s in range(0, len(x), hme.batch_size):
                sessions[m].run(outputs, {"input": x[s : s + hme.batch_size]})

    # (a) crema, awkward in -> awkward out (including the jet sorting)
    def crema():
        return hme(objs["event_id"], objs["leptons"], objs["jets"], objs["fatjets"], objs["met"])

    # (b) DeepHME 1.2.0, one thread, fresh object per call
    import importlib

    legacy = importlib.import_module("DeepHME.DeepHME")  # the module (the package re-exports the class under the same name)

    real_session = legacy.ort.InferenceSession

    def one_thread_session(path, *a, **k):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        return real_session(path, sess_options=opts, providers=["CPUExecutionProvider"])

    legacy.ort.InferenceSession = one_thread_session
    kw = predict_kwargs(objs)

    def deephme_120():
        return legacy.DeepHME(model_name=DEFAULT_MODELS["DL"], channel="DL").predict(**kw, output_format="mass")

    results = {}
    for name, fn in (("bare_single", bare_single), ("bare_batched", bare_batched), ("crema", crema), ("deephme_120", deephme_120)):
        results[name], _ = timed(fn, args.repeat)
        print(f"{name:14s} {results[name]:7.2f} s  {n / results[name]:9.0f} events/s", flush=True)
    legacy.ort.InferenceSession = real_session

    bare = min(results["bare_single"], results["bare_batched"])
    ratio_bare = results["crema"] / bare
    speedup = results["deephme_120"] / results["crema"]
    body = f"""
DeepHME DL (`{DEFAULT_MODELS['DL']}`), {n} events (the two-lepton events of `tests/data/nano_tt_v12.root`
tiled), one thread everywhere (ONNX Runtime intra-op threads = 1; DeepHME 1.2.0's sessions patched to
one thread), best of {args.repeat}. onnxruntime {ort.__version__}, numpy {np.__version__}, awkward {ak.__version__},
CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores (shared machine).

| variant | time [s] | events/s |
|---|---:|---:|
| (a) crema `DeepHME` (awkward in -> awkward out, incl. jet sorting; batch {hme.batch_size}) | {results['crema']:.2f} | {n / results['crema']:.0f} |
| (b) DeepHME 1.2.0 `predict` (fresh object per call, jets pre-sorted) | {results['deephme_120']:.2f} | {n / results['deephme_120']:.0f} |
| (c1) bare `InferenceSession.run`, one call per fold | {results['bare_single']:.2f} | {n / results['bare_single']:.0f} |
| (c2) bare `InferenceSession.run`, crema's batches | {results['bare_batched']:.2f} | {n / results['bare_batched']:.0f} |

- (a) vs (b): crema is {speedup:.2f}x as fast as DeepHME 1.2.0 (goal: >= 1) -- {'met' if speedup >= 1 else 'NOT met'}.
- (a) vs the faster bare run (c): {ratio_bare:.3f}x its time (goal: <= 1.10) -- {'met' if ratio_bare <= 1.10 else 'NOT met'}.
"""
    print(body)
    if not args.no_write:
        write_section("DeepHME inference", body, command=f"python benchmarks/bench_deephme.py --events {args.events} --repeat {args.repeat}")


if __name__ == "__main__":
    main()
