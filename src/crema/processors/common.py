"""Pieces every crema processor shares: sample metadata, histogram booking, output and normalisation."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import awkward as ak
import hist
import numpy as np
from coffea.analysis_tools import PackedSelection

from crema.flat import FlatFields
from crema.physical import count_unphysical, physical_kinematics
from crema.schema import ConfigError, from_dict, load_yaml

if TYPE_CHECKING:
    from crema.corrections.era import EraConfig
    from crema.corrections.jets import JetCorrector

HISTOGRAM_DIR = Path(__file__).resolve().parent.parent / "configs" / "histograms"


@dataclass(frozen=True)
class SampleInfo:
    """What a processor needs to know about a dataset: its kind, process label and cross section."""

    name: str
    kind: Literal["signal", "background", "data"]
    process: str
    xsec_pb: float | None = None
    primary_dataset: str | None = None  # collision data: Muon, EGamma, MuonEG, ... (overlap removal)

    @property
    def is_mc(self) -> bool:
        return self.kind != "data"


@dataclass(frozen=True)
class HistogramSpec:
    """Regular binning of one observable; ``expr`` its definition in the observable language
    (:mod:`crema.observables`, e.g. ``M(HbbJet1+HbbJet2)``) for processors that read it."""

    bins: int
    start: float
    stop: float
    label: str = ""
    expr: str | None = None

    def validate(self) -> None:
        if self.bins <= 0:
            raise ConfigError("bins: must be positive")
        if self.stop <= self.start:
            raise ConfigError("stop: must be larger than start")


@dataclass(frozen=True)
class SpanetOptions:
    """The SPANet model a processor runs: a shipped name (``tth_sl``) or an ``.onnx`` path, and its event file."""

    model: str = "tth_sl"
    event_file: str = "tth_sl"
    threads: int = 1
    providers: list[str] | None = None
    max_jets: int | None = None  # jet slots, for exports with a dynamic jet axis (SPANet's exporter)

    def build(self, where: str):
        """The wrapper, built now so a missing model or a contract mismatch fails at start-up."""
        from crema.models.spanet import SPANet, shipped_model

        try:
            return SPANet(shipped_model(self.model), self.event_file, threads=self.threads, providers=self.providers,
                          max_jets=self.max_jets)
        except (KeyError, ValueError, FileNotFoundError) as err:
            raise ConfigError(f"{where}.model: {err}") from None


@dataclass(frozen=True)
class JetCalibrationOptions:
    """The nominal AK4 jet calibration (``corrections.jet_calibration``).

    ``method``: ``correctionlib`` (the era's compound L1L2L3Res JEC) or ``dnn`` (pt = pt_raw x the
    factor of a trained calibration, :class:`crema.models.jet_calibration.JetCalibration`, mass
    scaled alike). ``model`` (``dnn`` only): a shipped model (``deepsets_generated`` needs PFNano
    inputs, ``jet_only_generated`` plain NanoAOD) or a model directory. ``threads``,
    ``providers``, ``batch_size``: how onnxruntime runs it.
    """

    method: Literal["correctionlib", "dnn"] = "correctionlib"
    model: str | None = None
    threads: int = 1
    providers: list[str] | None = None
    batch_size: int = 1024

    def validate(self) -> None:
        if self.method == "dnn" and not self.model:
            raise ConfigError("model: method dnn needs a model (a shipped name or a model directory)")
        if self.method != "dnn" and self.model is not None:
            raise ConfigError(f"model: only used by method dnn (method is {self.method})")
        if self.threads < 1:
            raise ConfigError("threads: must be >= 1")
        if self.batch_size < 1:
            raise ConfigError("batch_size: must be >= 1")

    def build(self, where: str):
        """The DNN wrapper (``None`` for correctionlib), built now so a bad model fails at start-up."""
        if self.method != "dnn":
            return None
        from crema.models.jet_calibration import JetCalibration, shipped_model

        try:
            return JetCalibration(shipped_model(self.model), threads=self.threads, providers=self.providers,
                                  batch_size=self.batch_size)
        except (ValueError, KeyError, FileNotFoundError) as err:  # ConfigError is a ValueError
            raise ConfigError(f"{where}.model: {err}") from None


@dataclass(frozen=True)
class JetCorrectionOptions:
    """AK4 jet corrections: ``jets`` switches them on (calibration, JER smearing and its variations,
    MET propagation), ``jet_calibration`` chooses the nominal calibration."""

    jets: bool = True
    jet_calibration: JetCalibrationOptions = field(default_factory=JetCalibrationOptions)

    def validate(self) -> None:
        if not self.jets and self.jet_calibration.method != "correctionlib":
            raise ConfigError("jet_calibration: jets are not corrected (jets: false), so no calibration runs")

    def jet_corrector(self, era: EraConfig, where: str) -> JetCorrector | None:
        """The AK4 :class:`~crema.corrections.jets.JetCorrector` (``None`` when ``jets`` is off)."""
        if not self.jets:
            return None
        from crema.corrections.jets import JetCorrector

        return JetCorrector(era, "jets", calibration=self.jet_calibration.build(f"{where}.jet_calibration"))


def jet_correction_branches(corrector: JetCorrector | None, sample: SampleInfo) -> dict[str, str]:
    """Branches the jet corrections read for ``sample`` -> what needs them (none without a corrector)."""
    if corrector is None:
        return {}
    why = "jet energy corrections (processor.options.corrections.jets)"
    needs = {b: why for b in ("Jet_rawFactor", "Jet_area", f"Rho_{corrector.config.rho}")}
    if sample.is_mc:  # the matched GenJet's pt, and their dR
        needs.update({b: "jet energy resolution smearing" for b in ("Jet_genJetIdx", "GenJet_pt", "GenJet_eta",
                                                                    "GenJet_phi")})
    needs["run"] = "jet energy corrections (their run input) and JER random numbers seeded per event"
    needs["luminosityBlock"] = needs["event"] = "JER random numbers seeded per event"
    if corrector.calibration is not None:
        where = "processor.options.corrections.jet_calibration"
        needs.update({b: f"{reason} ({where})" for b, reason in corrector.calibration.required_branches().items()})
    return needs


def start_chunk(events: ak.Array, samples: dict[str, SampleInfo], out: dict) -> tuple[str, SampleInfo, int]:
    """Book-keeping at the start of ``process``: the chunk's dataset, its sample and size, recorded
    in ``out["nevents"]`` and ``out["processed"]``."""
    dataset = events.metadata["dataset"]
    n = len(events)
    out["nevents"][dataset] = n
    out["processed"][events.metadata["filename"]] = n
    return dataset, samples[dataset], n


def correct_events(corrector: JetCorrector | None, events: ak.Array, variations: list[str], met: str) -> dict[str, ak.Array]:
    """Events with corrected jets and ``met`` per jet variation (``nominal`` first); ``{"nominal": events}``
    without a corrector."""
    return dict(iter_corrected_events(corrector, events, variations, met))


def iter_corrected_events(corrector: JetCorrector | None, events: ak.Array, variations: list[str],
                          met: str) -> Iterator[tuple[str, ak.Array]]:
    """``(variation, events)`` with corrected jets and ``met``, ``nominal`` first, one variation at a
    time (a loop that moves on drops the previous variation's arrays); only ``nominal`` without a corrector."""
    if corrector is None:
        return iter([("nominal", events)])
    return ((variation, _with_jets(corrector, events, jets, met))
            for variation, jets in corrector.iter_correct(events, ["nominal", *variations]))


def _with_jets(corrector: JetCorrector, events: ak.Array, jets: ak.Array, met: str) -> ak.Array:
    corrected = ak.with_field(events, jets, "Jet")
    return ak.with_field(corrected, corrector.corrected_met(events, jets, met), met)


def load_histogram_specs(name_or_path: str | Path) -> dict[str, HistogramSpec]:
    """Histogram binning by builtin name (``hhbbww``) or YAML path."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = HISTOGRAM_DIR / f"{name_or_path}.yaml"
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of observable -> binning")
    try:
        return {name: from_dict(HistogramSpec, spec, name) for name, spec in data.items()}
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def book(specs: dict[str, HistogramSpec], datasets: list[str], channels: list[str], regions: list[str],
         systematics: list[str]) -> dict[str, hist.Hist]:
    """One weighted histogram per observable with dataset, channel, region and systematic axes.

    All categories are booked up front, so a histogram nothing was filled into still has them.
    """
    return {
        name: hist.Hist(
            hist.axis.StrCategory(datasets, name="dataset", growth=True),
            hist.axis.StrCategory(channels, name="channel"),
            hist.axis.StrCategory(regions, name="region"),
            hist.axis.StrCategory(systematics, name="systematic", growth=True),
            hist.axis.Regular(spec.bins, spec.start, spec.stop, name=name, label=spec.label or name),
            storage=hist.storage.Weight(),
        )
        for name, spec in specs.items()
    }


def scale_dataset(h: hist.Hist, dataset: str, factor: float) -> None:
    """Multiply the ``dataset`` slice of a weighted histogram by ``factor`` in place."""
    axis = h.axes["dataset"]
    if dataset not in axis:
        return
    index = axis.index(dataset)
    view = h.view(flow=True)
    slicer = tuple(index if ax.name == "dataset" else slice(None) for ax in h.axes)
    view.value[slicer] *= factor
    view.variance[slicer] *= factor**2


def normalise_output(out: dict, samples: dict[str, SampleInfo], luminosity_fb: float,
                     generator_sumw: dict[str, float] | None = None) -> dict:
    """Scale each simulated dataset's histograms and weighted cutflow to xsec x luminosity (in place).

    ``generator_sumw``: per dataset the Runs-tree ``genEventSumw`` of all its files, used instead of
    the processed genWeight sum where given. Adds ``cutflow_yield`` (weighted cutflow x scale),
    ``scale``, ``luminosity_fb``, ``normalisation`` (per simulated dataset: ``method``
    ``runs_tree`` or ``processed_genweight``, the ``sumw`` used and the ``processed_sumw``) and turns
    ``processed_lumis`` into CMS lumi JSON per dataset.
    """
    generator_sumw = generator_sumw or {}
    sums = {ds: generator_sumw.get(ds, sumw) for ds, sumw in out["sumw"].items()}
    out["normalisation"] = {
        ds: {"method": "runs_tree" if ds in generator_sumw else "processed_genweight", "sumw": sums[ds],
             "processed_sumw": out["sumw"][ds]}
        for ds in sums if samples[ds].is_mc
    }
    if "processed_lumis" in out:
        from crema.selections.event import lumi_json

        out["processed_lumis"] = {ds: lumi_json(lumis) for ds, lumis in out["processed_lumis"].items()}
    scales = {ds: normalisation(samples[ds], sumw, luminosity_fb) for ds, sumw in sums.items()}
    for h in out["histograms"].values():
        for ds, factor in scales.items():
            scale_dataset(h, ds, factor)
    out["cutflow_yield"] = {
        ds: {ch: {cut: w * scales[ds] for cut, w in cuts.items()} for ch, cuts in chans.items()}
        for ds, chans in out["cutflow_weighted"].items()
    }
    out["scale"] = scales
    out["luminosity_fb"] = luminosity_fb
    return out


# --------------------------------------------------------------------------- bad inputs
FINITE_MET = "finite MET"
FINITE_WEIGHT = "finite weight"
INPUT_STEPS = (FINITE_MET, FINITE_WEIGHT)
"""Cutflow steps every histogram-filling processor applies first, in this order."""


def branch_values(events: ak.Array, branch: str) -> ak.Array | None:
    """The NanoEvents array holding the NanoAOD ``branch`` (``Jet_pt`` -> ``events.Jet.pt``), or ``None``."""
    collection, _, name = branch.partition("_")
    fields = ak.fields(events)
    if name and collection in fields and name in ak.fields(events[collection]):
        return events[collection][name]
    if branch in fields:
        return events[branch]
    return None


def count_nonfinite(events: ak.Array, branches) -> dict[str, int]:
    """``{branch: n}``: values of each NanoAOD ``branch`` that are NaN, inf or outside the physical range
    (:mod:`crema.physical`), counted on the chunk as read, before any correction.

    Every branch gets an entry (0 when clean), so the count shows what was checked; integer
    branches are 0 without being read. Plain dicts of ints: coffea's accumulate adds them over chunks.
    """
    counts = {}
    top = set(ak.fields(events))
    collections: dict[str, FlatFields | None] = {}
    for branch in sorted(branches):
        collection, _, name = branch.partition("_")
        if name and collection in top:  # a jagged collection's field: flat, its type known before reading
            if collection not in collections:
                objects = events[collection]
                collections[collection] = FlatFields(objects) if objects.ndim == 2 else None
            flat = collections[collection]
            dtype = flat.dtype(name) if flat is not None and name in flat.fields else None
            if dtype is not None:
                counts[branch] = count_unphysical(flat[name], name) if dtype.kind in "fc" else 0
                continue
        values = branch_values(events, branch)
        if values is None:  # not a NanoEvents field (a counter): nothing to check
            continue
        if "float" not in str(ak.type(values)):  # ints and booleans cannot be NaN; skip the read
            counts[branch] = 0
            continue
        counts[branch] = count_unphysical(values, branch.partition("_")[2] or branch)
    return counts


def sum_of_weights(events: ak.Array, sample: SampleInfo) -> float:
    """The chunk's sum of genWeight over events where it is finite (a NaN would void the
    normalisation of the whole dataset; such events fail ``finite weight``); the event count for data."""
    if not sample.is_mc:
        return float(len(events))
    gen = np.asarray(ak.to_numpy(events.genWeight), dtype=np.float64)
    return float(gen.sum(where=np.isfinite(gen)))


def finite_weights(nominal: np.ndarray, variations=()) -> np.ndarray:
    """Events whose nominal weight and every weight variation are finite (the ``finite weight`` step)."""
    ok = np.isfinite(nominal)
    for w in variations:
        ok &= np.isfinite(w)
    return ok


def add_input_steps(selection: PackedSelection, cuts: list[str], met: ak.Array,
                    weight_ok: np.ndarray) -> list[str]:
    """Add the ``finite MET`` and ``finite weight`` steps to ``selection``; returns them followed by ``cuts``.

    ``finite MET``: MET pt and phi are :func:`~crema.physical.physical` (after the jet corrections
    moved them); ``finite weight``: see :func:`finite_weights`. They open every channel's cutflow;
    an event failing either is counted there and filled nowhere, so no NaN reaches a histogram.
    """
    selection.add(FINITE_MET, np.asarray(ak.to_numpy(physical_kinematics(met, ("pt", "phi"))), dtype=bool))
    selection.add(FINITE_WEIGHT, np.asarray(weight_ok, dtype=bool))
    return [*INPUT_STEPS, *cuts]


def count_undefined(value, names, selected: int) -> dict[str, int]:
    """``{observable: n}``: selected events (``selected`` of them) where ``value(name)`` is not finite."""
    return {name: int(selected - np.count_nonzero(np.isfinite(value(name)))) for name in names}


def fill_histograms(hists: dict, value, dataset: str, channel: str, systematic: str, weight,
                    regions: dict) -> None:
    """Fill every booked observable per region; ``value(name)`` gives float64 per event (NaN: not filled)."""
    for name, h in hists.items():
        values = value(name)
        valid = np.isfinite(values)
        for region, in_region in regions.items():
            m = valid & in_region
            if m.any():
                h.fill(dataset=dataset, channel=channel, region=region, systematic=systematic,
                       weight=weight[m], **{name: values[m]})


def fill_cutflow(out: dict, dataset: str, channel: str, selection, cuts: list[str], weight) -> None:
    """Record the cumulative event counts and weighted sums of ``cuts`` (a coffea PackedSelection).

    Weighted sums skip non-finite weights (those events fail ``finite weight``), so no step is NaN.
    """
    finite = np.isfinite(weight)
    counts = {"all events": len(weight)}
    sums = {"all events": float(weight.sum(where=finite))}
    for i, cut in enumerate(cuts):
        mask = selection.all(*cuts[: i + 1])
        counts[cut] = int(mask.sum())
        sums[cut] = float(weight.sum(where=mask & finite))
    out["cutflow"].setdefault(dataset, {})[channel] = counts
    out["cutflow_weighted"].setdefault(dataset, {})[channel] = sums


def normalisation(info: SampleInfo, sumw: float, luminosity_fb: float) -> float:
    """Scale factor to cross section x luminosity: xsec [pb] x 1000 x L [fb^-1] / sum of genWeight."""
    if not info.is_mc:
        return 1.0
    if info.xsec_pb is None:
        raise ConfigError(f"datasets.{info.name}.xsec_pb: a simulated dataset needs a cross section")
    if sumw == 0:
        return 0.0
    return info.xsec_pb * 1000.0 * luminosity_fb / sumw
