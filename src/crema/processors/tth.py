"""The ttH(bb) semi-leptonic processor: [correct ->] select -> infer (SPANet) -> fill.

One lepton, at least four central jets and two b-tagged ones; SPANet assigns jets to the Higgs
(``h``), the hadronic top (``ht``) and the leptonic top's b (``lt``), and the processor fills the
reconstructed masses, the detection probabilities and the signal score per dataset.
With ``corrections`` the AK4 jets are calibrated first (the era's JEC or the jet calibration DNN,
JER smearing, MET propagation; nominal only), through the code the HH->bbWW processor uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import awkward as ak
import numpy as np
from coffea import processor
from coffea.analysis_tools import PackedSelection

from crema.corrections.btag import working_point
from crema.corrections.era import EraConfig
from crema.processors.common import (
    JetCorrectionOptions,
    SampleInfo,
    SpanetOptions,
    add_input_steps,
    book,
    correct_events,
    count_nonfinite,
    count_undefined,
    fill_cutflow,
    fill_histograms,
    finite_weights,
    jet_correction_branches,
    load_histogram_specs,
    normalise_output,
    sum_of_weights,
)
from crema.schema import ConfigError
from crema.selections import hhbbww as sel
from crema.selections.config import load_selection
from crema.selections.event import EventSelection
from crema.selections.jetid import with_jet_id

NOMINAL = "nominal"
CHANNEL = "sl"


@dataclass(frozen=True)
class TTHCuts:
    """Event selection of the ttH semi-leptonic channel."""

    n_leptons: int = 1
    leading_lepton_pt_min: float = 32.0
    tight_leptons: bool = True
    min_jets: int = 4
    min_btags: int = 2
    min_btags_tight_region: int = 3  # the ``ge3b`` region


@dataclass(frozen=True)
class TTHOptions:
    """``processor.options`` of a ``tth`` run config.

    ``corrections``: null (default) leaves the jets as in NanoAOD; a mapping (``jets``,
    ``jet_calibration: {method: correctionlib|dnn, model, threads}``) calibrates them first.
    ``event_selection``: false skips the era's event-level steps (for skims without HLT/Flag branches).
    """

    selection: str = "hhbbww_run3"  # object selection (leptons, AK4 jets, b-tag working point)
    histograms: str = "tth"
    met: Literal["PuppiMET", "MET"] = "PuppiMET"
    cuts: TTHCuts = field(default_factory=TTHCuts)
    spanet: SpanetOptions = field(default_factory=SpanetOptions)
    corrections: JetCorrectionOptions | None = None
    event_selection: bool = True  # the era's golden JSON, MET filters, triggers and jet veto (false: none)


REGIONS = ("inclusive", "ge3b")


def _padded_p4(jets: ak.Array) -> np.ndarray:
    """(events, J, 4) px, py, pz, E of the jets, zero padded."""
    n = int(ak.max(ak.num(jets, axis=1), initial=0))
    cols = []
    for f in ("pt", "eta", "phi", "mass"):
        cols.append(np.ma.filled(ak.to_numpy(ak.pad_none(jets[f], max(n, 1), axis=1)).astype(np.float64), 0.0))
    pt, eta, phi, m = cols
    pz = pt * np.sinh(eta)
    return np.stack([pt * np.cos(phi), pt * np.sin(phi), pz, np.sqrt(pt**2 + pz**2 + m**2)], axis=-1)


def system_mass(p4: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Invariant mass of the jets ``index`` ((events, k), -1: none) per event; NaN if any is missing."""
    if len(p4) == 0:
        return np.zeros(0)
    picked = np.take_along_axis(p4, np.maximum(index, 0)[..., None], axis=1).sum(axis=1)
    m2 = picked[:, 3] ** 2 - (picked[:, :3] ** 2).sum(axis=1)
    return np.where((index >= 0).all(axis=1), np.sqrt(np.maximum(m2, 0.0)), np.nan)


OBSERVABLES = {
    "m_bb": lambda r: system_mass(r["p4"], r["h"]),
    "m_bqq": lambda r: system_mass(r["p4"], r["ht"]),
    "m_qq": lambda r: system_mass(r["p4"], r["ht"][:, 1:]),
    "h_detection": lambda r: r["h_detection"],
    "ht_detection": lambda r: r["ht_detection"],
    "lt_detection": lambda r: r["lt_detection"],
    "signal_score": lambda r: r["signal"][:, 1] if r["signal"].ndim == 2 else r["signal"],
    "n_jets": lambda r: r["n_jets"],
    "n_bjets": lambda r: r["n_bjets"],
    "lep1_pt": lambda r: r["lep1_pt"],
}


class TTHProcessor(processor.ProcessorABC):
    """ttH(bb) in the single-lepton channel with SPANet jet assignment (see docs/spanet.md).

    Output (after ``postprocess``): histograms with dataset/channel/region/systematic axes,
    normalised to cross section x luminosity; the cutflow; like the HH->bbWW processor, so
    ``crema run`` writes the same ROOT files and plots.
    """

    def __init__(self, options: TTHOptions, samples: dict[str, SampleInfo], era: EraConfig, luminosity_fb: float) -> None:
        self.options = options
        self.samples = samples
        self.luminosity_fb = luminosity_fb
        self.selection = load_selection(options.selection)
        self.btag_threshold = working_point(era.path("btag_file"), self.selection.btag.tagger,
                                            self.selection.btag.working_point)
        self.hist_specs = load_histogram_specs(options.histograms)
        unknown = sorted(set(self.hist_specs) - set(OBSERVABLES))
        if unknown:
            raise ConfigError(f"histograms.{unknown[0]}: unknown observable (known: {', '.join(OBSERVABLES)})")
        self.spanet = options.spanet.build("processor.options.spanet")
        particles = {p.name for p in self.spanet.event.particles}
        if not {"h", "ht", "lt"} <= particles or "EVENT/signal" not in self.spanet.event.classification_names:
            raise ConfigError("processor.options.spanet.event_file: the ttH processor needs particles h, ht, lt "
                              f"and the classification EVENT/signal (the event file has {sorted(particles)})")
        corrections = options.corrections
        self.jet_corrector = corrections.jet_corrector(era, "processor.options.corrections") if corrections else None
        self.event_selection = EventSelection(era, samples, options.event_selection)
        self.generator_sumw: dict[str, float] = {}  # Runs-tree sums of weights, set by the run (postprocess)

    def required_branches(self, sample: SampleInfo) -> dict[str, str]:
        """Branches this processor reads for ``sample``, each mapped to what needs it."""
        needs = sel.required_branches(self.selection, self.options.met)
        needs.update(self.event_selection.required_branches(sample))
        for tag in self.spanet.tags.values():
            if isinstance(tag, str):
                needs[f"Jet_{tag}"] = "SPANet jet inputs"
        if any(f == "sumet" for g in self.spanet.event.globals for f in g.feature_names):
            needs[f"{self.options.met}_sumEt"] = "SPANet MET input"
        if sample.is_mc:
            needs["genWeight"] = "event weights (simulated datasets)"
        needs.update(jet_correction_branches(self.jet_corrector, sample))
        return needs

    def empty_output(self) -> dict[str, Any]:
        """The output of a run over no events."""
        return {
            "histograms": book(self.hist_specs, list(self.samples), [CHANNEL], list(REGIONS), [NOMINAL]),
            "sumw": {}, "nevents": {}, "cutflow": {}, "cutflow_weighted": {}, "processed": {}, "processed_lumis": {},
            "nonfinite": {}, "undefined": {},  # as the HH->bbWW processor's
        }

    def process(self, events: ak.Array) -> dict[str, Any]:
        dataset = events.metadata["dataset"]
        sample = self.samples[dataset]
        out = self.empty_output()
        n = len(events)
        out["nevents"][dataset] = n
        out["processed"][events.metadata["filename"]] = n
        out["nonfinite"] = count_nonfinite(events, self.required_branches(sample))
        weight = (np.asarray(ak.to_numpy(events.genWeight), dtype=np.float64) if sample.is_mc else np.ones(n))
        out["sumw"][dataset] = sum_of_weights(events, sample)

        events = correct_events(self.jet_corrector, with_jet_id(events), [], self.options.met)[NOMINAL]
        steps = self.event_selection.steps(events, sample)
        if not sample.is_mc:
            out["processed_lumis"][dataset] = steps.processed_lumis(events)
        objects = sel.select_objects(events, self.selection, self.btag_threshold, self.options.met)
        selection, cuts = self.channel_cuts(objects)
        cuts = steps.prepend(selection, add_input_steps(selection, cuts, objects.met, finite_weights(weight)),
                             objects.leptons, CHANNEL)
        fill_cutflow(out, dataset, CHANNEL, selection, cuts, weight)
        mask = selection.all(*cuts)
        chosen = objects[mask]
        record = self.infer(chosen)
        regions = {"inclusive": np.ones(int(mask.sum()), bool),
                   "ge3b": record["n_bjets"] >= self.options.cuts.min_btags_tight_region}
        self.fill(out["histograms"], dataset, record, weight[mask], regions)
        out["undefined"][dataset] = {CHANNEL: count_undefined(self._value(record), out["histograms"], int(mask.sum()))}
        return out

    def postprocess(self, accumulator: dict[str, Any]) -> dict[str, Any]:
        """Scale each simulated dataset to xsec x luminosity / sum of genWeight."""
        out = processor.accumulate([self.empty_output(), accumulator or {}])
        return normalise_output(out, self.samples, self.luminosity_fb, self.generator_sumw)

    # ------------------------------------------------------------------ steps
    def channel_cuts(self, objects: sel.Objects) -> tuple[PackedSelection, list[str]]:
        """The cutflow: lepton count, tight leading lepton above threshold, jets, b-tags."""
        c = self.options.cuts
        leptons = objects.leptons
        lead = ak.firsts(leptons)
        lead_ok = lead.pt > c.leading_lepton_pt_min
        if c.tight_leptons:
            lead_ok = lead_ok & lead.tight
        selection = PackedSelection()
        selection.add(f"{c.n_leptons} lepton", ak.to_numpy(ak.num(leptons, axis=1) == c.n_leptons))
        selection.add(f"lepton pT > {c.leading_lepton_pt_min:g}", ak.to_numpy(ak.fill_none(lead_ok, False)))
        selection.add(f">= {c.min_jets} jets", ak.to_numpy(ak.num(objects.jets, axis=1) >= c.min_jets))
        selection.add(f">= {c.min_btags} b-tags", ak.to_numpy(ak.num(objects.bjets, axis=1) >= c.min_btags))
        return selection, list(selection.names)

    def infer(self, objects: sel.Objects) -> dict[str, np.ndarray]:
        """SPANet on the selected events: jet indices, probabilities and the event-level quantities."""
        result = self.spanet(objects.jets, objects.met)
        record = {"p4": _padded_p4(objects.jets)}
        for p in ("h", "ht", "lt"):
            record[p] = ak.to_numpy(result[p]).astype(np.int64).reshape(len(result), -1)
            record[f"{p}_detection"] = ak.to_numpy(result[f"{p}_detection"]).astype(np.float64)
        record["signal"] = ak.to_numpy(result["EVENT_signal"]).astype(np.float64)
        record["n_jets"] = ak.to_numpy(ak.num(objects.jets, axis=1)).astype(np.float64)
        record["n_bjets"] = ak.to_numpy(ak.num(objects.bjets, axis=1)).astype(np.float64)
        record["lep1_pt"] = np.ma.filled(ak.to_numpy(ak.firsts(objects.leptons).pt).astype(np.float64), np.nan)
        return record

    def fill(self, hists, dataset: str, record: dict[str, np.ndarray], weight: np.ndarray,
             regions: dict[str, np.ndarray]) -> None:
        fill_histograms(hists, self._value(record), dataset, CHANNEL, NOMINAL, weight, regions)

    @staticmethod
    def _value(record: dict[str, np.ndarray]):
        return lambda name: np.asarray(OBSERVABLES[name](record), dtype=np.float64)
