"""Run 3 PUPPI jet ID computed from energy fractions and multiplicities, for NanoAOD without ``jetId``.

NanoAODv15 dropped ``Jet_jetId`` and ``FatJet_jetId``; JME asks analysts to compute the ID from the
stored jet constituents instead (CMS JetID13p6TeV twiki, "Recommendations for the 13.6 TeV data
analysis", https://twiki.cern.ch/twiki/bin/view/CMS/JetID13p6TeV). Tight, for AK4/AK8 PUPPI jets:

==================  ==========================================================================
|eta| <= 2.6         neHEF < 0.99, neEmEF < 0.9, chMultiplicity + neMultiplicity > 1,
                     chHEF > 0.01, chMultiplicity > 0
2.6 < |eta| <= 2.7   neHEF < 0.90, neEmEF < 0.99
2.7 < |eta| <= 3.0   neHEF < 0.99
|eta| > 3.0          neMultiplicity >= 2, neEmEF < 0.4
==================  ==========================================================================

Tight lepton veto adds muEF < 0.8 and chEmEF < 0.8 for |eta| <= 2.7. The result is written in the
NanoAOD ``jetId`` bit layout (bit 1 tight = 2, bit 2 tight lepton veto = 4), so the selections that
read ``jetId`` need no change.

Files without ``chMultiplicity``/``neMultiplicity`` (NanoAODv12) use ``nConstituents`` for the
constituent count, ``chHEF > 0.01`` for ``chMultiplicity > 0`` (charged-hadron energy implies a
charged hadron) and ``nConstituents`` for ``neMultiplicity`` beyond |eta| = 3, outside the tracker
where a jet has no charged constituents. Against the stored v12 ``jetId`` the computed ID differs
in 2.7 < |eta| <= 3.0 on purpose: the v12 bit there is known to be wrong and JME's v12 fix adds
``neHEF < 0.99`` (the computed value).
"""

from __future__ import annotations

import awkward as ak
import numpy as np

TIGHT, TIGHT_LEPVETO = 2, 4
COLLECTIONS = ("Jet", "FatJet")
# inputs of the computed ID; the multiplicities where the file has them, else nConstituents
ID_FIELDS = ("eta", "neHEF", "neEmEF", "chHEF", "muEF", "chEmEF")
MULTIPLICITY_FIELDS = ("chMultiplicity", "neMultiplicity")


def id_inputs(collection: str, branches: set[str]) -> list[str] | None:
    """Branches the computed ID of ``collection`` reads from a file with ``branches`` (None: not computable)."""
    needed = [f"{collection}_{f}" for f in ID_FIELDS]
    mult = [f"{collection}_{f}" for f in MULTIPLICITY_FIELDS]
    needed += mult if set(mult) <= branches else [f"{collection}_nConstituents"]
    return needed if set(needed) <= branches else None


def computed_jet_id(jets: ak.Array) -> ak.Array:
    """The Run 3 tight / tight-lepton-veto ID as NanoAOD ``jetId`` bits (see the module docstring)."""
    eta = abs(jets["eta"])
    fields = set(ak.fields(jets))
    if {"chMultiplicity", "neMultiplicity"} <= fields:
        ch, ne = jets.chMultiplicity, jets.neMultiplicity
        n_const, has_charged = ch + ne, ch > 0
    else:  # NanoAODv12: no multiplicities (see the module docstring)
        n_const = ne = jets.nConstituents
        has_charged = jets.chHEF > 0.01
    central = ((jets.neHEF < 0.99) & (jets.neEmEF < 0.9) & (n_const > 1) & (jets.chHEF > 0.01) & has_charged)
    tight = ak.where(
        eta <= 2.6, central,
        ak.where(eta <= 2.7, (jets.neHEF < 0.90) & (jets.neEmEF < 0.99),
                 ak.where(eta <= 3.0, jets.neHEF < 0.99, (ne >= 2) & (jets.neEmEF < 0.4))))
    lepveto = tight & ((eta > 2.7) | ((jets.muEF < 0.8) & (jets.chEmEF < 0.8)))
    return ak.values_astype(tight * TIGHT + lepveto * TIGHT_LEPVETO, np.uint8)


def with_jet_id(events: ak.Array) -> ak.Array:
    """``events`` with ``jetId`` computed for Jet and FatJet where the file has none (else unchanged)."""
    for collection in COLLECTIONS:
        if collection in ak.fields(events) and "jetId" not in ak.fields(events[collection]):
            jets = events[collection]
            events = ak.with_field(events, ak.with_field(jets, computed_jet_id(jets), "jetId"), collection)
    return events




def resolve_needs(needs: dict[str, str], branches: set[str]) -> tuple[dict[str, str], list[str]]:
    """``needs`` (branch -> what needs it) for a file with ``branches``, and start-up notices.

    Each needed ``{Jet,FatJet}_jetId`` the file lacks is replaced by the branches its computed ID
    reads (:func:`computed_jet_id`); where those are absent too, the jetId stays needed with a reason
    that names the NanoAOD version change.
    """
    needs = dict(needs)
    notices = []
    for collection in COLLECTIONS:
        branch = f"{collection}_jetId"
        if branch not in needs or branch in branches:
            continue
        inputs = id_inputs(collection, branches)
        if inputs is None:
            needs[branch] += (f"; NanoAODv15 dropped {branch} and crema computes it from "
                              f"{', '.join(f'{collection}_{f}' for f in ID_FIELDS + MULTIPLICITY_FIELDS)}, "
                              "which this file lacks too")
            continue
        why = needs.pop(branch)
        needs.update({b: f"{collection} jet ID computed without {branch} ({why})" for b in inputs})
        notices.append(f"no {branch} (NanoAODv15 or later): computing the Run 3 tight / tight-lepton-veto "
                       f"jet ID from {', '.join(inputs[1:])}")
    return needs, notices


def version_hint(branches: set[str]) -> str:
    """A note on the NanoAOD version for missing-branch errors ('' for NanoAODv12-like files)."""
    if "nJet" in branches and "Jet_jetId" not in branches:
        return (" (the file has no Jet_jetId: it is NanoAODv15 or later, whose branches differ from the "
                "NanoAODv12 ones crema's selections and models were written for)")
    return ""


__all__ = ["TIGHT", "TIGHT_LEPVETO", "computed_jet_id", "id_inputs", "resolve_needs", "version_hint", "with_jet_id"]
