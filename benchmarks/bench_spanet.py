"""Throughput of the SPANet wrapper and the share of its decoder, for the shipped models.

On generated events passing the SPANet selection (one lepton, >= 4 jets for ttH, >= 3 for HH),
one thread, the jets already selected (awkward, unsorted):

(a) the whole wrapper call ``SPANet(jets, met)``: inputs + network + decoding + awkward output;
(b) the network alone: ``InferenceSession.run`` on the ready feeds, same batches;
(c) the decoder alone on the network's outputs.

The decoder's share is reported as decoding / network time.  Timings are medians of ``--repeat`` runs,
all variants measured side by side in one process.

Usage: python benchmarks/bench_spanet.py [--events 50000] [--repeat 5] [--no-write]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import awkward as ak
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _results import write_section

from crema.generate import write_nanoaod
from crema.models.spanet import SPANet, decode, shipped_model
from crema.selections.config import load_selection
from crema.selections.hhbbww import select_objects

SETUPS = {"tth_sl": ("tth_sl", 4), "hh_sl": ("hh_sl", 3)}


def load(process: str, min_jets: int, n: int, tmp: Path):
    from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

    path = tmp / f"{process}.root"
    write_nanoaod(path, process, n, seed=99)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        events = NanoEventsFactory.from_root({str(path): "Events"}, schemaclass=NanoAODSchema, mode="eager").events()
    objs = select_objects(events, load_selection("hhbbww_run3"), 1.0)
    objs = objs[(ak.num(objs.leptons) == 1) & (ak.num(objs.jets) >= min_jets)]
    jets = ak.Array(ak.to_packed(ak.zip({f: objs.jets[f] for f in ("pt", "eta", "phi", "mass", "btagPNetB", "btagPNetQvG")})))
    met = ak.Array(ak.to_packed(ak.zip({f: objs.met[f] for f in ("pt", "phi")})))
    return jets, met


def median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def bench(name: str, n: int, repeat: int, tmp: Path) -> dict:
    process, min_jets = SETUPS[name]
    jets, met = load(process, min_jets, n, tmp)
    model = SPANet(shipped_model(name), name, threads=1)
    model(jets[:10], met[:10])  # session start-up outside the timing
    _, kw = model.prepare_awkward(jets, met)
    flat = {k: ak.to_numpy(v) for k, v in kw.items()}
    counts, order = flat.pop("counts"), flat.pop("order")
    met_arrays = {"pt": flat.pop("met_pt"), "phi": flat.pop("met_phi")}
    padded, _ = model.padded_jets(counts, order, flat)  # ready feeds, as numpy_call builds them
    feeds = model.inputs(padded, counts, met_arrays)
    raw = model.run(feeds)
    n_valid = feeds["Momenta_mask"].sum(1)
    probs = {p.name: raw[f"{p.name}_assignment_probability"] for p in model.event.particles}
    t_wrapper = median_time(lambda: model(jets, met), repeat)
    t_network = median_time(lambda: model.run(feeds), repeat)
    t_decode = median_time(lambda: decode(probs, model.event, n_valid), repeat)
    t_inputs = median_time(lambda: model.inputs(padded, counts, met_arrays), repeat)
    events = len(counts)
    return {"model": name, "events": events, "max_jets": model.max_jets, "wrapper": t_wrapper, "network": t_network,
            "decode": t_decode, "inputs": t_inputs}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=50_000, help="generated events per model (before selection)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in SETUPS:
            r = bench(name, args.events, args.repeat, Path(tmp))
            rows.append(r)
            print(r)
    lines = [("| model | events | jet slots | wrapper events/s | network events/s | decoding / network | "
              "input building / network | wrapper / network |"), "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['events']} | {r['max_jets']} | {r['events'] / r['wrapper']:,.0f} | "
                     f"{r['events'] / r['network']:,.0f} | {r['decode'] / r['network']:.1%} | "
                     f"{r['inputs'] / r['network']:.1%} | {r['wrapper'] / r['network']:.2f} |")
    body = (f"One thread; medians of {args.repeat} runs; all variants in one process.\n\n" + "\n".join(lines))
    print(body)
    if not args.no_write:
        write_section("SPANet wrapper", body)


if __name__ == "__main__":
    main()
