"""Event-level selection on generated data-like and simulated files: golden JSON, MET filters, triggers,
primary-dataset overlap, jet veto map, processed lumis, Runs-tree normalisation, computed jet ID."""

from __future__ import annotations

import json
import warnings
from dataclasses import replace

import awkward as ak
import correctionlib
import numpy as np
import pytest
import uproot
import yaml
from coffea.nanoevents import NanoAODSchema, NanoEventsFactory
from conftest import REAL_NANO

from crema.corrections.era import CORRECTIONS_DIR, load_era
from crema.corrections.jetveto import JetVeto
from crema.generate import write_nanoaod
from crema.schema import ConfigError
from crema.selections.config import load_selection
from crema.selections.event import LUMI_DIR
from crema.selections.jetid import computed_jet_id, resolve_needs, version_hint
from crema.selections.objects import jet_masks, leptons
from crema.workflows.config import load_config
from crema.workflows.run import InputError, build_processor, preflight, run

ERA = load_era("2022")
GOLDEN = json.loads((LUMI_DIR / ERA.golden_json).read_text())
PDS = ("Muon", "EGamma", "MuonEG")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("events")
    return {"data": write_nanoaod(tmp / "data.root", "tt_dl", 1000, seed=5, data=True),
            "mc": write_nanoaod(tmp / "mc.root", "tt_dl", 1000, seed=6), "dir": tmp}


def write_config(tmp, datasets, name="config.yaml", **executor):
    config = {"luminosity_fb": 2.0, "processor": {"name": "hhbbww", "options": {}},
              "executor": {"name": "iterative", "chunksize": 500, "progress": False, **executor},
              "datasets": datasets}
    path = tmp / name
    path.write_text(yaml.safe_dump(config))
    return load_config(path)


def datasets(files, pds=PDS):
    data = [{"name": f"Data{pd}", "kind": "data", "process": "data", "primary_dataset": pd, "files": [str(files["data"])]}
            for pd in pds]
    return data + [{"name": "TT", "kind": "background", "process": "ttbar", "xsec_pb": 3.0, "files": [str(files["mc"])]}]


@pytest.fixture(scope="module")
def iterative(files):
    return run(write_config(files["dir"], datasets(files)))[0]


@pytest.fixture(scope="module")
def branches(files):
    def read(kind):
        return uproot.open(files[kind])["Events"].arrays(library="np")
    return {"data": read("data"), "mc": read("mc")}


def in_golden(run, lumi):
    return any(lo <= lumi <= hi for lo, hi in GOLDEN.get(str(run), []))


def test_cutflow_order_and_names(iterative):
    cuts = list(iterative["cutflow"]["DataMuon"]["sl"])
    assert cuts[:5] == ["all events", "golden_json", "met_filters", "trigger", "jet_veto"]
    assert list(iterative["cutflow"]["TT"]["dl"])[:4] == ["all events", "met_filters", "trigger", "jet_veto"]


def test_golden_json_and_met_filter_counts_match_plain_python(iterative, branches):
    for kind, dataset in (("data", "DataMuon"), ("mc", "TT")):
        b = branches[kind]
        golden = ([in_golden(r, ls) for r, ls in zip(b["run"].tolist(), b["luminosityBlock"].tolist())]
                  if kind == "data" else [True] * len(b["event"]))
        filters = [all(bool(b[f][i]) for f in ERA.met_filters) for i in range(len(golden))]
        flow = iterative["cutflow"][dataset]["sl"]
        if kind == "data":
            assert flow["golden_json"] == sum(golden)
            assert 0.05 <= 1 - sum(golden) / len(golden) <= 0.20  # generated lumi sections outside the JSON
        assert flow["met_filters"] == sum(g and f for g, f in zip(golden, filters))
        assert flow["met_filters"] < flow["all events"] - (len(golden) - sum(golden))  # some filter failed


def test_processed_lumis_are_the_certified_ones(iterative, branches):
    b = branches["data"]
    expected = {(r, ls) for r, ls in zip(b["run"].tolist(), b["luminosityBlock"].tolist()) if in_golden(r, ls)}
    got = {(int(r), ls) for r, ranges in iterative["processed_lumis"]["DataMuon"].items()
           for lo, hi in ranges for ls in range(lo, hi + 1)}
    assert got == expected and len(expected) > 5
    assert "TT" not in iterative["processed_lumis"]


def test_an_event_in_two_primary_datasets_counts_once(iterative, files):
    # the same file as every PD; one dataset without PD (no overlap removal) gives the union
    single = run(write_config(files["dir"], [{"name": "Data", "kind": "data", "process": "data",
                                              "files": [str(files["data"])]}], name="single.yaml"))[0]
    for channel in ("sl", "dl"):
        per_pd = [iterative["cutflow"][f"Data{pd}"][channel]["trigger"] for pd in PDS]
        union = single["cutflow"]["Data"][channel]["trigger"]
        assert sum(per_pd) == union and max(per_pd) < union
        assert iterative["cutflow"]["DataMuon"][channel]["trigger"] > 0


def test_overlap_needs_a_primary_dataset_per_data_dataset(files):
    ds = datasets(files, pds=("Muon",))
    ds.append({"name": "Other", "kind": "data", "process": "data", "files": [str(files["data"])]})
    with pytest.raises(ConfigError, match=r"datasets.Other.primary_dataset"):
        build_processor(write_config(files["dir"], ds, name="nopd.yaml"))
    ds[-1]["primary_dataset"] = "JetMET"
    with pytest.raises(ConfigError, match=r"datasets.Other.primary_dataset: 'JetMET' is not a primary dataset"):
        build_processor(write_config(files["dir"], ds, name="badpd.yaml"))


def test_jet_veto_matches_direct_correctionlib(files):
    events = NanoEventsFactory.from_root({str(files["data"]): "Events"}, schemaclass=NanoAODSchema,
                                         mode="eager").events()
    passes = JetVeto(ERA.jet_veto).passes(events.Jet, events.Muon)
    corr = correctionlib.CorrectionSet.from_file(str(CORRECTIONS_DIR / ERA.jet_veto.file))[ERA.jet_veto.correction]
    b = uproot.open(files["data"])["Events"].arrays(library="ak")
    expected = []
    for ev in ak.to_list(b[["Jet_pt", "Jet_eta", "Jet_phi", "Jet_jetId", "Jet_chEmEF", "Jet_neEmEF",
                            "Muon_eta", "Muon_phi", "Muon_isPFcand"]]):
        muons = [(e, p) for e, p, pf in zip(ev["Muon_eta"], ev["Muon_phi"], ev["Muon_isPFcand"]) if pf]
        vetoed = False
        for pt, eta, phi, jid, ch, ne in zip(ev["Jet_pt"], ev["Jet_eta"], ev["Jet_phi"], ev["Jet_jetId"],
                                             ev["Jet_chEmEF"], ev["Jet_neEmEF"]):
            dr = [np.hypot(eta - me, (phi - mp + np.pi) % (2 * np.pi) - np.pi) for me, mp in muons]
            if pt > 15 and jid & 2 and ch + ne < 0.9 and all(d >= 0.2 for d in dr):
                vetoed |= corr.evaluate("jetvetomap", eta, phi) != 0
        expected.append(not vetoed)
    np.testing.assert_array_equal(passes, expected)
    assert 0 < sum(1 for e in expected if not e) < 0.3 * len(expected)


def test_runs_tree_normalisation(iterative, files):
    sumw_runs = float(uproot.open(files["mc"])["Runs"]["genEventSumw"].array(library="np").sum())
    norm = iterative["normalisation"]["TT"]
    assert norm["method"] == "runs_tree" and norm["sumw"] == pytest.approx(sumw_runs, rel=1e-9)
    assert norm["processed_sumw"] == pytest.approx(sumw_runs, rel=1e-9)  # every chunk processed: the same
    assert iterative["scale"]["TT"] == pytest.approx(3.0 * 1000 * 2.0 / sumw_runs)
    # one chunk of two: the file counts with the share of its entries processed, so the partial run's
    # yields estimate the whole dataset's (not scaled down by the share processed)
    tt = [d for d in datasets(files) if d["name"] == "TT"]
    part, report = run(write_config(files["dir"], tt, name="part.yaml", maxchunks=1))
    share = report.to_dict()["processed_events"] / uproot.open(files["mc"])["Events"].num_entries
    assert 0.2 < share < 0.8
    assert part["normalisation"]["TT"]["method"] == "runs_tree"
    assert part["normalisation"]["TT"]["sumw"] == pytest.approx(share * sumw_runs, rel=1e-9)
    assert part["normalisation"]["TT"]["processed_sumw"] < 0.8 * sumw_runs
    assert part["scale"]["TT"] == pytest.approx(3.0 * 1000 * 2.0 / (share * sumw_runs))


def test_no_runs_tree_falls_back_to_processed_sum(tmp_path):
    cfg = write_config(tmp_path, [{"name": "TT", "kind": "background", "process": "ttbar", "xsec_pb": 3.0,
                                   "files": [str(REAL_NANO)]}])
    cfg = replace(cfg, processor=replace(cfg.processor, options={"event_selection": False}))
    out = run(cfg)[0]
    assert out["normalisation"]["TT"]["method"] == "processed_genweight"
    assert out["normalisation"]["TT"]["sumw"] == out["sumw"]["TT"]


@pytest.mark.slow  # worker start-up: about a minute each on a loaded machine
@pytest.mark.parametrize("executor", ["futures", "dask"])
def test_executors_agree(iterative, files, executor):
    config = write_config(files["dir"], datasets(files), name=f"{executor}.yaml").with_executor(name=executor, workers=2)
    other = run(config)[0]
    for key in ("cutflow", "processed_lumis", "normalisation", "scale"):
        assert other[key] == iterative[key], key
    for name, h in iterative["histograms"].items():
        np.testing.assert_allclose(other["histograms"][name].values(flow=True), h.values(flow=True), err_msg=name)


def test_missing_hlt_path_is_an_error_naming_it(tmp_path, files):
    cfg = write_config(tmp_path, [{"name": "TT", "kind": "background", "process": "ttbar", "xsec_pb": 1.0,
                                   "files": [str(REAL_NANO)]}])
    with pytest.raises(InputError, match=r"branch 'HLT_Ele23_Ele12_CaloIdL_TrackIdL_IsoVL' is missing; it is needed "
                                         r"by trigger \(era 2022 triggers.double_electron\)"):
        preflight(cfg, build_processor(cfg))
    # an era that counts missing paths as not fired: start-up passes, nothing fires
    era = yaml.safe_load((CORRECTIONS_DIR.parent.parent / "configs" / "eras" / "2022.yaml").read_text())
    era["triggers"]["missing"] = "not_fired"
    (tmp_path / "era.yaml").write_text(yaml.safe_dump(era))
    cfg = replace(cfg, era=str(tmp_path / "era.yaml"))
    out = run(cfg)[0]
    assert out["cutflow"]["TT"]["sl"]["trigger"] == 0 and out["cutflow"]["TT"]["sl"]["met_filters"] > 0


def _events(path):
    return NanoEventsFactory.from_root({str(path): "Events"}, schemaclass=NanoAODSchema, mode="eager").events()


def test_v12_without_jet_id_selects_the_same_jets():
    events = _events(REAL_NANO)
    jets = events.Jet
    stripped = ak.zip({f: jets[f] for f in ak.fields(jets) if f != "jetId"}, with_name="Jet",
                      behavior=jets.behavior, depth_limit=2)
    recomputed = ak.with_field(stripped, computed_jet_id(stripped), "jetId")
    cfg = load_selection("hhbbww_run3")
    leps = leptons(events.Electron, events.Muon, cfg.electron, cfg.muon)
    stored_central, _ = jet_masks(jets, leps, cfg.jet)
    computed_central, _ = jet_masks(recomputed, leps, cfg.jet)
    a, b = ak.to_numpy(ak.flatten(stored_central)), ak.to_numpy(ak.flatten(computed_central))
    # documented differences: nConstituents / chHEF stand in for the multiplicities v12 lacks
    assert a.sum() > 500 and (a != b).sum() <= 0.002 * a.size
    eta = np.abs(ak.to_numpy(ak.flatten(jets.eta)))
    tight_stored = (ak.to_numpy(ak.flatten(jets.jetId)) & 2) > 0
    tight_computed = (ak.to_numpy(ak.flatten(recomputed.jetId)) & 2) > 0
    outside = eta > 2.6
    np.testing.assert_array_equal(tight_stored[outside], tight_computed[outside])


def test_missing_jet_id_is_computed_or_named():
    needs = {"Jet_jetId": "object selection", "FatJet_jetId": "object selection", "Jet_pt": "object selection"}
    branches = set(uproot.open(REAL_NANO)["Events"].keys()) - {"Jet_jetId", "FatJet_jetId"}
    resolved, notices = resolve_needs(needs, branches)
    assert "Jet_jetId" not in resolved and "Jet_nConstituents" in resolved and "Jet_neHEF" in resolved
    assert len(notices) == 1 and "NanoAODv15" in notices[0]
    # v12 fat jets have no energy fractions: the jetId stays needed, with the version change named
    assert "NanoAODv15 dropped FatJet_jetId" in resolved["FatJet_jetId"]
    assert "NanoAODv15 or later" in version_hint(branches)


def test_generated_data_has_no_generator_branches(files):
    with uproot.open(files["data"]) as f:
        keys = f["Events"].keys()
        assert "Runs" not in f
    assert not [k for k in keys if k.startswith(("Gen", "LHE", "genWeight", "Pileup_")) or "genPartIdx" in k]
    assert {"run", "luminosityBlock", *ERA.met_filters, *ERA.triggers.paths()} <= set(keys)
    runs = uproot.open(files["data"])["Events"]["run"].array(library="np")
    assert runs.min() >= 355862 and runs.max() <= 357900
    mc = uproot.open(files["mc"])
    w = mc["Events"]["genWeight"].array(library="np").astype(np.float64)
    r = mc["Runs"].arrays(library="np")
    assert r["genEventCount"][0] == len(w) and r["genEventSumw"][0] == pytest.approx(w.sum())
    assert r["genEventSumw2"][0] == pytest.approx((w**2).sum())


def test_fileset_json_in_files(tmp_path, files):
    fileset = {"TT": {"files": {str(files["mc"]): "Events"}, "metadata": {"xsec": 3.0}}}
    (tmp_path / "fileset.json").write_text(json.dumps(fileset))
    cfg = write_config(tmp_path, [{"name": "TT", "kind": "background", "process": "ttbar", "xsec_pb": 3.0,
                                   "files": ["fileset.json"]}])
    assert cfg.fileset() == {"TT": {"files": {str(files["mc"]): "Events"}}}
    fileset = {"Other": fileset["TT"]}
    (tmp_path / "fileset.json").write_text(json.dumps(fileset))
    with pytest.raises(ConfigError, match=r"datasets.TT.files: .*fileset.json has no dataset 'TT'.*Other"):
        cfg.fileset()


def test_era_event_section_errors_name_the_key(tmp_path):
    era = yaml.safe_load((CORRECTIONS_DIR.parent.parent / "configs" / "eras" / "2022.yaml").read_text())
    for change, message in (
        (lambda e: e["triggers"].update(single_muon=["IsoMu24"]), r"triggers.single_muon\[0\]: 'IsoMu24' is not an HLT"),
        (lambda e: e["jet_veto"].update(correction="nope"), r"jet_veto.correction"),
        (lambda e: e.update(met_filters=["goodVertices"]), r"met_filters\[0\]"),
        (lambda e: e["primary_datasets"].pop(), r"primary_datasets: trigger path 'HLT_Mu8"),
    ):
        bad = yaml.safe_load(yaml.safe_dump(era))
        change(bad)
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
        with warnings.catch_warnings(), pytest.raises(ConfigError, match=message):
            load_era(tmp_path / "bad.yaml")


def test_tth_processor_applies_the_same_event_steps(iterative, files):
    config = write_config(files["dir"], datasets(files, pds=("Muon",))[:1], name="tth.yaml")
    config = replace(config, processor=replace(config.processor, name="tth"))
    out = run(config)[0]
    flow, ref = out["cutflow"]["DataMuon"]["sl"], iterative["cutflow"]["DataMuon"]["sl"]
    assert list(flow)[:5] == ["all events", "golden_json", "met_filters", "trigger", "jet_veto"]
    assert all(flow[k] == ref[k] for k in ("golden_json", "met_filters", "trigger", "jet_veto"))
    assert out["processed_lumis"] == {"DataMuon": iterative["processed_lumis"]["DataMuon"]}
