"""Flat-numpy delta R matches coffea's metric_table bit for bit (distances and decisions)."""

from __future__ import annotations

import warnings

import awkward as ak
import numpy as np
import pytest
from coffea.nanoevents import NanoAODSchema, NanoEventsFactory
from coffea.nanoevents.methods import candidate

from crema.selections.deltar import all_far, any_near_flat, delta_r_pairs

from conftest import REAL_NANO


@pytest.fixture(scope="module")
def events():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return NanoEventsFactory.from_root({str(REAL_NANO): "Events"}, schemaclass=NanoAODSchema, mode="eager").events()


def _objects(eta, phi):
    counts = [len(e) for e in eta]
    flat = lambda v: np.asarray(np.concatenate([np.asarray(e, dtype=np.float32) for e in v]) if v else [],  # noqa: E731
                                dtype=np.float32)
    return ak.zip({"pt": ak.unflatten(np.full(sum(counts), 30, np.float32), counts),
                   "eta": ak.unflatten(flat(eta), counts), "phi": ak.unflatten(flat(phi), counts),
                   "mass": ak.unflatten(np.zeros(sum(counts), np.float32), counts), "charge": ak.unflatten(
                       np.zeros(sum(counts), np.int32), counts)},
                  with_name="PtEtaPhiMCandidate", behavior=candidate.behavior)


@pytest.mark.parametrize("pair", [("Jet", "Muon"), ("Jet", "Electron"), ("FatJet", "Muon"), ("Jet", "Jet")])
def test_same_distances_and_decisions_as_metric_table(events, pair):
    a, b = events[pair[0]], events[pair[1]]
    _, _, dr = delta_r_pairs(a, b)
    reference = ak.to_numpy(ak.flatten(a.metric_table(b), axis=None))
    assert dr.dtype == reference.dtype and dr.size > 100
    assert np.array_equal(dr, reference, equal_nan=True)
    for cut in (0.4, 0.8):
        assert ak.to_list(all_far(a, b, cut)) == ak.to_list(ak.all(a.metric_table(b) >= cut, axis=2))
        assert any_near_flat(a, b, cut).tolist() == ak.to_list(ak.flatten(ak.any(a.metric_table(b) < cut, axis=2)))


def test_edges_empty_events_nan_and_the_phi_wrap():
    # event 0: no b-objects; 1: no a-objects; 2: a NaN phi and a pair across phi = +-pi; 3: exactly 0.4 apart
    a = _objects([[0.0, 1.0], [], [0.0, 0.5], [0.0]], [[0.0, 1.0], [], [np.nan, 3.1], [0.0]])
    b = _objects([[], [0.3], [0.5], [0.4]], [[], [0.2], [-3.1], [0.0]])
    for cut in (0.1, 0.4):
        assert ak.to_list(all_far(a, b, cut)) == ak.to_list(ak.all(a.metric_table(b) >= cut, axis=2))
        assert any_near_flat(a, b, cut).tolist() == ak.to_list(ak.flatten(ak.any(a.metric_table(b) < cut, axis=2)))
    assert ak.to_list(all_far(a, b, 0.1)) == [[True, True], [], [False, False], [True]]
