"""Run 3 jet veto maps: reject events with a jet in a detector region JME marks as bad.

The jets considered are the ones JME recommends for the veto (https://cms-jerc.web.cern.ch/Recommendations/
#jet-veto-maps): pt > 15 GeV, tight jet ID, charged + neutral electromagnetic fraction < 0.9 and no
PF muon within dR < 0.2. An event is vetoed if any such jet lies where the map is non-zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import awkward as ak
import numpy as np

from crema.corrections import files
from crema.flat import FlatFields
from crema.physical import physical_flat
from crema.selections.deltar import any_near_flat
from crema.schema import ConfigError

VETO_INPUTS = {"type", "eta", "phi"}


@dataclass(frozen=True)
class JetVetoConfig:
    """The veto map (``file``, ``correction``, map ``type``) and the jets it is applied to."""

    file: str
    correction: str
    type: str = "jetvetomap"
    pt_min: float = 15.0
    jet_id_mask: int = 2  # tight
    em_fraction_max: float = 0.9  # chEmEF + neEmEF
    muon_dr_min: float = 0.2  # PF muons

    def validate(self) -> None:
        from crema.corrections.era import resolve_correction_file

        info = files.summary(resolve_correction_file(self.file)).require(self.correction, "correction")
        files.require_inputs(info, VETO_INPUTS, "correction")
        files.require_category(info, "type", self.type, "type")
        if self.pt_min < 0 or self.muon_dr_min < 0:
            raise ConfigError("pt_min, muon_dr_min: must be >= 0")


class JetVeto:
    """Evaluates one veto map on NanoEvents (built once per processor; the correction set per process)."""

    BRANCHES = ("Jet_pt", "Jet_eta", "Jet_phi", "Jet_jetId", "Jet_chEmEF", "Jet_neEmEF",
                "Muon_eta", "Muon_phi", "Muon_isPFcand")

    def __init__(self, config: JetVetoConfig) -> None:
        from crema.corrections.era import resolve_correction_file

        self.config = config
        self.path = resolve_correction_file(config.file)
        self.ranges = files.input_ranges(files.summary(self.path).require(config.correction, "correction"),
                                         {"type": config.type})

    def veto_jets(self, jets: ak.Array, muons: ak.Array) -> ak.Array:
        """Mask of the jets the veto map is applied to (JME's selection, see the module docstring)."""
        return ak.unflatten(self._veto_jets_flat(jets, muons), ak.num(jets, axis=1))

    def _veto_jets_flat(self, jets: ak.Array | FlatFields, muons: ak.Array) -> np.ndarray:
        c = self.config
        j = jets if isinstance(jets, FlatFields) else FlatFields(jets)
        m = FlatFields(muons)
        near_muon = any_near_flat(j, FlatFields(m.select(m["isPFcand"])), c.muon_dr_min)
        # a jet with unphysical kinematics is dropped by every object selection, so it vetoes nothing
        return (physical_flat(j) & (j["pt"] > c.pt_min) & ((j["jetId"] & c.jet_id_mask) == c.jet_id_mask)
                & (j["chEmEF"] + j["neEmEF"] < c.em_fraction_max) & ~near_muon)

    def in_vetoed_region(self, eta: np.ndarray, phi: np.ndarray) -> np.ndarray:
        """Whether each (eta, phi) lies in a vetoed region (map value non-zero)."""
        table = files.binned_table(self.path, self.config.correction, {"type": self.config.type})
        if table is not None:
            values = table.evaluate({"eta": eta, "phi": phi})
        else:
            corr = files.correction_set(self.path)[self.config.correction]
            values = files.evaluate(corr, [self.config.type, np.asarray(eta, dtype=np.float64),
                                           np.asarray(phi, dtype=np.float64)],
                                    [None, self.ranges.get("eta"), self.ranges.get("phi")])
        return values != 0  # NaN (a non-finite position) counts as vetoed

    def passes(self, jets: ak.Array, muons: ak.Array) -> np.ndarray:
        """Per event: True when no selected jet lies in a vetoed region."""
        j = FlatFields(jets)
        selected = self._veto_jets_flat(j, muons)
        event = j.event_index[selected]
        vetoed = self.in_vetoed_region(j["eta"][selected], j["phi"][selected])
        return np.bincount(event[vetoed], minlength=len(j.counts)) == 0


__all__ = ["JetVeto", "JetVetoConfig"]
