"""NanoAODv12 object selections: pure functions from collections and thresholds to masks/collections.

Each function states the branches it reads in ``uses`` so a processor can check its inputs up front.
Every selection drops objects whose kinematics are not :func:`crema.physical.physical` (NaN, inf or
beyond the physical range): +inf would pass a pt cut, NaN would poison sums downstream.
"""

from __future__ import annotations

import awkward as ak
import numpy as np
from coffea.nanoevents.methods import candidate

from crema.flat import FlatFields, offsets
from crema.physical import physical_flat
from crema.selections.deltar import all_far, all_far_flat
from crema.selections.config import ElectronCuts, JetCuts, MuonCuts


def _uses(*branches: str):
    """Record the NanoAOD branches a selection function reads (columnflow-style ``uses``)."""

    def decorate(func):
        func.uses = frozenset(branches)
        return func

    return decorate


@_uses("Electron_pt", "Electron_eta", "Electron_phi", "Electron_mass", "Electron_dz", "Electron_dxy", "Electron_sip3d", "Electron_miniPFRelIso_all")
def electron_mask(electrons: ak.Array, cuts: ElectronCuts) -> ak.Array:
    """Loose (fakeable) electrons: kinematics, impact parameters, mini-isolation and ``cuts.id``."""
    e = FlatFields(electrons)
    return e.jagged(_electron_cuts(e, cuts))


@_uses("Muon_pt", "Muon_eta", "Muon_phi", "Muon_mass", "Muon_dz", "Muon_dxy", "Muon_sip3d", "Muon_pfIsoId")
def muon_mask(muons: ak.Array, cuts: MuonCuts) -> ak.Array:
    """Loose muons: kinematics, impact parameters, PF isolation ID and ``cuts.id``."""
    m = FlatFields(muons)
    return m.jagged(_muon_cuts(m, cuts))


def _electron_cuts(e: FlatFields, cuts: ElectronCuts) -> np.ndarray:
    return _lepton_cuts(e, cuts) & (e["miniPFRelIso_all"] < cuts.mini_iso_max)


def _muon_cuts(m: FlatFields, cuts: MuonCuts) -> np.ndarray:
    return _lepton_cuts(m, cuts) & (m["pfIsoId"] >= cuts.pf_iso_id_min)


def _lepton_cuts(f: FlatFields, cuts: ElectronCuts | MuonCuts) -> np.ndarray:
    """What electrons and muons share: kinematics, pt, |eta|, impact parameters, sip3d and ``cuts.id``."""
    return (physical_flat(f) & (f["pt"] > cuts.pt_min) & (np.abs(f["eta"]) < cuts.abs_eta_max)
            & (np.abs(f["dz"]) < cuts.abs_dz_max) & (np.abs(f["dxy"]) < cuts.abs_dxy_max)
            & (f["sip3d"] <= cuts.sip3d_max) & f[cuts.id])


#: the fields of :func:`leptons`, each with the NanoAOD field it is taken from (``tight``: the tight ID)
LEPTON_FIELDS = ("pt", "eta", "phi", "mass", "charge", "pdgId", "tight")


def leptons(electrons: ak.Array, muons: ak.Array, ecuts: ElectronCuts, mcuts: MuonCuts) -> ak.Array:
    """Selected electrons and muons as one pt-sorted collection with vector behaviour.

    Fields: pt, eta, phi, mass, charge, pdgId, tight (``ecuts.tight_id``/``mcuts.tight_id``).
    Per event, the electrons then the muons, stably sorted by decreasing pt (what ``ak.concatenate``
    and ``ak.argsort(..., ascending=False)`` give), built on flat numpy: one sort for the chunk
    instead of awkward's per-event concatenation and sort.
    """
    e, m = FlatFields(electrons), FlatFields(muons)
    parts = [(e, _electron_cuts(e, ecuts), ecuts.tight_id), (m, _muon_cuts(m, mcuts), mcuts.tight_id)]
    event = np.concatenate([f.event_index[mask] for f, mask, _ in parts])
    columns = {name: np.concatenate([f[tight if name == "tight" else name][mask] for f, mask, tight in parts])
               for name in LEPTON_FIELDS}
    order = np.lexsort((-columns["pt"], event))  # stable: ties keep electrons first, in their order
    counts = np.bincount(event, minlength=e.counts.size)
    record = ak.contents.RecordArray([ak.contents.NumpyArray(columns[n][order]) for n in LEPTON_FIELDS],
                                     list(LEPTON_FIELDS), parameters={"__record__": "PtEtaPhiMCandidate"})
    return ak.Array(ak.contents.ListOffsetArray(ak.index.Index64(offsets(counts)), record), behavior=candidate.behavior)


LEPTON_CLEANED = "lepton_cleaned"
"""Jet field holding a precomputed lepton-cleaning decision (:func:`jet_masks` reads it when present)."""


def lepton_cleaned(objects: ak.Array, leptons: ak.Array, dr_min: float) -> ak.Array:
    """Per object: every selected lepton of its event is at least ``dr_min`` away in (eta, phi)."""
    # an object with no lepton nearby passes; flat numpy, the decisions of ak.all(metric_table >= dr_min)
    return all_far(objects, leptons, dr_min)


@_uses("Jet_pt", "Jet_eta", "Jet_phi", "Jet_mass", "Jet_jetId")
def jet_masks(jets: ak.Array, leptons: ak.Array, cuts: JetCuts) -> tuple[ak.Array, ak.Array]:
    """(central, forward) AK4 jet masks: pt, jet ID, lepton cleaning and the two |eta| ranges.

    Forward jets lie in ``abs_eta_max <= |eta| < forward_abs_eta_max`` (none if that is unset).
    """
    j = FlatFields(jets)
    central, forward = jet_masks_flat(j, leptons, cuts)
    return j.jagged(central), j.jagged(forward)


def jet_masks_flat(j: FlatFields, leptons: ak.Array, cuts: JetCuts) -> tuple[np.ndarray, np.ndarray]:
    """:func:`jet_masks` on the jets' flat fields (numpy, the jets' order)."""
    abs_eta = np.abs(j["eta"])
    base = physical_flat(j) & (j["pt"] > cuts.pt_min) & ((j["jetId"] & cuts.jet_id_mask) == cuts.jet_id_mask)
    cleaned = j[LEPTON_CLEANED] if LEPTON_CLEANED in j.fields else all_far_flat(j, leptons, cuts.lepton_dr_min)
    base = base & cleaned
    central = base & (abs_eta < cuts.abs_eta_max)
    if cuts.forward_abs_eta_max is None:
        forward = np.zeros_like(central)
    else:
        forward = base & (abs_eta >= cuts.abs_eta_max) & (abs_eta < cuts.forward_abs_eta_max)
    return central, forward


@_uses("FatJet_pt", "FatJet_eta", "FatJet_phi", "FatJet_mass", "FatJet_jetId")
def fatjet_mask(fatjets: ak.Array, leptons: ak.Array, cuts: JetCuts) -> ak.Array:
    """AK8 jets: pt, |eta|, jet ID and cleaning against selected leptons."""
    f = FlatFields(fatjets)
    return f.jagged(fatjet_mask_flat(f, leptons, cuts))


def fatjet_mask_flat(f: FlatFields, leptons: ak.Array, cuts: JetCuts) -> np.ndarray:
    """:func:`fatjet_mask` on the AK8 jets' flat fields (numpy, their order)."""
    return (physical_flat(f)
            & (f["pt"] > cuts.pt_min)
            & (np.abs(f["eta"]) < cuts.abs_eta_max)
            & ((f["jetId"] & cuts.jet_id_mask) == cuts.jet_id_mask)
            & all_far_flat(f, leptons, cuts.lepton_dr_min))


def by_score(jets: ak.Array, score: str) -> ak.Array:
    """Jets sorted by descending ``score``."""
    return jets[ak.argsort(jets[score], axis=1, ascending=False)]


SELECTION_BRANCHES = (
    electron_mask.uses | muon_mask.uses | jet_masks.uses | fatjet_mask.uses
    | {"Electron_charge", "Electron_pdgId", "Muon_charge", "Muon_pdgId"}
)
