"""HH->bbWW event selection: selected objects, single- and double-lepton channel cutflows, regions."""

from __future__ import annotations

from dataclasses import dataclass

import awkward as ak
import numpy as np
from coffea.analysis_tools import PackedSelection

from crema.flat import FlatFields
from crema.selections.config import ChannelCuts, Region, SelectionConfig
from crema.selections.objects import (
    LEPTON_CLEANED,
    SELECTION_BRANCHES,
    fatjet_mask_flat,
    jet_masks_flat,
    lepton_cleaned,
    leptons,
)

CHANNELS = ("sl", "dl")


@dataclass(frozen=True)
class Objects:
    """The selected objects of a chunk (one entry per event).

    ``jets`` are the selected central AK4 jets in pt order, ``bjets`` the b-tagged subset;
    ``forward_jets`` the selected forward AK4 jets; ``fatjets`` the selected AK8 jets.
    """

    leptons: ak.Array
    jets: ak.Array
    bjets: ak.Array
    forward_jets: ak.Array
    fatjets: ak.Array
    met: ak.Array

    def __getitem__(self, mask) -> "Objects":
        return Objects(**{name: getattr(self, name)[mask] for name in self.__dataclass_fields__})


def required_branches(cfg: SelectionConfig, met: str) -> dict[str, str]:
    """NanoAOD branches the selection reads, each with what needs it."""
    needs = {b: "object selection" for b in SELECTION_BRANCHES}
    needs[f"Electron_{cfg.electron.id}"] = "electron ID (selection.electron.id)"
    needs[f"Electron_{cfg.electron.tight_id}"] = "tight electron ID (selection.electron.tight_id)"
    needs[f"Muon_{cfg.muon.id}"] = "muon ID (selection.muon.id)"
    needs[f"Muon_{cfg.muon.tight_id}"] = "tight muon ID (selection.muon.tight_id)"
    needs[f"Jet_{cfg.btag.score}"] = f"b-tagging (selection.btag.score, {cfg.btag.working_point} working point)"
    needs[f"{met}_pt"] = needs[f"{met}_phi"] = "missing transverse momentum (processor option met)"
    return needs


def select_leptons(events: ak.Array, cfg: SelectionConfig) -> ak.Array:
    """The selected electrons and muons of ``cfg`` as one pt-sorted collection (see :func:`leptons`)."""
    return leptons(events.Electron, events.Muon, cfg.electron, cfg.muon)


def with_lepton_cleaning(events: ak.Array, selected_leptons: ak.Array, cfg: SelectionConfig) -> ak.Array:
    """``events`` whose AK4 jets carry the lepton-cleaning decision of ``cfg.jet`` as the field
    :data:`~crema.selections.objects.LEPTON_CLEANED`.

    It depends on jet eta and phi only, which no jet energy correction changes, so it is computed
    once per chunk and travels with each jet through every variation's re-sorting by pt;
    :func:`select_objects` then reads it instead of recomputing it.
    """
    cleaned = lepton_cleaned(events.Jet, selected_leptons, cfg.jet.lepton_dr_min)
    return ak.with_field(events, ak.with_field(events.Jet, cleaned, LEPTON_CLEANED), "Jet")


def select_objects(events: ak.Array, cfg: SelectionConfig, btag_threshold: float, met: str = "PuppiMET",
                   selected_leptons: ak.Array | None = None, selected_fatjets: ak.Array | None = None) -> Objects:
    """Apply the object selections of ``cfg`` to a chunk of NanoEvents.

    ``selected_leptons``/``selected_fatjets`` reuse an earlier selection of objects that did not
    change (AK4 jet variations leave leptons and AK8 jets alone).
    """
    leps = select_leptons(events, cfg) if selected_leptons is None else selected_leptons
    # masks on flat fields, collections built from them directly (a jagged mask costs ~4 ms per use)
    all_jets = FlatFields(events.Jet)
    central, forward = jet_masks_flat(all_jets, leps, cfg.jet)
    jets = FlatFields(all_jets.select(central))
    if selected_fatjets is None:
        fat = FlatFields(events.FatJet)
        selected_fatjets = fat.select(fatjet_mask_flat(fat, leps, cfg.fatjet))
    return Objects(
        leptons=leps,
        jets=jets.objects,
        bjets=jets.select(jets[cfg.btag.score] > btag_threshold),
        forward_jets=all_jets.select(forward),
        fatjets=selected_fatjets,
        met=events[met],
    )


def channel_selection(objects: Objects, channel: str, cuts: ChannelCuts,
                      lepton_steps: dict | None = None) -> tuple[PackedSelection, list[str]]:
    """The cuts of one channel as a coffea ``PackedSelection`` and their names in cutflow order.

    ``lepton_steps``: a dict kept across the calls of one chunk; the lepton cuts (all but ``jets``)
    of a channel are computed once and taken from it while ``objects.leptons`` is the same array
    (jet variations share the leptons).
    """
    if channel not in CHANNELS:
        raise ValueError(f"unknown channel {channel!r} (known: {', '.join(CHANNELS)})")
    leps = objects.leptons
    known = None if lepton_steps is None else lepton_steps.get(channel)
    if known is None or known[0] is not leps:
        known = (leps, _lepton_steps(leps, cuts))
        if lepton_steps is not None:
            lepton_steps[channel] = known
    selection = PackedSelection()
    names = []
    for name, mask in [*known[1], ("jets", _jets_step(objects, cuts))]:
        selection.add(name, mask)
        names.append(name)
    return selection, names


def _lepton_steps(leps: ak.Array, cuts: ChannelCuts) -> list[tuple[str, np.ndarray]]:
    # on the flat lepton fields: the leading and subleading lepton by index, absent ones failing
    n_lep = cuts.n_leptons
    f = FlatFields(leps)
    starts = f.starts

    def kth(field: str, k: int) -> tuple[np.ndarray, np.ndarray]:  # (event has it, its value)
        has = f.counts > k
        values = f[field]
        return has, (values[np.where(has, starts + k, 0)] if values.size else np.zeros(has.size, values.dtype))

    has0, pt0 = kth("pt", 0)
    pt_ok = has0 & (pt0 > cuts.leading_lepton_pt_min)
    if n_lep > 1:
        has1, pt1 = kth("pt", 1)
        pt_ok &= has1 & (pt1 > cuts.subleading_lepton_pt_min)
    steps = [(f"{n_lep} lepton{'s' if n_lep > 1 else ''}", f.counts == n_lep), ("lepton pt", pt_ok)]
    if cuts.opposite_charge and n_lep > 1:
        (has0, q0), (has1, q1) = kth("charge", 0), kth("charge", 1)
        steps.append(("opposite charge", has0 & has1 & (q0 * q1 < 0)))
    if cuts.tight_leptons:  # no loose-only lepton among the first n_lep
        loose = (np.arange(f.event_index.size) - starts[f.event_index] < n_lep) & ~f["tight"].astype(bool)
        steps.append(("tight leptons", np.bincount(f.event_index[loose], minlength=f.counts.size) == 0))
    return [(name, np.asarray(mask, dtype=bool)) for name, mask in steps]


def _count(objects: ak.Array) -> np.ndarray:
    """Objects per event as numpy (comparisons on it cost nothing; on an awkward array ~0.5 ms each)."""
    return np.asarray(ak.to_numpy(ak.num(objects, axis=1)))


def _jets_step(objects: Objects, cuts: ChannelCuts) -> np.ndarray:
    n_central = _count(objects.jets)
    resolved = n_central >= cuts.min_central_jets
    if cuts.min_jets_with_forward:
        resolved = resolved & (n_central + _count(objects.forward_jets) >= cuts.min_jets_with_forward)
    return resolved | (_count(objects.fatjets) >= cuts.min_fatjets)


def region_masks(objects: Objects, regions: dict[str, Region]) -> dict[str, np.ndarray]:
    """Per-region event masks from b-tagged jet and fat-jet multiplicities (regions may overlap)."""
    n_b, n_fat = _count(objects.bjets), _count(objects.fatjets)
    masks = {}
    for name, reg in regions.items():
        mask = (n_b >= reg.min_bjets) & (n_fat >= reg.min_fatjets)
        if reg.max_bjets is not None:
            mask &= n_b <= reg.max_bjets
        if reg.max_fatjets is not None:
            mask &= n_fat <= reg.max_fatjets
        masks[name] = mask
    return masks


__all__ = ["CHANNELS", "Objects", "channel_selection", "region_masks", "required_branches", "select_leptons",
           "select_objects", "with_lepton_cleaning"]
