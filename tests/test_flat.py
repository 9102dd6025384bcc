"""Object masks on flat numpy (crema.flat): the same booleans as the same cuts written on awkward arrays."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest
from coffea.nanoevents import NanoAODSchema, NanoEventsFactory
from conftest import REAL_NANO

from crema.flat import FlatFields
from crema.physical import physical_kinematics
from crema.selections.config import load_selection
from crema.selections.objects import electron_mask, fatjet_mask, jet_masks, leptons, muon_mask


@pytest.fixture(scope="module")
def events():
    events = NanoEventsFactory.from_root({str(REAL_NANO): "Events"}, schemaclass=NanoAODSchema, mode="eager").events()
    # two damaged values: a NaN pt and an infinite eta must fail every cut, as on awkward arrays
    jets = events.Jet
    pt = ak.to_numpy(ak.flatten(jets.pt)).copy()
    eta = ak.to_numpy(ak.flatten(jets.eta)).copy()
    pt[3], eta[7] = np.nan, np.inf
    counts = ak.num(jets)
    events["Jet"] = ak.with_field(ak.with_field(jets, ak.unflatten(pt, counts), "pt"), ak.unflatten(eta, counts), "eta")
    return events


@pytest.fixture(scope="module")
def cfg():
    return load_selection("hhbbww_run3")


def _same(flat_mask, awkward_mask):
    assert ak.to_list(ak.num(flat_mask)) == ak.to_list(ak.num(awkward_mask))
    np.testing.assert_array_equal(ak.to_numpy(ak.flatten(flat_mask)), ak.to_numpy(ak.flatten(awkward_mask)))


def test_lepton_masks_equal_the_awkward_cuts(events, cfg):
    e, c = events.Electron, cfg.electron
    expected = (physical_kinematics(e) & (e.pt > c.pt_min) & (abs(e.eta) < c.abs_eta_max) & (abs(e.dz) < c.abs_dz_max)
                & (abs(e.dxy) < c.abs_dxy_max) & (e.sip3d <= c.sip3d_max) & (e.miniPFRelIso_all < c.mini_iso_max)
                & e[c.id])
    _same(electron_mask(e, c), expected)
    m, c = events.Muon, cfg.muon
    expected = (physical_kinematics(m) & (m.pt > c.pt_min) & (abs(m.eta) < c.abs_eta_max) & (abs(m.dz) < c.abs_dz_max)
                & (abs(m.dxy) < c.abs_dxy_max) & (m.sip3d <= c.sip3d_max) & (m.pfIsoId >= c.pf_iso_id_min) & m[c.id])
    _same(muon_mask(m, c), expected)


def test_jet_masks_equal_the_awkward_cuts(events, cfg):
    leps = leptons(events.Electron, events.Muon, cfg.electron, cfg.muon)
    jets, c = events.Jet, cfg.jet
    cleaned = ak.all(jets.metric_table(leps) >= c.lepton_dr_min, axis=2)
    base = physical_kinematics(jets) & (jets.pt > c.pt_min) & ((jets.jetId & c.jet_id_mask) == c.jet_id_mask) & cleaned
    central, forward = jet_masks(jets, leps, c)
    _same(central, base & (abs(jets.eta) < c.abs_eta_max))
    assert ak.sum(central) > 0
    if c.forward_abs_eta_max is not None:
        _same(forward, base & (abs(jets.eta) >= c.abs_eta_max) & (abs(jets.eta) < c.forward_abs_eta_max))
    fat, fc = events.FatJet, cfg.fatjet
    expected = (physical_kinematics(fat) & (fat.pt > fc.pt_min) & (abs(fat.eta) < fc.abs_eta_max)
                & ((fat.jetId & fc.jet_id_mask) == fc.jet_id_mask)
                & ak.all(fat.metric_table(leps) >= fc.lepton_dr_min, axis=2))
    _same(fatjet_mask(fat, leps, fc), expected)


def test_damaged_jets_fail(events, cfg):
    leps = leptons(events.Electron, events.Muon, cfg.electron, cfg.muon)
    central, _ = jet_masks(events.Jet, leps, cfg.jet)
    flat = ak.to_numpy(ak.flatten(central))
    assert not flat[3] and not flat[7]


def test_flat_fields_need_one_level_of_jaggedness(events):
    with pytest.raises(ValueError, match="jagged once per event"):
        FlatFields(events.run)
    f = FlatFields(events.Jet)
    assert f["pt"] is f["pt"]  # flattened once
    assert ak.to_list(f.jagged(f["pt"] > 0)[:2]) == ak.to_list((events.Jet.pt > 0)[:2])
