"""Cost of the jet corrections and event weights, per million jets, next to a plain read of their inputs.

On generated tt_sl NanoAODv12 (crema.generate), in one process:

(a) read: uproot reads exactly the branches JetCorrector uses (Jet pt/eta/phi/mass/rawFactor/area/
    genJetIdx, GenJet pt/eta/phi/mass, Rho, run/lumi/event, genWeight);
(b) JEC+JER nominal: ``JetCorrector.correct(events)`` on events already in memory;
(c) all variations: ``correct_all`` (nominal + 11 JES sources x 2 + JER up/down, sharing the JEC/JER);
(d) MET propagation for the nominal jets; (e) ``EventWeights.factors`` (pileup, muon, electron).

One-time costs (era validation, compiling the JERC file) are reported separately. Best of --repeat.

    python benchmarks/bench_corrections.py -n 150000
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

BRANCHES = ["nJet", "Jet_pt", "Jet_eta", "Jet_phi", "Jet_mass", "Jet_rawFactor", "Jet_area", "Jet_genJetIdx",
            "nGenJet", "GenJet_pt", "GenJet_eta", "GenJet_phi", "GenJet_mass", "Rho_fixedGridRhoFastjetAll",
            "run", "luminosityBlock", "event", "genWeight"]


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--events", type=int, default=150_000, help="generated tt_sl events")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the generated file here")
    args = parser.parse_args()

    import awkward as ak
    import uproot
    from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

    from crema.corrections import files
    from crema.corrections.era import load_era
    from crema.corrections.jets import JetCorrector
    from crema.corrections.weights import EventWeights
    from crema.generate import write_nanoaod
    from crema.selections import hhbbww as sel
    from crema.selections.config import load_selection

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="crema-bench-corr-"))
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"tt_sl_{args.events}.root"
    if not path.exists():
        print(f"generating {path}", flush=True)
        write_nanoaod(path, "tt_sl", args.events, seed=42)

    start = time.perf_counter()
    era = load_era("2022")
    t_era = time.perf_counter() - start
    jc = JetCorrector(era)
    start = time.perf_counter()
    files.correction_set(jc.path)
    t_compile = time.perf_counter() - start

    def read():
        with uproot.open(path) as f:
            return f["Events"].arrays(BRANCHES)

    t_read = best(read, args.repeat)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        events = NanoEventsFactory.from_root({str(path): "Events"}, schemaclass=NanoAODSchema, mode="eager",
                                             uproot_options={"filter_name": BRANCHES + ["Pileup_nTrueInt", "nElectron",
                                                             "Electron_*", "nMuon", "Muon_*", "PuppiMET_*",
                                                             "Jet_jetId", "Jet_btagPNetB", "Jet_hadronFlavour",
                                                             "nFatJet", "FatJet_*"]}).events()
    n_jets = int(ak.sum(ak.num(events.Jet, axis=1)))
    per_m = 1e6 / n_jets

    t_nominal = best(lambda: jc.correct(events), args.repeat)
    t_all = best(lambda: jc.correct_all(events), args.repeat)
    jets = jc.correct(events)
    t_met = best(lambda: jc.corrected_met(events, jets), args.repeat)
    cfg = load_selection("hhbbww_run3")
    objects = sel.select_objects(events, cfg, 0.245)
    ew = EventWeights(era, cfg.btag)
    t_weights = best(lambda: ew.factors(events, objects.leptons, objects.jets), args.repeat)

    n_var = len(jc.variations) + 1
    rows = [
        ("(a) read the inputs (uproot, 18 branches)", t_read),
        ("(b) JEC + JER, nominal", t_nominal),
        (f"(c) all {n_var} jet variations (correct_all)", t_all),
        ("(d) MET propagation (nominal jets)", t_met),
        ("(e) event weights: pileup, muon id/iso, electron id", t_weights),
    ]
    body = [
        f"{args.events} generated tt_sl events, {n_jets} AK4 jets; best of {args.repeat}.",
        "",
        "| step | seconds | s per 1M jets | x read |",
        "|---|---:|---:|---:|",
    ]
    body += [f"| {name} | {t:.3f} | {t * per_m:.2f} | {t / t_read:.1f} |" for name, t in rows]
    body += [
        "",
        f"One-time per process: era load and validation {t_era:.2f} s; compiling the JERC file {t_compile:.2f} s.",
        f"Per variation, beyond the shared JEC/JER: {(t_all - t_nominal) / (n_var - 1) * per_m:.2f} s per 1M jets.",
    ]
    text = "\n".join(body)
    print(text)
    from _results import write_section

    write_section("corrections", text)


if __name__ == "__main__":
    main()
