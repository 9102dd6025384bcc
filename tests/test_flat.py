"""Object masks on flat numpy (crema.flat): the same booleans as the same cuts written on awkward arrays."""

from __future__ import annotations

import re
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


def _leptons_awkward(electrons, muons, ecuts, mcuts):
    """The selected leptons as awkward builds them: one record type, concatenated, stably sorted by pt."""
    from coffea.nanoevents.methods import candidate

    parts = []
    for coll, mask, tight in ((electrons, electron_mask(electrons, ecuts), ecuts.tight_id),
                              (muons, muon_mask(muons, mcuts), mcuts.tight_id)):
        sel = coll[mask]
        parts.append(ak.zip({"pt": sel.pt, "eta": sel.eta, "phi": sel.phi, "mass": sel.mass, "charge": sel.charge,
                             "pdgId": sel.pdgId, "tight": sel[tight]},
                            with_name="PtEtaPhiMCandidate", behavior=candidate.behavior))
    merged = ak.concatenate(parts, axis=1)
    return merged[ak.argsort(merged.pt, axis=1, ascending=False)]


@pytest.fixture(scope="module")
def dilepton(tmp_path_factory):
    from crema.generate import write_nanoaod

    path = tmp_path_factory.mktemp("flat") / "tt_dl.root"
    write_nanoaod(path, "tt_dl", 3000, seed=4)
    return NanoEventsFactory.from_root({str(path): "Events"}, schemaclass=NanoAODSchema, mode="eager").events()


def test_leptons_equal_the_awkward_construction(events, dilepton, cfg):
    for sample in (events, dilepton, dilepton[:0]):
        got = leptons(sample.Electron, sample.Muon, cfg.electron, cfg.muon)
        expected = _leptons_awkward(sample.Electron, sample.Muon, cfg.electron, cfg.muon)
        # the same types (uproot's C++ type names of the branches are not carried over)
        assert str(got.type) == re.sub(r'\[parameters=\{"typename": "[^"]*"\}\]', "", str(expected.type))
        assert got.to_list() == expected.to_list()
        assert ak.all(got.mass == expected.mass) and ak.all(abs(got.delta_phi(expected)) == 0)  # vector behaviour
    both = leptons(dilepton.Electron, dilepton.Muon, cfg.electron, cfg.muon)
    assert ak.sum(ak.num(both) >= 2) > 500 and ak.any(abs(both.pdgId) == 11) and ak.any(abs(both.pdgId) == 13)


@pytest.mark.parametrize("channel", ["sl", "dl"])
def test_lepton_steps_equal_the_awkward_cuts(events, dilepton, cfg, channel):
    from crema.selections.hhbbww import _lepton_steps

    cuts = cfg.channels[channel]
    for sample in (events, dilepton):
        leps = leptons(sample.Electron, sample.Muon, cfg.electron, cfg.muon)
        lead = ak.pad_none(leps, 2, axis=1)
        n = cuts.n_leptons
        expected = {f"{n} lepton{'s' if n > 1 else ''}": ak.num(leps) == n}
        pt_ok = lead[:, 0].pt > cuts.leading_lepton_pt_min
        if n > 1:
            pt_ok = pt_ok & (lead[:, 1].pt > cuts.subleading_lepton_pt_min)
        expected["lepton pt"] = pt_ok
        if cuts.opposite_charge and n > 1:
            expected["opposite charge"] = lead[:, 0].charge * lead[:, 1].charge < 0
        if cuts.tight_leptons:
            expected["tight leptons"] = ak.all(leps[:, :n].tight, axis=1)
        got = dict(_lepton_steps(leps, cuts))
        assert list(got) == list(expected)
        for name, mask in expected.items():
            np.testing.assert_array_equal(got[name], ak.to_numpy(ak.fill_none(mask, False)), err_msg=name)
            assert got[name].dtype == bool
    assert got["lepton pt"].any() and not got["lepton pt"].all()  # the dilepton sample: both outcomes


def test_flat_fields_of_selected_collections(events, dilepton):
    """Masked events, masked objects, reordered objects: every field as ak.flatten gives it."""
    for sample in (events, dilepton):
        jets = sample.Jet
        central = jets[jets.pt > 30]
        chosen = central[ak.num(central) >= 2]
        by_btag = chosen[ak.argsort(chosen.btagDeepFlavB, axis=1, ascending=False)]
        for coll in (jets, central, chosen, by_btag, by_btag[::2], sample.Muon[sample.Muon.isPFcand]):
            f = FlatFields(coll)
            np.testing.assert_array_equal(f.counts, ak.to_numpy(ak.num(coll)))
            for field in ("pt", "eta", "jetId", "btagDeepFlavB"):
                if field in coll.fields:
                    np.testing.assert_array_equal(f[field], ak.to_numpy(ak.flatten(coll[field])), err_msg=field)
            assert f._record is not None  # each went through the gather index
            np.testing.assert_array_equal(f.event_index, np.repeat(np.arange(len(coll)), ak.to_numpy(ak.num(coll))))
    padded = ak.pad_none(events.Jet, 3, axis=1)  # missing objects: through ak.flatten
    f = FlatFields(padded[ak.num(events.Jet) >= 3])
    assert f._record is None
    np.testing.assert_array_equal(f["pt"], ak.to_numpy(ak.flatten(padded[ak.num(events.Jet) >= 3].pt)))


def test_select_builds_what_a_jagged_mask_gives(events, dilepton):
    for sample in (events, dilepton):
        for coll in (sample.Jet, sample.Jet[ak.num(sample.Jet) >= 4], sample.Muon):
            f = FlatFields(coll)
            mask = f["pt"] > 30
            got, expected = f.select(mask), coll[f.jagged(mask)]
            assert str(got.type) == str(expected.type)
            assert got.to_list() == expected.to_list()
            np.testing.assert_array_equal(ak.to_numpy(ak.flatten(got.delta_r(expected))),  # vector behaviour
                                          ak.to_numpy(ak.flatten(expected.delta_r(expected))))
            if "genJetIdxG" in coll.fields:  # NanoEvents cross-references still resolve
                assert ak.all(ak.fill_none(got.matched_gen.pt == expected.matched_gen.pt, True))
            twice = FlatFields(got).select(FlatFields(got)["eta"] > 0)
            assert twice.to_list() == expected[expected.eta > 0].to_list()


def test_with_fields_builds_what_with_field_gives(events, dilepton):
    """New fields appended, an existing one replaced in its place, on whole, selected and reordered
    collections and through the ak.with_field fallback; the collection's behaviour kept."""
    for sample in (events, dilepton):
        jets = sample.Jet
        two = jets[ak.num(jets) >= 2]
        for coll in (jets, jets[ak.num(jets) >= 4], jets[jets.pt > 30][::-1],
                     two[ak.values_astype(ak.zeros_like(two.pt[:, :2]), np.int64)],  # first jet twice: fallback
                     ak.pad_none(jets, 1, axis=1)[ak.num(jets) >= 1]):  # missing objects: fallback
            f = FlatFields(coll)
            pt2, extra = f["pt"] * 2.0, np.arange(f.counts.sum(), dtype=np.float64)
            got = f.with_fields({"pt": pt2, "extra": extra})
            expected = ak.with_field(ak.with_field(coll, f.jagged(pt2), "pt"), f.jagged(extra), "extra")
            assert got.fields == expected.fields and got.fields.index("pt") == coll.fields.index("pt")
            assert str(got.type) == str(expected.type)
            assert ak.array_equal(got, expected, equal_nan=True)  # the fixture's damaged jets: NaN pt
            np.testing.assert_array_equal(ak.to_numpy(ak.flatten(got.delta_r(got), axis=None)),  # vector behaviour
                                          ak.to_numpy(ak.flatten(expected.delta_r(expected), axis=None)))
            if "genJetIdxG" in coll.fields:  # NanoEvents cross-references still resolve
                assert ak.all(ak.fill_none(got.matched_gen.pt == expected.matched_gen.pt, True))
            once = f._record is not None and (isinstance(f._index, slice) or len(np.unique(f._index)) == len(f._index))
            if once:  # a FlatFields of the result reads old and new fields straight from the layout
                again = FlatFields(got)
                assert all(again._content(n) is not None for n in ("extra", "pt", "eta"))
