"""The HH->bbWW processor: select -> correct -> infer -> fill, for the SL and DL channels."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import awkward as ak
import numpy as np
from coffea import processor
from coffea.analysis_tools import Weights

from crema.corrections.btag import working_point
from crema.corrections.era import EraConfig
from crema.corrections.theory import TheoryOptions, TheoryWeights

NOMINAL = "nominal"
from crema.models.classifier.inference import ClassifierOptions
from crema.observables import Expression, Observables, parse
from crema.processors.common import (
    HistogramSpec,
    JetCorrectionOptions,
    SampleInfo,
    SpanetOptions,
    add_input_steps,
    book,
    count_nonfinite,
    count_undefined,
    fill_cutflow,
    fill_histograms,
    finite_weights,
    iter_corrected_events,
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
from crema.selections.objects import by_score


@dataclass(frozen=True)
class DeepHMEOptions:
    """DeepHME heavy-mass estimation: the model per channel and how it runs."""

    models: dict[str, str] = field(default_factory=lambda: {"sl": "predict_quantiles3D_SL_v3",
                                                             "dl": "predict_quantiles3D_DL_v8"})
    standardisation: Literal["fold", "reference"] = "fold"
    threads: int = 1
    providers: list[str] | None = None


@dataclass(frozen=True)
class CorrectionOptions(JetCorrectionOptions):
    """Which corrections run (files and keys come from the era).

    ``jets``: JEC + JER on AK4 jets, propagated to MET; ``jet_calibration``: the nominal
    calibration, ``{method: correctionlib}`` (default, the era's L1L2L3Res) or ``{method: dnn,
    model: deepsets_generated, threads: 1}`` (pt_raw x the DNN factor, JER and JES variations on
    top; see :class:`~crema.processors.common.JetCalibrationOptions`); ``weights``: pileup and
    lepton (and b-tag, where the era has scale factors) weights; ``systematics``: also fill every
    JES/JER shape variation and weight variation on the histogram's systematic axis (off for quick runs);
    ``theory`` (with ``systematics``): scale, PDF and parton-shower variations from the NanoAOD weight
    branches of simulated datasets (:mod:`crema.corrections.theory`; null: none).
    """

    weights: bool = True
    systematics: bool = True
    theory: TheoryOptions | None = None
    jes_sources: list[str] | None = None  # None: the era's (regrouped) set


@dataclass(frozen=True)
class HHbbWWOptions:
    """Processor options (the ``processor.options`` block of a run config).

    ``deephme``: null (default) runs no model; a mapping runs DeepHME on the selected events.
    ``spanet``: null (default) takes the H->bb jets as the two highest b-score jets; a mapping
    (e.g. ``{model: hh_sl, event_file: hh_sl}``) takes them from SPANet's ``h`` assignment in the
    single-lepton channel (``m_bb``, ``spanet_h_detection``).
    ``corrections``: null (default) applies none; a mapping applies the era's corrections.
    ``classifier``: null (default) runs none; ``{model: MODEL_DIR, method: bdt}`` scores each
    selected event with a model of ``crema classifier-train`` (``classifier_score``).
    ``event_selection``: false skips the era's event-level steps (for skims without HLT/Flag branches).
    """

    selection: str = "hhbbww_run3"
    histograms: str = "hhbbww"
    met: Literal["PuppiMET", "MET"] = "PuppiMET"
    channels: list[str] = field(default_factory=lambda: ["sl", "dl"])
    deephme: DeepHMEOptions | None = None
    spanet: SpanetOptions | None = None
    corrections: CorrectionOptions | None = None
    classifier: ClassifierOptions | None = None
    event_selection: bool = True  # the era's golden JSON, MET filters, triggers and jet veto (false: none)

    def validate(self) -> None:
        for ch in self.channels:
            if ch not in sel.CHANNELS:
                raise ConfigError(f"channels: unknown channel {ch!r} (known: {', '.join(sel.CHANNELS)})")


#: per-event model outputs the observable language can read (``HME.mass``): language name ->
#: (processor option that runs the model, key in ``infer``'s result, outputs)
MODEL_OUTPUTS = {
    "HME": ("deephme", "hme", ("mass", "mass_error")),
    "SPANet": ("spanet", "spanet", ("h_detection",)),
    "classifier": ("classifier", "classifier", ("score",)),
}


def observables(objects: sel.Objects, inferred: dict[str, Any], btag_score: str) -> Observables:
    """The selected objects and model outputs of one channel as the observable language sees them.

    ``HbbJet`` are the H->bb candidate jets: SPANet's ``h`` jets when SPANet ran (none where it
    assigned none), else the central jets in b-score order. ``Muon``/``Electron`` are the
    selected leptons of that flavour.
    """
    leps = objects.leptons

    def hbb() -> ak.Array:
        if "spanet" in inferred:
            h = inferred["spanet"].h
            return objects.jets[h[h >= 0]]
        return by_score(objects.jets, btag_score)

    collections = {
        "Jet": objects.jets, "BJet": objects.bjets, "HbbJet": hbb, "FatJet": objects.fatjets, "Lepton": leps,
        "Muon": lambda: leps[abs(leps.pdgId) == 13], "Electron": lambda: leps[abs(leps.pdgId) == 11],
        "MET": objects.met,
    }
    outputs = {name: inferred[key] for name, (_, key, _) in MODEL_OUTPUTS.items() if key in inferred}
    return Observables(collections, outputs, n_events=len(objects.jets))


def histogram_expressions(specs: dict[str, HistogramSpec], source: str) -> dict[str, Expression]:
    """Parse each histogram's ``expr`` (an entry without one takes the builtin hhbbww definition)."""
    builtin = load_histogram_specs("hhbbww")
    outputs = {name: outs for name, (_, _, outs) in MODEL_OUTPUTS.items()}
    expressions = {}
    for name, spec in specs.items():
        text = spec.expr if spec.expr is not None else getattr(builtin.get(name), "expr", None)
        if text is None:
            raise ConfigError(f"histograms ({source}).{name}.expr: no expression and no builtin observable of this "
                              f"name (builtin: {', '.join(builtin)})")
        expressions[name] = parse(text, f"histograms ({source}).{name}.expr", outputs=outputs)
    return expressions


def _axis_name(variation: str) -> str:
    """Histogram-axis name of a jet variation: ``JES_Absolute_up`` -> ``JES_AbsoluteUp``."""
    for suffix, axis_suffix in (("_up", "Up"), ("_down", "Down")):
        if variation.endswith(suffix):
            return variation[: -len(suffix)] + axis_suffix
    return variation


class HHbbWWProcessor(processor.ProcessorABC):
    """Resonant HH->bbWW analysis in the single-lepton (sl) and double-lepton (dl) channels.

    ``process`` reads top to bottom: correct jets and MET per variation (crema.corrections),
    select objects, weight events, then per variation and channel apply the cutflow, run the
    models (crema.models) and fill histograms per region and systematic. ``postprocess`` scales
    simulated datasets to cross section x luminosity. See docs/hhbbww.md.
    """

    def __init__(
        self,
        options: HHbbWWOptions,
        samples: dict[str, SampleInfo],
        era: EraConfig,
        luminosity_fb: float,
    ) -> None:
        self.options = options
        self.samples = samples
        self.luminosity_fb = luminosity_fb
        self.selection = load_selection(options.selection)
        self.btag_threshold = working_point(
            era.path("btag_file"), self.selection.btag.tagger, self.selection.btag.working_point
        )
        # a model's observables are booked only when that model runs
        specs = load_histogram_specs(options.histograms)
        expressions = histogram_expressions(specs, options.histograms)
        off = {name for name, (option, _, _) in MODEL_OUTPUTS.items() if getattr(options, option) is None}
        self.expressions = {name: e for name, e in expressions.items() if not e.models & off}
        self.hist_specs = {name: specs[name] for name in self.expressions}
        self.channels = [ch for ch in options.channels if ch in self.selection.channels]
        self.hme = self._deephme(options.deephme) if options.deephme is not None else None
        self.spanet = self._spanet(options.spanet) if options.spanet is not None else None
        self.classifier = (options.classifier.build("processor.options.classifier", self.model_outputs(exclude="classifier"))
                           if options.classifier is not None else None)
        self.jet_corrector, self.event_weights = self._corrections(options.corrections, era)
        self.shape_variations = self._shape_variations(options.corrections)
        weight_variations = (self.event_weights.variations if self.event_weights is not None
                             and options.corrections.systematics else [])
        opts = options.corrections
        self.theory = TheoryWeights(opts.theory) if opts is not None and opts.systematics and opts.theory else None
        if self.theory is not None:
            weight_variations = [*weight_variations, *self.theory.variations]
        self.weight_variations = weight_variations
        self.systematics = [NOMINAL, *(_axis_name(v) for v in self.shape_variations), *weight_variations]
        self.event_selection = EventSelection(era, samples, options.event_selection)
        self.generator_sumw: dict[str, float] = {}  # Runs-tree sums of weights, set by the run (postprocess)

    def model_outputs(self, exclude: str | None = None) -> dict[str, tuple[str, ...]]:
        """Model outputs this configuration produces (language name -> outputs)."""
        return {name: outs for name, (option, _, outs) in MODEL_OUTPUTS.items()
                if name != exclude and getattr(self.options, option) is not None}

    def _corrections(self, opts: CorrectionOptions | None, era: EraConfig):
        """Build the jet corrector and event weights once (validating the era's files and keys)."""
        if opts is None:
            return None, None
        from crema.corrections.weights import EventWeights

        corrector = opts.jet_corrector(era, "processor.options.corrections")
        weights = EventWeights(era, self.selection.btag) if opts.weights else None
        return corrector, weights

    def _shape_variations(self, opts: CorrectionOptions | None) -> list[str]:
        if self.jet_corrector is None or not opts.systematics:
            return []
        def source(variation: str) -> str | None:  # JES_<source>_<up|down> -> <source>
            return variation[4:].rsplit("_", 1)[0] if variation.startswith("JES_") else None

        variations = self.jet_corrector.variations
        if opts.jes_sources is not None:
            known = {source(v) for v in variations} - {None}
            unknown = sorted(set(opts.jes_sources) - known)
            if unknown:
                raise ConfigError(f"processor.options.corrections.jes_sources: unknown source {unknown[0]!r} "
                                  f"(the era has: {', '.join(sorted(known))})")
            variations = [v for v in variations if source(v) is None or source(v) in opts.jes_sources]
        return variations

    def _spanet(self, opts: SpanetOptions):
        """The SPANet wrapper for the SL channel's H->bb jets (fails at start-up if unusable)."""
        if "sl" not in self.channels:
            raise ConfigError("processor.options.spanet: SPANet H->bb jets need the sl channel")
        model = opts.build("processor.options.spanet")
        if "h" not in {p.name for p in model.event.particles}:
            raise ConfigError(f"processor.options.spanet.event_file: no particle 'h' (H->bb) in {opts.event_file!r}")
        return model

    def _deephme(self, opts: DeepHMEOptions) -> dict[str, Any]:
        """One DeepHME wrapper per channel, built now so a bad model name fails at start-up."""
        from crema.models.deephme import DeepHME

        wrappers = {}
        for channel in self.channels:
            model = opts.models.get(channel)
            if model is None:
                raise ConfigError(f"processor.options.deephme.models.{channel}: no model for this channel")
            try:
                wrappers[channel] = DeepHME(channel.upper(), model, opts.standardisation,
                                            threads=opts.threads, providers=opts.providers)
            except (ValueError, FileNotFoundError) as err:
                raise ConfigError(f"processor.options.deephme.models.{channel}: {err}") from None
        return wrappers

    # ------------------------------------------------------------------ interface
    def required_branches(self, sample: SampleInfo) -> dict[str, str]:
        """Branches this processor reads for ``sample``, each mapped to what needs it."""
        needs = sel.required_branches(self.selection, self.options.met)
        needs.update(self.event_selection.required_branches(sample))
        if self.hme is not None:
            from crema.models.deephme import FATJET_FIELDS, JET_FIELDS

            needs["event"] = "DeepHME (event parity picks the fold)"
            # btagPNetCvNotB is absent from NanoAODv12; the wrapper substitutes it
            needs.update({f"Jet_{f}": "DeepHME jet inputs" for f in JET_FIELDS if f != "btagPNetCvNotB"})
            needs.update({f"FatJet_{f}": "DeepHME fat-jet inputs" for f in FATJET_FIELDS})
        if self.spanet is not None:
            needs.update({f"Jet_{t}": "SPANet jet inputs" for t in self.spanet.tags.values() if isinstance(t, str)})
        if sample.is_mc:
            needs["genWeight"] = "event weights (simulated datasets)"
            needs["Jet_hadronFlavour"] = "b-tag efficiency maps (simulated datasets)"
        if self.classifier is not None:
            needs["event"] = "classifier (event parity picks the fold)"
        needs.update(jet_correction_branches(self.jet_corrector, sample))
        if self.event_weights is not None and sample.is_mc:
            needs.update(self.event_weights.required_branches())
        return needs

    def optional_branches(self, sample: SampleInfo) -> dict[str, str]:
        """Branches read when a file has them -> what is left out without them (a start-up notice)."""
        return self.theory.optional_branches() if self.theory is not None and sample.is_mc else {}

    def empty_output(self) -> dict[str, Any]:
        """The output of a run over no events: empty histograms and counters."""
        return {
            "histograms": book(self.hist_specs, list(self.samples), self.channels,
                               list(self.selection.regions), self.systematics),
            "sumw": {},
            "nevents": {},
            "cutflow": {},
            "cutflow_weighted": {},
            "processed": {},
            "processed_lumis": {},  # dataset -> set of (run, lumi) (data); CMS lumi JSON after postprocess
            "btag_efficiency": {},  # dataset -> pt x |eta| x flavour x tagged counts (simulation)
            "nonfinite": {},  # branch -> values NaN, inf or outside the physical range
            "undefined": {},  # dataset -> channel -> observable -> selected events without a value (nominal)
        }

    def process(self, events: ak.Array) -> dict[str, Any]:
        dataset = events.metadata["dataset"]
        sample = self.samples[dataset]
        out = self.empty_output()
        n = len(events)
        out["nevents"][dataset] = n
        out["processed"][events.metadata["filename"]] = n
        out["nonfinite"] = count_nonfinite(events, self.required_branches(sample))

        events = with_jet_id(events)  # NanoAODv15 has no jetId: computed from the jet's constituents
        # leptons (untouched by jet corrections) and the jets' lepton cleaning (eta/phi only) once per chunk
        leptons = sel.select_leptons(events, self.selection)
        events = sel.with_lepton_cleaning(events, leptons, self.selection)
        variants = self.iter_correct(events, sample)
        _, nominal_events = next(variants)
        steps = self.event_selection.steps(nominal_events, sample)
        if not sample.is_mc:
            out["processed_lumis"][dataset] = steps.processed_lumis(events)
        nominal = sel.select_objects(nominal_events, self.selection, self.btag_threshold, self.options.met, leptons)
        weights = self.weights(nominal_events, sample, nominal)
        out["sumw"][dataset] = sum_of_weights(events, sample)
        weight_ok = finite_weights(weights.weight(), (weights.weight(v) for v in self.weight_variations
                                                      if v in weights.variations))  # a theory branch may be absent

        passed_any = np.zeros(n, dtype=bool)  # events passing some channel (nominal)
        lepton_steps: dict = {}  # each channel's lepton cuts, shared by the jet variations
        # one variation's arrays alive at a time: each is built when the loop reaches it
        for systematic, corrected in itertools.chain([(NOMINAL, nominal_events)], variants):
            # a shape variation redoes selection, models and filling; weight variations only re-weight
            objects = nominal if systematic == NOMINAL else self.select(corrected, nominal)
            regions = sel.region_masks(objects, self.selection.regions)
            for channel in self.channels:
                selection, cuts = sel.channel_selection(objects, channel, self.selection.channels[channel],
                                                        lepton_steps)
                cuts = steps.prepend(selection, add_input_steps(selection, cuts, objects.met, weight_ok),
                                     objects.leptons, channel)
                if systematic == NOMINAL:
                    fill_cutflow(out, dataset, channel, selection, cuts, weights.weight())
                mask = selection.all(*cuts)
                if systematic == NOMINAL:
                    passed_any |= mask
                chosen = objects[mask]
                inferred = self.infer(channel, corrected[mask], chosen)
                in_regions = {r: m[mask] for r, m in regions.items()}
                event = observables(chosen, inferred, self.selection.btag.score)
                self.fill(out["histograms"], dataset, channel, _axis_name(systematic), event,
                          weights.weight()[mask], in_regions)
                if systematic == NOMINAL:
                    out["undefined"].setdefault(dataset, {})[channel] = count_undefined(
                        lambda name: event.evaluate(self.expressions[name]), out["histograms"], int(mask.sum()))
                if systematic == NOMINAL and sample.is_mc:
                    for variation in self.weight_variations:
                        if variation not in weights.variations:  # a theory branch this file lacks
                            continue
                        self.fill(out["histograms"], dataset, channel, variation, event,
                                  weights.weight(variation)[mask], in_regions)
        if sample.is_mc:
            self.fill_btag_efficiency(out, dataset, nominal, weights, passed_any)
        return out

    def postprocess(self, accumulator: dict[str, Any]) -> dict[str, Any]:
        """Scale each simulated dataset to xsec x luminosity / sum of genWeight.

        coffea's Runner calls this once at the end; the accumulator is merged into a fresh empty
        output first, so a run whose chunks were all skipped still gives complete (empty) results.
        """
        out = processor.accumulate([self.empty_output(), accumulator or {}])
        return normalise_output(out, self.samples, self.luminosity_fb, self.generator_sumw)

    # ------------------------------------------------------------------ steps
    def select(self, events: ak.Array, nominal: sel.Objects | None = None) -> sel.Objects:
        """Object selection (crema.selections). For a jet variation, ``nominal`` lends the objects
        the variation leaves alone (leptons, fat jets: no AK8 corrections are applied)."""
        return sel.select_objects(events, self.selection, self.btag_threshold, self.options.met,
                                  None if nominal is None else nominal.leptons,
                                  None if nominal is None else nominal.fatjets)

    def correct(self, events: ak.Array, sample: SampleInfo) -> dict[str, ak.Array]:
        """Events with corrected jets and MET, per jet variation (``nominal`` first; crema.corrections).

        Without jet corrections this is ``{"nominal": events}``; data get no shape variations.
        """
        return dict(self.iter_correct(events, sample))

    def iter_correct(self, events: ak.Array, sample: SampleInfo) -> Iterator[tuple[str, ak.Array]]:
        """What :meth:`correct` holds, one ``(variation, events)`` at a time (``nominal`` first)."""
        return iter_corrected_events(self.jet_corrector, events, self.shape_variations if sample.is_mc else [],
                                     self.options.met)

    def infer(self, channel: str, events: ak.Array, objects: sel.Objects) -> dict[str, ak.Array]:
        """Model outputs for the selected events of ``channel`` (crema.models), by model name."""
        inferred = {}
        if self.hme is not None:
            inferred["hme"] = self.hme[channel](events.event, objects.leptons, objects.jets, objects.fatjets, objects.met)
        if self.spanet is not None and channel == "sl":
            inferred["spanet"] = self.spanet(objects.jets, objects.met)
        if self.classifier is not None:  # last: its features may read the other models' outputs
            features = observables(objects, inferred, self.selection.btag.score)
            inferred["classifier"] = {"score": self.classifier.score(features, np.asarray(events.event), channel)}
        return inferred

    def weights(self, events: ak.Array, sample: SampleInfo, objects: sel.Objects) -> Weights:
        """Event weights with coffea ``Weights``: genWeight and the era's scale factors for
        simulation (with up/down variations), 1 for data."""
        weights = Weights(len(events), storeIndividual=True)
        if sample.is_mc:
            weights.add("genWeight", np.asarray(ak.to_numpy(events.genWeight), dtype=np.float64))
            if self.event_weights is not None:
                self.event_weights.add(weights, events, objects.leptons, objects.jets)
            if self.theory is not None:
                self.theory.add(weights, events)
        return weights

    def fill_btag_efficiency(self, out, dataset, objects: sel.Objects, weights: Weights, passed: np.ndarray) -> None:
        """Jets of events passing any channel, for b-tag efficiency maps (``crema btag-eff``)."""
        from crema.corrections.btag import efficiency_histogram, fill_efficiency

        sign = np.sign(weights.partial_weight(include=["genWeight"]))[passed]
        out["btag_efficiency"][dataset] = fill_efficiency(
            efficiency_histogram(), objects.jets[passed], self.selection.btag.score, self.btag_threshold, sign)

    def fill(self, hists, dataset, channel, systematic, event: Observables, weight, regions) -> None:
        """Fill every booked observable for the selected events of one channel, per region."""
        event.reserve(self.expressions.values())
        fill_histograms(hists, lambda name: event.evaluate(self.expressions[name]), dataset, channel, systematic,
                        weight, regions)
