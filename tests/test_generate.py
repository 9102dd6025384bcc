"""Tests of the synthetic NanoAODv12 generator (crema.generate)."""

from __future__ import annotations

import warnings
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot

from crema.generate import PROCESSES, generate_events, write_nanoaod
from crema.generate import events as gen_events

REAL_FILE = Path(__file__).parent / "data" / "nano_tt_v12.root"
ALL_PROCESSES = ["hh_sl", "hh_dl", "tt_sl", "tt_dl", "tt_dl_eft", "dy", "wjets", "tth_sl"]
PROMPT_LEPTONS = {"hh_sl": 1, "hh_dl": 2, "tt_sl": 1, "tt_dl": 2, "tt_dl_eft": 2, "dy": 2, "wjets": 1, "tth_sl": 1}
BTAG_M = 0.245

REQUIRED = [
    *(
        f"Jet_{k}"
        for k in (
            "pt eta phi mass rawFactor area jetId genJetIdx hadronFlavour partonFlavour btagPNetB btagPNetCvB "
            "btagPNetCvL btagPNetCvNotB btagPNetQvG PNetRegPtRawCorr PNetRegPtRawCorrNeutrino PNetRegPtRawRes "
            "chHEF neHEF chEmEF neEmEF muEF nConstituents nElectrons nMuons"
        ).split()
    ),
    *(
        f"FatJet_{k}"
        for k in (
            "pt eta phi mass msoftdrop jetId area rawFactor particleNet_QCD particleNet_XbbVsQCD "
            "particleNetWithMass_QCD particleNetWithMass_HbbvsQCD particleNet_massCorr genJetAK8Idx "
            "hadronFlavour tau1 tau2 tau3"
        ).split()
    ),
    *(f"GenJetAK8_{k}" for k in "pt eta phi mass hadronFlavour partonFlavour".split()),
    *(
        f"Electron_{k}"
        for k in (
            "pt eta phi mass charge pdgId dxy dz sip3d miniPFRelIso_all pfRelIso03_all mvaIso mvaIso_WP80 "
            "mvaIso_WP90 cutBased convVeto lostHits genPartIdx genPartFlav jetIdx"
        ).split()
    ),
    *(
        f"Muon_{k}"
        for k in (
            "pt eta phi mass charge pdgId dxy dz sip3d miniPFRelIso_all pfRelIso04_all pfIsoId looseId "
            "mediumId tightId genPartIdx genPartFlav jetIdx"
        ).split()
    ),
    *"MET_pt MET_phi MET_sumEt PuppiMET_pt PuppiMET_phi PuppiMET_sumEt GenMET_pt GenMET_phi".split(),
    *(f"GenPart_{k}" for k in "pt eta phi mass pdgId status statusFlags genPartIdxMother".split()),
    *(f"GenJet_{k}" for k in "pt eta phi mass hadronFlavour partonFlavour".split()),
    *"Rho_fixedGridRhoFastjetAll PV_npvs PV_npvsGood Pileup_nTrueInt Pileup_nPU genWeight event run luminosityBlock".split(),
]


# ----------------------------------------------------------------------------- helpers


def flat(ev, key) -> np.ndarray:
    a = ev[key]
    return np.asarray(ak.flatten(a) if isinstance(a, ak.Array) and a.ndim > 1 else a)


def delta_r(eta1, phi1, eta2, phi2):
    dphi = (np.asarray(phi1) - phi2 + np.pi) % (2 * np.pi) - np.pi
    return np.hypot(np.asarray(eta1) - eta2, dphi)


def global_index(ev, coll: str, local) -> np.ndarray:
    """Flat per-object index into collection ``coll`` from a jagged local index (-1 kept)."""
    counts = np.asarray(ev[f"n{coll}"])
    offsets = np.concatenate([[0], np.cumsum(counts)])
    loc = ak.Array(local)
    ev_idx = np.asarray(ak.flatten(ak.broadcast_arrays(ak.local_index(loc, axis=0), loc)[0]))
    loc = np.asarray(ak.flatten(loc))
    return np.where(loc >= 0, offsets[ev_idx] + loc, -1)


def load_quietly(path):
    from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        events = NanoEventsFactory.from_root({str(path): "Events"}, schemaclass=NanoAODSchema, mode="eager").events()
    return events, [str(w.message) for w in caught]


@pytest.fixture(scope="module")
def tt():
    return generate_events("tt_sl", 3000, seed=11)


@pytest.fixture(scope="module")
def hh():
    return generate_events("hh_sl", 1500, seed=12, mass=1000.0)


# ----------------------------------------------------------------------------- API, schema, types


def test_process_table_and_unknown_process():
    assert set(PROCESSES) == set(ALL_PROCESSES)
    assert all(isinstance(v, str) and v for v in PROCESSES.values())
    with pytest.raises(ValueError, match="tt_sl"):
        generate_events("ttbar", 10)
    with pytest.raises(ValueError, match="hh_dl"):
        write_nanoaod("/nonexistent/x.root", "zz", 10)
    with pytest.raises(ValueError, match="mass"):
        generate_events("hh_sl", 10, mass=200.0)  # below the HH threshold
    empty = generate_events("dy", 0)
    assert len(empty["Jet_pt"]) == 0 and empty["Jet_pt"].type.content.content.primitive == "float32"


@pytest.mark.parametrize("process", ALL_PROCESSES)
def test_nanoaodschema_loads_quietly(tmp_path, process):
    path = write_nanoaod(tmp_path / f"{process}.root", process, 300, seed=1)
    events, caught = load_quietly(path)
    assert caught == []
    assert len(events) == 300
    # cross-references resolve through the schema's global indices
    jets = events.Jet[events.Jet.genJetIdx >= 0]
    assert ak.all(jets.matched_gen.pt > 0)
    mu = events.Muon[events.Muon.genPartIdx >= 0]
    assert ak.all(abs(mu.matched_gen.pdgId) == 13)
    assert ak.all(events.GenPart[events.GenPart.genPartIdxMother >= 0].parent.pdgId != 0)


def test_branch_types_match_real_nanoaod(tmp_path):
    mine = uproot.open(write_nanoaod(tmp_path / "tt.root", "tt_sl", 500, seed=2))["Events"]
    real = uproot.open(REAL_FILE)["Events"]
    # the real file carries per-branch counters (nJet_pt, ...) as an artifact of how it was written
    real_types = {k: real[k].typename for k in real.keys() if not (k.startswith("n") and "_" in k)}
    common = [k for k in mine.keys() if k in real_types]
    assert len(common) > 150
    mismatched = {k: (mine[k].typename, real_types[k]) for k in common if mine[k].typename != real_types[k]}
    assert mismatched == {}
    # exactly one int32 counter per collection, no per-branch counters
    collections = {k.split("_")[0] for k in mine.keys() if "_" in k and mine[k].typename.endswith("[]")}
    for c in collections:
        assert mine[f"n{c}"].typename == "int32_t"
    assert not [k for k in mine.keys() if k.startswith("n") and "_" in k]
    assert mine["Jet_pt"].typename == "float[]" and mine["Jet_jetId"].typename == "uint8_t[]"
    assert mine["event"].typename == "uint64_t" and mine["GenPart_statusFlags"].typename == "uint16_t[]"


def test_required_branches_present(tt):
    missing = [b for b in REQUIRED if b not in tt]
    assert missing == []
    for b in REQUIRED:
        assert len(tt[b]) == 3000


# ----------------------------------------------------------------------------- determinism


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(ak.array_equal(ak.Array(a[k]), ak.Array(b[k])) for k in a)


def test_same_seed_same_events_different_seed_different():
    a = generate_events("wjets", 400, seed=3)
    b = generate_events("wjets", 400, seed=3)
    c = generate_events("wjets", 400, seed=4)
    assert _same(a, b)
    assert not np.array_equal(a["Jet_pt"][:, :1], c["Jet_pt"][:, :1])
    assert not np.intersect1d(a["event"], c["event"]).size


def test_chunk_size_does_not_change_file(tmp_path, monkeypatch):
    monkeypatch.setattr(gen_events, "BLOCK_SIZE", 400)
    n = 1000  # 3 RNG blocks, the last one partial
    small = write_nanoaod(tmp_path / "a.root", "tt_dl", n, seed=7, chunk_size=400)
    large = write_nanoaod(tmp_path / "b.root", "tt_dl", n, seed=7, chunk_size=100_000)
    a = uproot.open(small)["Events"].arrays()
    b = uproot.open(large)["Events"].arrays()
    assert len(a) == n and ak.array_equal(a, b)
    mem = generate_events("tt_dl", n, seed=7)
    for k in ("Jet_pt", "GenPart_pdgId", "MET_pt", "event", "Electron_mvaIso"):
        assert ak.array_equal(a[k], mem[k])


# ----------------------------------------------------------------------------- generator truth


def _genpart(ev):
    counts = np.asarray(ev["nGenPart"])
    offsets = np.concatenate([[0], np.cumsum(counts)])
    g = {k: flat(ev, f"GenPart_{k}") for k in ("pt", "eta", "phi", "mass", "pdgId", "status", "statusFlags", "genPartIdxMother")}
    ev_idx = np.repeat(np.arange(counts.size), counts)
    mom = g["genPartIdxMother"].astype(np.int64)
    g["mother"] = np.where(mom >= 0, offsets[ev_idx] + mom, -1)
    g["local"] = np.arange(counts.sum()) - offsets[ev_idx]
    pt, phi, m = (g[k].astype(np.float64) for k in ("pt", "phi", "mass"))
    eta = np.where(g["status"] == 21, 0.0, g["eta"].astype(np.float64))  # incoming: pt = 0
    px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
    g["p4"] = np.stack([px, py, pz, np.sqrt(px**2 + py**2 + pz**2 + m**2)])
    return g


def _children_mass(g, select):
    """Invariant mass of the children summed per mother, for mothers in ``select``."""
    total = np.zeros_like(g["p4"])
    has = g["mother"] >= 0
    for i in range(4):
        np.add.at(total[i], g["mother"][has], g["p4"][i][has])
    px, py, pz, e = total[:, select]
    return np.sqrt(np.clip(e**2 - px**2 - py**2 - pz**2, 0.0, None))


def _children_pdgs(g):
    kids: dict[int, list[int]] = {}
    for i in np.flatnonzero(g["mother"] >= 0):
        kids.setdefault(int(g["mother"][i]), []).append(int(g["pdgId"][i]))
    return kids


@pytest.mark.parametrize("process", ["hh_sl", "tt_sl", "tth_sl", "dy", "wjets"])
def test_decay_products_add_up_to_mothers(process):
    g = _genpart(generate_events(process, 500, seed=5, mass=900.0))
    kids = _children_pdgs(g)
    resonances = np.flatnonzero(g["status"] == 22)
    assert resonances.size >= 500
    m = g["mass"][resonances].astype(np.float64)
    assert np.allclose(_children_mass(g, resonances), m, rtol=2e-5, atol=1e-4)
    # specific decays: H -> b bbar, W -> l nu, t -> b W
    hbb = [i for i in resonances if g["pdgId"][i] == 25 and sorted(kids[i]) == [-5, 5]]
    wlnu = [i for i in resonances if abs(g["pdgId"][i]) == 24 and {abs(p) for p in kids[i]} in ({11, 12}, {13, 14})]
    tops = [i for i in resonances if abs(g["pdgId"][i]) == 6]
    if process in ("hh_sl", "tth_sl"):
        assert len(hbb) == 500
        assert np.allclose(_children_mass(g, np.array(hbb)), g["mass"][hbb], rtol=2e-5)
        assert np.all(np.abs(g["mass"][hbb] - 125.0) < 0.5)
    if process != "dy":
        assert len(wlnu) >= 500
        assert np.allclose(_children_mass(g, np.array(wlnu)), g["mass"][wlnu], rtol=2e-5)
    for i in tops:
        assert sorted(abs(p) for p in kids[i]) == [5, 24]


def test_offshell_w_in_h_to_ww():
    g = _genpart(generate_events("hh_dl", 1000, seed=6, mass=700.0))
    kids = _children_pdgs(g)
    h_ww = [i for i in np.flatnonzero(g["pdgId"] == 25) if sorted(abs(p) for p in kids[int(i)]) == [24, 24]]
    assert len(h_ww) == 1000
    w_masses = np.array([[g["mass"][j] for j in np.flatnonzero(g["mother"] == i)] for i in h_ww])
    m_low, m_high = w_masses.min(axis=1), w_masses.max(axis=1)
    assert np.all(m_low + m_high <= g["mass"][h_ww] + 1e-3)  # below the H mass
    assert 70.0 < np.median(m_high) < 85.0  # one W near its pole
    assert 15.0 < np.median(m_low) < 50.0  # the other off shell


def test_genpart_conventions(tt):
    g = _genpart(tt)
    status, flags, mother, local = g["status"], g["statusFlags"].astype(int), g["mother"], g["local"]
    assert np.all((status == 21) == (g["genPartIdxMother"] == -1))  # only incoming partons are top level
    assert np.all(local[mother[mother >= 0]] < local[mother >= 0])  # mothers come first
    assert np.all(g["pt"][status == 21] == 0)
    hard = (1 << 7) | (1 << 8) | (1 << 12) | (1 << 13)
    assert np.all(flags[status == 22] & hard == hard)  # resonances: hard process, first and last copy
    assert np.all(flags[status == 23] & hard == hard)
    assert set(np.unique(np.abs(g["pdgId"][status == 22]))) == {6, 24}


@pytest.mark.parametrize("process", ALL_PROCESSES)
def test_prompt_lepton_multiplicity(process):
    ev = generate_events(process, 300, seed=8)
    g = _genpart(ev)
    prompt_lep = (np.isin(np.abs(g["pdgId"]), (11, 13))) & (g["status"] == 1) & ((g["statusFlags"] & 1) == 1)
    per_event = np.bincount(np.repeat(np.arange(300), np.asarray(ev["nGenPart"])), prompt_lep, minlength=300)
    assert np.all(per_event == PROMPT_LEPTONS[process])
    # non-prompt leptons from hadron decays exist and are flagged as such
    nonprompt = np.isin(np.abs(g["pdgId"]), (11, 13)) & ~prompt_lep
    if process.startswith(("tt", "hh")):
        assert nonprompt.sum() > 0
        assert np.all((g["statusFlags"][nonprompt] & (1 << 6)) > 0)


@pytest.mark.parametrize("process", ALL_PROCESSES)
def test_values_finite_and_angles_in_range(process):
    ev = generate_events(process, 300, seed=10)
    for name, arr in ev.items():
        values = flat(ev, name)
        if values.dtype.kind == "f":
            assert np.all(np.isfinite(values)), name
        if name.endswith("_phi"):
            assert np.all(np.abs(values) <= np.pi + 1e-6), name
        if name.endswith("_pt") or name.endswith("_mass") or name.endswith("_msoftdrop"):
            assert np.all(values >= 0), name
    assert np.all(np.abs(flat(ev, "Jet_eta")) < 5.0)


def test_x_mass_parameter():
    for mass in (500.0, 1500.0):
        g = _genpart(generate_events("hh_sl", 200, seed=2, mass=mass))
        mx = g["mass"][g["pdgId"] == 35]
        assert mx.size == 200 and abs(np.median(mx) / mass - 1) < 0.01


# ----------------------------------------------------------------------------- reco objects


def test_collections_sorted_by_pt(tt, hh):
    for ev in (tt, hh):
        for c in ("Jet", "Electron", "Muon", "FatJet", "GenJet", "GenJetAK8"):
            pt = ev[f"{c}_pt"]
            assert ak.all(pt[:, 1:] <= pt[:, :-1])
    assert ak.min(tt["Jet_pt"]) >= 15.0 and ak.min(hh["FatJet_pt"]) >= 170.0


def test_jets_match_genjets_within_cone(tt):
    gi = global_index(tt, "GenJet", tt["Jet_genJetIdx"])
    matched = gi >= 0
    dr = delta_r(flat(tt, "Jet_eta")[matched], flat(tt, "Jet_phi")[matched], flat(tt, "GenJet_eta")[gi[matched]], flat(tt, "GenJet_phi")[gi[matched]])
    assert np.all(dr < 0.4)
    unmatched = ~matched
    assert 0.02 < unmatched.mean() < 0.3  # pileup jets exist but are a minority
    # unmatched jets are pileup (no flavour) except rare up-fluctuations of sub-10 GeV GenJets
    pileup = unmatched & (flat(tt, "Jet_partonFlavour") == 0)
    assert pileup.sum() > 0.9 * unmatched.sum()
    assert np.all(flat(tt, "Jet_hadronFlavour")[pileup] == 0)
    assert np.all(flat(tt, "Jet_pt")[unmatched] < 150)


def test_btag_working_points(tt):
    hf = flat(tt, "Jet_hadronFlavour")
    central = (np.abs(flat(tt, "Jet_eta")) < 2.4) & (flat(tt, "Jet_pt") > 25)
    score = flat(tt, "Jet_btagPNetB")
    eff = {f: np.mean(score[central & (hf == f)] > BTAG_M) for f in (5, 4, 0)}
    assert 0.7 <= eff[5] <= 0.95
    assert 0.05 <= eff[4] <= 0.3
    assert eff[0] < 0.05
    forward = np.abs(flat(tt, "Jet_eta")) > 2.5
    assert np.all(score[forward] == -1)
    qvg = flat(tt, "Jet_btagPNetQvG")
    pf = np.abs(flat(tt, "Jet_partonFlavour"))
    light = central & (hf == 0)
    assert np.mean(qvg[light & (pf == 21)]) < np.mean(qvg[light & (pf >= 1) & (pf <= 3)]) - 0.2
    cvl = flat(tt, "Jet_btagPNetCvL")
    assert np.mean(cvl[central & (hf == 4)]) > np.mean(cvl[light]) + 0.3


def test_jet_energy_scale_and_real_jec_closure(tt):
    from crema.generate.jec import correction_set

    pt, raw_factor = flat(tt, "Jet_pt").astype(np.float64), flat(tt, "Jet_rawFactor").astype(np.float64)
    raw = pt * (1.0 - raw_factor)
    rho = np.repeat(np.asarray(tt["Rho_fixedGridRhoFastjetAll"]), np.asarray(tt["nJet"])).astype(np.float64)
    jec = correction_set().compound["Summer22_22Sep2023_V3_MC_L1L2L3Res_AK4PFPuppi"]
    corrected = raw * jec.evaluate(flat(tt, "Jet_area").astype(np.float64), flat(tt, "Jet_eta").astype(np.float64), raw, rho)
    assert np.allclose(corrected, pt, rtol=1e-6)
    assert 0.05 < raw_factor.mean() < 0.3  # the JEC is far from unity: raw pt is really raw

    gi = global_index(tt, "GenJet", tt["Jet_genJetIdx"])
    gen_pt = np.where(gi >= 0, flat(tt, "GenJet_pt")[np.clip(gi, 0, None)], np.nan)
    hf, pf = flat(tt, "Jet_hadronFlavour"), np.abs(flat(tt, "Jet_partonFlavour"))
    sel = (gi >= 0) & (gen_pt > 30) & (np.abs(flat(tt, "Jet_eta")) < 1.3)
    resp = {
        name: np.median((pt / gen_pt)[sel & mask])
        for name, mask in (("uds", (hf == 0) & (pf >= 1) & (pf <= 3)), ("g", (hf == 0) & (pf == 21)), ("b", hf == 5))
    }
    assert 0.97 < resp["uds"] < 1.03
    assert resp["b"] < resp["uds"] and resp["g"] < resp["uds"]
    reg = flat(tt, "Jet_PNetRegPtRawCorr") * raw
    assert np.std((reg / gen_pt)[sel]) < np.std((pt / gen_pt)[sel])  # regression beats the JEC
    nu = flat(tt, "Jet_PNetRegPtRawCorrNeutrino")
    assert np.mean(nu[hf == 5]) > np.mean(nu[hf == 0]) + 0.02


def test_jet_composition_depends_on_flavour(tt):
    hf, pf = flat(tt, "Jet_hadronFlavour"), np.abs(flat(tt, "Jet_partonFlavour"))
    n_const = flat(tt, "Jet_nConstituents").astype(float)
    gluon, quark = (hf == 0) & (pf == 21), (hf == 0) & (pf >= 1) & (pf <= 3)
    assert n_const[gluon].mean() > n_const[quark].mean()
    mu_ef = flat(tt, "Jet_muEF")
    assert mu_ef[(hf == 5) & (flat(tt, "Jet_nMuons") == 0)].max() == 0
    assert mu_ef[hf == 5].mean() > mu_ef[quark].mean()
    fractions = sum(flat(tt, f"Jet_{k}").astype(float) for k in ("chHEF", "neHEF", "chEmEF", "neEmEF", "muEF"))
    assert np.allclose(fractions, 1.0, atol=1e-4)


def test_leptons(tt):
    for c in ("Electron", "Muon"):
        gen = global_index(tt, "GenPart", tt[f"{c}_genPartIdx"])
        assert np.all(gen >= 0)
        assert np.all(np.abs(flat(tt, "GenPart_pdgId")[gen]) == np.abs(flat(tt, f"{c}_pdgId")))
        assert np.all(delta_r(flat(tt, f"{c}_eta"), flat(tt, f"{c}_phi"), flat(tt, "GenPart_eta")[gen], flat(tt, "GenPart_phi")[gen]) < 0.05)
        assert np.all(flat(tt, f"{c}_charge") == -np.sign(flat(tt, f"{c}_pdgId")))
    e_wp80, e_wp90 = flat(tt, "Electron_mvaIso_WP80"), flat(tt, "Electron_mvaIso_WP90")
    assert np.all(e_wp90[e_wp80]) and e_wp80.sum() < e_wp90.sum()
    loose, medium, tight = (flat(tt, f"Muon_{k}Id") for k in ("loose", "medium", "tight"))
    assert np.all(loose[tight]) and np.all(medium[tight]) and tight.sum() < loose.sum()

    prompt = flat(tt, "Muon_genPartFlav") == 1
    iso = flat(tt, "Muon_pfRelIso04_all")
    assert np.mean(loose[prompt] & (iso[prompt] < 0.25)) > 0.85
    assert (~prompt).sum() > 100 and np.mean(iso[~prompt] < 0.15) < 0.2  # non-prompt fail isolation
    sip = flat(tt, "Muon_sip3d")
    assert np.median(sip[prompt]) < 2.0 < 4.0 < np.median(sip[~prompt])
    e_prompt = flat(tt, "Electron_genPartFlav") == 1
    assert 0.8 < np.mean(e_wp90[e_prompt]) < 0.97
    pf_iso_id = flat(tt, "Muon_pfIsoId")
    assert np.all((pf_iso_id >= 4) == (iso < 0.15))  # PFIsoTight consistent with the isolation value


def test_jet_lepton_cross_references(tt):
    for c, field in (("Muon", "muonIdx"), ("Electron", "electronIdx")):
        jet_of = global_index(tt, "Jet", tt[f"{c}_jetIdx"])
        lep = global_index(tt, c, ak.local_index(tt[f"{c}_pt"]))
        in_jet = jet_of >= 0
        assert in_jet.mean() > 0.5  # prompt leptons are clustered in jets too, as in real NanoAOD
        idx1 = global_index(tt, c, tt[f"Jet_{field}1"])
        idx2 = global_index(tt, c, tt[f"Jet_{field}2"])
        listed = (idx1[jet_of[in_jet]] == lep[in_jet]) | (idx2[jet_of[in_jet]] == lep[in_jet])
        n_lep = flat(tt, f"Jet_n{c}s")[jet_of[in_jet]]
        assert np.all(listed | (n_lep > 2))
        has = idx1 >= 0
        assert np.all(jet_of[idx1[has]] == np.flatnonzero(has))


def test_fat_jets_from_boosted_higgs(hh):
    nb = flat(hh, "FatJet_nBHadrons")
    msd = flat(hh, "FatJet_msoftdrop")
    xbb = flat(hh, "FatJet_particleNet_XbbVsQCD")
    hbb = nb >= 2
    assert hbb.sum() > 300
    assert 105 < np.median(msd[hbb]) < 140
    assert np.mean(xbb[hbb] > 0.9) > 0.5
    assert np.mean(xbb[nb == 0] > 0.9) < 0.1
    tau21 = flat(hh, "FatJet_tau2") / flat(hh, "FatJet_tau1")
    assert np.mean(tau21[hbb]) < np.mean(tau21[nb == 0])
    gi = global_index(hh, "GenJetAK8", hh["FatJet_genJetAK8Idx"])
    assert np.all(gi >= 0)
    sub = global_index(hh, "SubJet", hh["FatJet_subJetIdx1"])
    assert np.all(flat(hh, "SubJet_pt")[sub] <= flat(hh, "FatJet_pt") * 1.0001)


def test_met_pileup_and_event_ids(tt):
    met, gen = (np.asarray(tt[f"{k}_pt"], float) for k in ("MET", "GenMET"))
    phi, gphi, pphi = (np.asarray(tt[f"{k}_phi"], float) for k in ("MET", "GenMET", "PuppiMET"))
    ppt = np.asarray(tt["PuppiMET_pt"], float)
    dx = met * np.cos(phi) - gen * np.cos(gphi)
    pdx = ppt * np.cos(pphi) - gen * np.cos(gphi)
    assert 10 < np.std(dx) < 45 and np.std(pdx) < np.std(dx)
    assert np.corrcoef(met, gen)[0, 1] > 0.6
    n_true = np.asarray(tt["Pileup_nTrueInt"])
    assert 40 < n_true.mean() < 50 and n_true.std() > 8
    n_pu = np.asarray(tt["Pileup_nPU"], float)
    assert np.corrcoef(np.asarray(tt["PV_npvsGood"], float), n_pu)[0, 1] > 0.8
    assert 0.45 < np.mean(np.asarray(tt["Rho_fixedGridRhoFastjetAll"]) / n_pu) < 0.75

    event = np.asarray(tt["event"])
    assert np.unique(event).size == event.size
    assert np.all(np.asarray(tt["run"]) == 1)
    assert np.all(np.diff(np.asarray(tt["luminosityBlock"]).astype(np.int64)) >= 0)
    w = np.asarray(tt["genWeight"])
    assert w.dtype == np.float32 and np.mean(w > 0) > 0.95
    dy = generate_events("dy", 500, seed=1)
    assert 0.05 < np.mean(np.asarray(dy["genWeight"]) < 0) < 0.3  # NLO-like negative weights
