"""Jet calibration evaluation: the response of every calibration on gen-matched AK4 jets.

:class:`JetCalibEval` is the coffea processor behind ``crema calib-report``.  Per chunk it
matches reco jets to GenJets exactly as the training dataset does
(:func:`~crema.processors.jet_calib_dataset.match_genjets`), keeps the matched jets with
``pt_gen`` above ``pt_gen_min`` and returns flat per-jet arrays:

=========  ==================================================================================
``pt_gen``  matched GenJet pt
``eta``     reco jet eta
``flavour`` index into :data:`~crema.models.jet_calibration.FLAVOURS` (uds, c, b, g, other)
``raw``     ``pt x (1 - rawFactor)``
``jec``     raw x the era's compound L1L2L3Res (:meth:`JetCorrector.jec_factor`, no smearing)
``dnn``     raw x the factor of the :class:`~crema.models.jet_calibration.JetCalibration` model
``pnet``    raw x ``Jet_PNetRegPtRawCorr`` (NaN where the file lacks it or it is <= 0)
=========  ==================================================================================

The chunk arrays are concatenated in :meth:`JetCalibEval.postprocess`; the summaries of the
report (quantiles) do not depend on the order in which chunks arrive.
"""

from __future__ import annotations

from typing import Any

import awkward as ak
import numpy as np
from coffea import processor

from crema.processors.jet_calib_dataset import (
    CalibDatasetOptions,
    flavour_label,
    match_genjets,
)

__all__ = ["FIELDS", "JetCalibEval"]

#: Per-jet arrays of the output, in order.
FIELDS = ("pt_gen", "eta", "flavour", "raw", "jec", "dnn", "pnet")


def _flat(x, dtype=np.float64) -> np.ndarray:
    return np.asarray(ak.to_numpy(ak.flatten(x, axis=1)), dtype=dtype)


class JetCalibEval(processor.ProcessorABC):
    """Per matched jet: generator pt, eta, flavour and the pt of raw, JEC, DNN and PNet (see the module docstring).

    Parameters
    ----------
    model:
        The :class:`~crema.models.jet_calibration.JetCalibration` to evaluate.
    corrector:
        A :class:`~crema.corrections.jets.JetCorrector` without calibration (the JEC reference).
    options:
        GenJet matching (``match``, ``match_dr``; default: the dataset's defaults).
    pt_gen_min:
        Keep matched jets above this GenJet pt (GeV).
    """

    def __init__(self, model, corrector, options: CalibDatasetOptions | None = None, pt_gen_min: float = 20.0) -> None:
        if corrector.calibration is not None:
            raise ValueError("JetCalibEval: the reference JetCorrector must use the correctionlib JEC (no calibration)")
        self.model = model
        self.corrector = corrector
        self.options = options or CalibDatasetOptions()
        self.pt_gen_min = float(pt_gen_min)

    def required_branches(self, sample: Any = None) -> dict[str, str]:
        """Branches every input file must have -> what needs them (for the preflight check)."""
        o = self.options
        need = {f"Jet_{f}": "jet flavour" for f in ("hadronFlavour", "partonFlavour")}
        need.update({f"{o.gen_jets}_{f}": "the GenJet matching" for f in ("pt", "eta", "phi")})
        if o.match == "index":
            need["Jet_genJetIdx"] = "the GenJet matching"
        for b in ("Jet_pt", "Jet_eta", "Jet_phi", "Jet_mass", "Jet_rawFactor", "Jet_area", f"Rho_{self.corrector.config.rho}"):
            need[b] = "the correctionlib JEC (reference)"
        need.update(self.model.required_branches())
        return need

    def process(self, events) -> dict[str, Any]:
        jets = events.Jet
        row, gen = match_genjets(events, jets, self.options)
        pt_gen = np.where(row >= 0, gen["pt"][np.maximum(row, 0)] if len(row) else 0.0, 0.0)
        keep = (row >= 0) & (pt_gen > self.pt_gen_min)
        raw = _flat(jets.pt) * (1.0 - _flat(jets.rawFactor))
        flavour = flavour_label(_flat(jets.hadronFlavour, np.int64), _flat(jets.partonFlavour, np.int64))
        jec = raw * self.corrector.jec_factor(events)
        dnn = raw * _flat(self.model(jets, events))
        if "PNetRegPtRawCorr" in jets.fields:
            corr = _flat(jets.PNetRegPtRawCorr)
            pnet = np.where(corr > 0, raw * corr, np.nan)
        else:
            pnet = np.full(len(raw), np.nan)
        arrays = {"pt_gen": pt_gen, "eta": _flat(jets.eta), "flavour": flavour.astype(np.int64), "raw": raw,
                  "jec": jec, "dnn": dnn, "pnet": pnet}
        meta = events.metadata
        return {"jets": {k: [np.asarray(arrays[k][keep])] for k in FIELDS},
                "processed": {meta.get("filename", meta.get("dataset", "")): len(events)}}

    def postprocess(self, accumulator: dict[str, Any]) -> dict[str, Any]:
        parts = (accumulator or {}).get("jets", {})
        jets = {k: np.concatenate(parts[k]) if parts.get(k) else np.zeros(0, np.int64 if k == "flavour" else np.float64)
                for k in FIELDS}
        return {"jets": jets, "processed": dict((accumulator or {}).get("processed", {}))}
