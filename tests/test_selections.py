"""Selections on 200 real NanoAODv12 ttbar events, checked against an independent uproot + numpy
computation written event by event here (it shares no code with crema.selections)."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest
import uproot
from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

from crema.corrections.btag import working_point
from crema.corrections.era import load_era
from crema.selections.config import load_selection
from crema.selections.hhbbww import channel_selection, region_masks, select_objects

from conftest import REAL_NANO

PNET_M = 0.245  # particleNet M working point, Summer22 (read independently from the BTV file below)


@pytest.fixture(scope="module")
def cfg():
    return load_selection("hhbbww_run3")


@pytest.fixture(scope="module")
def crema_result(cfg):
    events = NanoEventsFactory.from_root({str(REAL_NANO): "Events"}, schemaclass=NanoAODSchema, mode="eager").events()
    objects = select_objects(events, cfg, PNET_M, "PuppiMET")
    return events, objects


def _dphi(a, b):
    return (a - b + np.pi) % (2 * np.pi) - np.pi


def _reference():
    """Per-event selection with plain numpy, thresholds written out by hand from the DeepHME Run 3 selection."""
    t = uproot.open(REAL_NANO)["Events"]
    b = t.arrays(library="np")
    out = {k: [] for k in ("n_lep", "n_jet", "n_fwd", "n_fat", "n_b", "sl", "dl", "sl_cuts", "dl_cuts")}
    for i in range(t.num_entries):
        e = {k: b[k][i] for k in b if k.startswith(("Electron_", "Muon_", "Jet_", "FatJet_"))}
        ele = ((e["Electron_pt"] > 5) & (np.abs(e["Electron_eta"]) < 2.5) & (np.abs(e["Electron_dz"]) < 0.1)
               & (np.abs(e["Electron_dxy"]) < 0.05) & (e["Electron_sip3d"] <= 8)
               & (e["Electron_miniPFRelIso_all"] < 0.4) & e["Electron_mvaIso_WP90"])
        mu = ((e["Muon_pt"] > 5) & (np.abs(e["Muon_eta"]) < 2.4) & (np.abs(e["Muon_dz"]) < 0.1)
              & (np.abs(e["Muon_dxy"]) < 0.05) & (e["Muon_sip3d"] <= 8) & (e["Muon_pfIsoId"] >= 1)
              & e["Muon_looseId"])
        lep_pt = np.concatenate([e["Electron_pt"][ele], e["Muon_pt"][mu]])
        lep_eta = np.concatenate([e["Electron_eta"][ele], e["Muon_eta"][mu]])
        lep_phi = np.concatenate([e["Electron_phi"][ele], e["Muon_phi"][mu]])
        lep_q = np.concatenate([e["Electron_charge"][ele], e["Muon_charge"][mu]])
        lep_tight = np.concatenate([e["Electron_mvaIso_WP80"][ele], e["Muon_tightId"][mu]])
        order = np.argsort(-lep_pt)
        lep_pt, lep_eta, lep_phi, lep_q, lep_tight = (x[order] for x in (lep_pt, lep_eta, lep_phi, lep_q, lep_tight))

        def clean(eta, phi, dr):
            if len(lep_eta) == 0:
                return np.ones(len(eta), bool)
            d = np.hypot(eta[:, None] - lep_eta[None, :], _dphi(phi[:, None], lep_phi[None, :]))
            return (d >= dr).all(axis=1)

        jbase = (e["Jet_pt"] > 20) & ((e["Jet_jetId"] & 2) == 2) & clean(e["Jet_eta"], e["Jet_phi"], 0.4)
        jc = jbase & (np.abs(e["Jet_eta"]) < 2.5)
        jf = jbase & (np.abs(e["Jet_eta"]) >= 2.5) & (np.abs(e["Jet_eta"]) < 5.0)
        fat = ((e["FatJet_pt"] > 200) & (np.abs(e["FatJet_eta"]) < 2.5) & ((e["FatJet_jetId"] & 2) == 2)
               & clean(e["FatJet_eta"], e["FatJet_phi"], 0.8))
        n_lep, n_jet, n_fwd, n_fat = len(lep_pt), jc.sum(), jf.sum(), fat.sum()
        n_b = (e["Jet_btagPNetB"][jc] > PNET_M).sum()

        sl = [n_lep == 1]
        sl.append(sl[-1] and lep_pt[0] > 32)
        sl.append(sl[-1] and bool(lep_tight[0]))
        sl.append(sl[-1] and ((n_jet >= 2 and n_jet + n_fwd >= 2) or n_fat >= 1))
        dl = [n_lep == 2]
        dl.append(dl[-1] and lep_pt[0] > 25 and lep_pt[1] > 15)
        dl.append(dl[-1] and lep_q[0] * lep_q[1] < 0)
        dl.append(dl[-1] and bool(lep_tight[:2].all()))
        dl.append(dl[-1] and (n_jet >= 2 or n_fat >= 1))
        for k, v in (("n_lep", n_lep), ("n_jet", n_jet), ("n_fwd", n_fwd), ("n_fat", n_fat), ("n_b", n_b),
                     ("sl", sl[-1]), ("dl", dl[-1]), ("sl_cuts", sl), ("dl_cuts", dl)):
            out[k].append(v)
    return {k: np.array(v) for k, v in out.items()}


@pytest.fixture(scope="module")
def reference():
    return _reference()


def test_working_point_read_from_btv_file():
    era = load_era("2022")
    assert working_point(era.path("btag_file"), "particleNet", "M") == pytest.approx(PNET_M)


def test_object_multiplicities_match_reference(crema_result, reference):
    _, obj = crema_result
    np.testing.assert_array_equal(ak.num(obj.leptons), reference["n_lep"])
    np.testing.assert_array_equal(ak.num(obj.jets), reference["n_jet"])
    np.testing.assert_array_equal(ak.num(obj.forward_jets), reference["n_fwd"])
    np.testing.assert_array_equal(ak.num(obj.fatjets), reference["n_fat"])
    np.testing.assert_array_equal(ak.num(obj.bjets), reference["n_b"])
    # the sample is not trivially empty or full for any collection
    for key in ("n_lep", "n_jet", "n_fat", "n_b"):
        assert 0 < reference[key].sum() < 200 * 20


@pytest.mark.parametrize("channel", ["sl", "dl"])
def test_cutflow_matches_reference(cfg, crema_result, reference, channel):
    _, obj = crema_result
    selection, cuts = channel_selection(obj, channel, cfg.channels[channel])
    ref = reference[f"{channel}_cuts"]
    assert len(cuts) == ref.shape[1]
    for i in range(len(cuts)):
        assert selection.all(*cuts[: i + 1]).sum() == ref[:, i].sum(), cuts[i]
    np.testing.assert_array_equal(selection.all(*cuts), reference[channel])


def test_sl_selects_real_ttbar_events(reference):
    # 200 ttbar events: a sizeable single-lepton yield, and the channels are exclusive
    assert 30 <= reference["sl"].sum() <= 120
    assert not (reference["sl"] & reference["dl"]).any()


def test_regions(cfg, crema_result, reference):
    _, obj = crema_result
    masks = region_masks(obj, cfg.regions)
    assert masks["inclusive"].all()
    np.testing.assert_array_equal(masks["resolved_2b"], (reference["n_b"] >= 2) & (reference["n_fat"] == 0))
    np.testing.assert_array_equal(masks["boosted"], reference["n_fat"] >= 1)


def test_leptons_sorted_and_typed(crema_result):
    _, obj = crema_result
    pt = obj.leptons.pt
    assert ak.all(pt[:, 1:] <= pt[:, :-1])
    # vector behaviour survives: the dilepton mass is computable
    two = obj.leptons[ak.num(obj.leptons) >= 2]
    assert ak.all((two[:, 0] + two[:, 1]).mass >= 0)
