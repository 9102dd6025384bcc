"""The ttbar dilepton EFT processor: select -> weights -> per-event EFT coefficients -> fill.

Events with ``LHEReweightingWeight`` get per-event quadratic coefficients in the Wilson
coefficients (:func:`crema.histograms.eft.fit_coefficients`, one pseudo-inverse per dataset);
other datasets are SM only.  Fills :class:`~crema.histograms.eft.EFTHist` of the 18 ML4EFT
features and of pt_ll x eta_l1 with a systematic axis, the cutflow per term, and the feature
table (features, coefficients, weight, event) for training.  See docs/eft.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import awkward as ak
import hist
import numpy as np
import uproot
from coffea import processor
from coffea.analysis_tools import PackedSelection, Weights

from crema.corrections.btag import working_point
from crema.corrections.era import EraConfig
from crema.histograms.eft import EFTHist, EFTPoints, design_matrix, fit_coefficients, n_terms, term_names
from crema.processors.common import SampleInfo, book, load_histogram_specs, normalisation, start_chunk
from crema.schema import ConfigError, from_dict, load_yaml
from crema.selections import hhbbww as sel
from crema.selections.config import load_selection

NOMINAL = "nominal"
CHANNELS = ("ee", "emu", "mumu")
REGIONS = ("inclusive",)
SELECTION_DIR = Path(__file__).resolve().parent.parent / "configs" / "selection"
FEATURES = (
    "pt_l1", "pt_l2", "pt_l_leading", "pt_l_trailing", "eta_l1", "eta_l2", "eta_l_leading", "eta_l_trailing",
    "pt_ll", "m_ll", "DeltaPhi_ll", "DeltaEta_ll", "pt_b_leading", "pt_b_trailing", "eta_b_leading",
    "eta_b_trailing", "pt_bb", "m_bb",
)
HIST_2D = ("pt_ll", "eta_l1")
PARTON_FEATURES = ("m_tt", "y_tt", "cos_theta_star")  # from the GenPart tops, where present
GENPART_BRANCHES = ("nGenPart", "GenPart_pdgId", "GenPart_pt", "GenPart_eta", "GenPart_phi", "GenPart_mass")


@dataclass(frozen=True)
class TTbarEFTCuts:
    """Event selection of the dilepton channel (``src/crema/configs/selection/ttbar_eft.yaml``)."""

    objects: str = "hhbbww_run3"
    leading_lepton_pt_min: float = 25.0
    subleading_lepton_pt_min: float = 15.0
    m_ll_min: float = 20.0
    z_mass: float = 91.2
    z_window: float = 15.0
    min_jets: int = 2
    min_btags: int = 1
    met_min_same_flavour: float = 40.0


def load_cuts(name_or_path: str) -> TTbarEFTCuts:
    """Cuts by builtin name (``ttbar_eft``) or YAML path."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = SELECTION_DIR / f"{name_or_path}.yaml"
    try:
        return from_dict(TTbarEFTCuts, load_yaml(path), str(path))
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


@dataclass(frozen=True)
class TTbarEFTOptions:
    """``processor.options`` of a ``ttbar_eft`` run config.

    ``wc_names``: the Wilson coefficients of the histograms (EFT datasets must carry exactly these);
    ``benchmarks``: points with exact sums of squared weights (the SM is always added);
    ``weights``/``systematics``: the era's event weights and their up/down variations on the
    systematic axis; ``features``: keep the per-event feature table for training;
    ``eft_model``: an ML4EFT model folder (``crema eft-train``) whose learned observables NN_i(x)
    are filled as ``nn_<wc>`` (binned in the SM quantiles stored with the model).
    """

    selection: str = "ttbar_eft"
    histograms: str = "ttbar_eft"
    met: str = "PuppiMET"
    wc_names: list[str] = field(default_factory=lambda: ["ctGRe", "ctj8"])
    benchmarks: list[list[float]] = field(default_factory=list)
    weights: bool = True
    systematics: bool = True
    features: bool = True
    eft_model: str | None = None

    def validate(self) -> None:
        if not self.wc_names or len(set(self.wc_names)) != len(self.wc_names):
            raise ConfigError("wc_names: need unique, non-empty names")
        for k, p in enumerate(self.benchmarks):
            if len(p) != len(self.wc_names):
                raise ConfigError(f"benchmarks[{k}]: need {len(self.wc_names)} values")


def _p4(obj):
    pt, eta, phi, mass = (np.asarray(ak.to_numpy(obj[f]), dtype=np.float64) for f in ("pt", "eta", "phi", "mass"))
    return pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta), np.sqrt((pt * np.cosh(eta)) ** 2 + mass**2)


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    """pt and mass of the sum of two objects."""
    px, py, pz, e = (x + y for x, y in zip(_p4(a), _p4(b)))
    return np.hypot(px, py), np.sqrt(np.maximum(e * e - px * px - py * py - pz * pz, 0.0))


def _sm_only(n: int, n_wc: int) -> np.ndarray:
    """Coefficients of events without EFT dependence: 1 for the SM term, 0 for the others."""
    out = np.zeros((n, n_terms(n_wc)))
    out[:, 0] = 1.0
    return out


def features(leptons: ak.Array, jets: ak.Array, score: str) -> dict[str, np.ndarray]:
    """The 18 ML4EFT features of events with exactly two leptons and >= 2 jets.

    l1 / l2: the positive / negative lepton; b-jets: the two jets of highest ``score``.
    """
    f = lambda x: np.asarray(ak.to_numpy(x), dtype=np.float64)  # noqa: E731
    pos = leptons[leptons.charge > 0][:, 0]
    neg = leptons[leptons.charge < 0][:, 0]
    lead, trail = leptons[:, 0], leptons[:, 1]  # selection objects are pt ordered
    order = ak.argsort(jets[score], axis=1, ascending=False)
    two = jets[order][:, :2]
    two = two[ak.argsort(two.pt, axis=1, ascending=False)]
    b1, b2 = two[:, 0], two[:, 1]
    pt_ll, m_ll = _pair(pos, neg)
    pt_bb, m_bb = _pair(b1, b2)
    dphi = np.abs(np.mod(f(pos.phi) - f(neg.phi) + np.pi, 2 * np.pi) - np.pi)
    return {
        "pt_l1": f(pos.pt), "pt_l2": f(neg.pt), "pt_l_leading": f(lead.pt), "pt_l_trailing": f(trail.pt),
        "eta_l1": f(pos.eta), "eta_l2": f(neg.eta), "eta_l_leading": f(lead.eta), "eta_l_trailing": f(trail.eta),
        "pt_ll": pt_ll, "m_ll": m_ll, "DeltaPhi_ll": dphi, "DeltaEta_ll": np.abs(f(pos.eta) - f(neg.eta)),
        "pt_b_leading": f(b1.pt), "pt_b_trailing": f(b2.pt), "eta_b_leading": f(b1.eta), "eta_b_trailing": f(b2.eta),
        "pt_bb": pt_bb, "m_bb": m_bb,
    }


def parton_features(genpart: ak.Array) -> dict[str, np.ndarray]:
    """m_tt, y_tt and cos theta* (top angle to the +z beam in the t tbar rest frame) of the GenPart
    top pair (the first top and antitop of each event; NaN where absent)."""
    n = len(genpart)
    out = {k: np.full(n, np.nan) for k in PARTON_FEATURES}
    top = ak.firsts(genpart[genpart.pdgId == 6])
    anti = ak.firsts(genpart[genpart.pdgId == -6])
    ok = ak.to_numpy(~ak.is_none(top) & ~ak.is_none(anti))
    if not ok.any():
        return out
    t = np.stack(_p4(top[ok]))
    a = np.stack(_p4(anti[ok]))
    tot = t + a
    m = np.sqrt(np.maximum(tot[3] ** 2 - np.sum(tot[:3] ** 2, axis=0), 0.0))
    beta = tot[:3] / tot[3]
    b2 = np.sum(beta**2, axis=0)
    gamma = 1.0 / np.sqrt(1.0 - b2)
    bp = np.sum(beta * t[:3], axis=0)
    coeff = np.where(b2 > 0, (gamma - 1.0) * bp / np.where(b2 > 0, b2, 1.0), 0.0) - gamma * t[3]
    p_star = t[:3] + coeff * beta  # the top momentum in the t tbar rest frame
    out["m_tt"][ok] = m
    out["y_tt"][ok] = 0.5 * np.log((tot[3] + tot[2]) / (tot[3] - tot[2]))
    out["cos_theta_star"][ok] = p_star[2] / np.linalg.norm(p_star, axis=0)
    return out


class TTbarEFTProcessor(processor.ProcessorABC):
    """Dilepton ttbar with EFT histograms (see docs/eft.md)."""

    def __init__(self, options: TTbarEFTOptions, samples: dict[str, SampleInfo], era: EraConfig,
                 luminosity_fb: float, eft_points: dict[str, str | None] | None = None) -> None:
        self.options = options
        self.samples = samples
        self.luminosity_fb = luminosity_fb
        self.cuts = load_cuts(options.selection)
        self.selection = load_selection(self.cuts.objects)
        self.btag_threshold = working_point(era.path("btag_file"), self.selection.btag.tagger,
                                            self.selection.btag.working_point)
        self.hist_specs = load_histogram_specs(options.histograms)
        unknown = sorted(set(self.hist_specs) - set(FEATURES))
        if unknown:
            raise ConfigError(f"histograms.{unknown[0]}: unknown observable (known: {', '.join(FEATURES)})")
        self.wc_names = tuple(options.wc_names)
        sm = [0.0] * len(self.wc_names)
        self.benchmarks = [sm, *(list(map(float, b)) for b in options.benchmarks if list(b) != sm)]
        # points given in the run config (for files without EFTReweightPoints), validated now
        self.config_points = {ds: EFTPoints.from_json(text, f"datasets.{ds}.eft_points")
                              for ds, text in (eft_points or {}).items() if text}
        self.event_weights = None
        if options.weights:
            from crema.corrections.weights import EventWeights

            self.event_weights = EventWeights(era, self.selection.btag)
        self.systematics = [NOMINAL, *(self.event_weights.variations if self.event_weights and options.systematics
                                       else [])]
        self.eft_model = None
        if options.eft_model:
            from crema.models.ml4eft import ML4EFTModel

            self.eft_model = ML4EFTModel(options.eft_model)
            unknown = sorted(set(self.eft_model.features) - set(FEATURES) - set(PARTON_FEATURES))
            if unknown:
                raise ConfigError(f"processor.options.eft_model: {options.eft_model} needs feature {unknown[0]!r}, "
                                  "which ttbar_eft does not compute")
            if list(self.eft_model.wc_names) != list(self.wc_names):
                raise ConfigError(f"processor.options.eft_model: {options.eft_model} is trained for "
                                  f"{self.eft_model.wc_names}, the processor's wc_names are {list(self.wc_names)}")
        self._points_cache: dict[str, EFTPoints] = {}
        self._pinv_cache: dict[tuple[str, str], np.ndarray] = {}

    # ------------------------------------------------------------------ booking
    def _eft_hist(self, *axes) -> EFTHist:
        return EFTHist(hist.axis.StrCategory(list(CHANNELS), name="channel"),
                       hist.axis.StrCategory(list(REGIONS), name="region"),
                       hist.axis.StrCategory(self.systematics, name="systematic"), *axes,
                       wc_names=self.wc_names, benchmarks=self.benchmarks)

    def book_dataset(self) -> dict[str, EFTHist]:
        """Empty EFT histograms of one dataset: every feature and pt_ll x eta_l1."""
        axes = {n: hist.axis.Regular(s.bins, s.start, s.stop, name=n, label=s.label or n)
                for n, s in self.hist_specs.items()}
        out = {n: self._eft_hist(ax) for n, ax in axes.items()}
        if all(n in axes for n in HIST_2D):
            out["_".join(HIST_2D)] = self._eft_hist(*(axes[n] for n in HIST_2D))
        if self.eft_model is not None:
            for wc, edges in self.eft_model.quantile_edges.items():
                out[f"nn_{wc}"] = self._eft_hist(hist.axis.Variable(edges, name=f"nn_{wc}", label=f"NN {wc}"))
        return out

    def required_branches(self, sample: SampleInfo) -> dict[str, str]:
        """Branches this processor reads for ``sample``, each mapped to what needs it."""
        needs = sel.required_branches(self.selection, self.options.met)
        if sample.is_mc:
            needs["genWeight"] = "event weights (simulated datasets)"
        if self.options.features:
            needs["event"] = "the feature table (processor.options.features)"
        if self.eft_model is not None and set(self.eft_model.features) & set(PARTON_FEATURES):
            needs.update(dict.fromkeys(GENPART_BRANCHES, "parton features of processor.options.eft_model"))
        if self.event_weights is not None and sample.is_mc:
            needs.update(self.event_weights.required_branches())
        return needs

    def optional_branches(self, sample: SampleInfo) -> dict[str, str]:
        """Branches read when a file has them -> what is left out without them (a start-up notice)."""
        if not sample.is_mc:
            return {}
        return dict.fromkeys(GENPART_BRANCHES, f"the parton-level features ({', '.join(PARTON_FEATURES)})")

    def empty_output(self) -> dict[str, Any]:
        """The output of a run over no events."""
        return {"eft_histograms": {}, "eft_cutflow": {}, "features": {}, "sumw": {}, "nevents": {},
                "cutflow": {}, "cutflow_weighted": {}, "processed": {}}

    # ------------------------------------------------------------------ steps
    def points_for(self, dataset: str, filename: str) -> EFTPoints:
        """The reweight points of a file: its ``EFTReweightPoints``, else the dataset's ``eft_points``."""
        if dataset in self.config_points:
            return self.config_points[dataset]
        if filename not in self._points_cache:
            with uproot.open(filename) as f:
                if "EFTReweightPoints" not in f:
                    raise ConfigError(f"{filename}: has LHEReweightingWeight but no EFTReweightPoints; give the "
                                      f"points as datasets.{dataset}.eft_points (JSON)")
                self._points_cache[filename] = EFTPoints.from_json(str(f["EFTReweightPoints"]),
                                                                   f"{filename}: EFTReweightPoints")
        return self._points_cache[filename]

    def coefficients(self, events: ak.Array, dataset: str) -> np.ndarray:
        """Per-event coefficients (N, n_terms) in this processor's WC order (SM only without weights)."""
        n = len(events)
        if "LHEReweightingWeight" not in events.fields:
            return _sm_only(n, len(self.wc_names))
        points = self.points_for(dataset, events.metadata["filename"])
        if sorted(points.wc_names) != sorted(self.wc_names):
            raise ConfigError(f"dataset {dataset}: reweight points are in {points.wc_names}, the processor's "
                              f"wc_names are {list(self.wc_names)}")
        order = [points.wc_names.index(w) for w in self.wc_names]
        points = EFTPoints(list(self.wc_names), [[p[i] for i in order] for p in points.points])
        counts = ak.to_numpy(ak.num(events.LHEReweightingWeight, axis=1))
        if n and not np.all(counts == len(points.points)):
            raise ConfigError(f"{events.metadata['filename']}: LHEReweightingWeight has {counts.min()}-{counts.max()} "
                              f"entries per event, EFTReweightPoints {len(points.points)} points")
        w = ak.to_numpy(ak.flatten(events.LHEReweightingWeight)).reshape(n, len(points.points))
        key = (dataset, json.dumps(points.points))
        if key not in self._pinv_cache:  # one pseudo-inverse (and condition check) per dataset and point set
            self._pinv_cache[key] = design_matrix(points, dataset)
        return fit_coefficients(w, points, dataset, self._pinv_cache[key])

    def event_selection(self, objects: sel.Objects, met: np.ndarray):
        """Per-event channel and the cutflow (a PackedSelection)."""
        c = self.cuts
        leps = objects.leptons
        two = ak.num(leps, axis=1) == 2
        pad = ak.pad_none(leps, 2, axis=1)
        l1, l2 = pad[:, 0], pad[:, 1]
        nf = lambda x: np.asarray(ak.to_numpy(ak.fill_none(x, False)), dtype=bool)  # noqa: E731
        flav = ak.fill_none(abs(l1.pdgId) + abs(l2.pdgId), 0)
        same = nf((flav == 22) | (flav == 26))
        _, m_ll = _pair(ak.fill_none(l1, {"pt": 0.0, "eta": 0.0, "phi": 0.0, "mass": 0.0}),
                        ak.fill_none(l2, {"pt": 0.0, "eta": 0.0, "phi": 0.0, "mass": 0.0}))
        s = PackedSelection()
        s.add("2 tight leptons", nf(two & l1.tight & l2.tight))
        s.add("opposite sign", nf(l1.charge * l2.charge < 0))
        s.add(f"lepton pT > {c.leading_lepton_pt_min:g}/{c.subleading_lepton_pt_min:g}",
              nf((l1.pt > c.leading_lepton_pt_min) & (l2.pt > c.subleading_lepton_pt_min)))
        s.add(f"m_ll > {c.m_ll_min:g}", m_ll > c.m_ll_min)
        s.add("Z veto (same flavour)", ~same | (np.abs(m_ll - c.z_mass) > c.z_window))
        s.add(f">= {c.min_jets} jets", ak.to_numpy(ak.num(objects.jets, axis=1) >= c.min_jets))
        s.add(f">= {c.min_btags} b-tags", ak.to_numpy(ak.num(objects.bjets, axis=1) >= c.min_btags))
        s.add(f"MET > {c.met_min_same_flavour:g} (same flavour)", ~same | (met > c.met_min_same_flavour))
        channel = np.where(nf(flav == 22), "ee", np.where(nf(flav == 26), "mumu", "emu"))
        return s, list(s.names), channel

    def process(self, events: ak.Array) -> dict[str, Any]:
        out = self.empty_output()
        dataset, sample, n = start_chunk(events, self.samples, out)
        coef = self.coefficients(events, dataset) if sample.is_mc else _sm_only(n, len(self.wc_names))
        objects = sel.select_objects(events, self.selection, self.btag_threshold, self.options.met)
        weights = self.weights(events, sample, objects)
        out["sumw"][dataset] = float(np.sum(weights.partial_weight(include=["genWeight"]))) if sample.is_mc else float(n)
        selection, cuts, channel = self.event_selection(objects, np.asarray(ak.to_numpy(objects.met.pt), np.float64))
        self.cutflow(out, dataset, selection, cuts, channel, weights.weight(), coef)
        mask = selection.all(*cuts)
        chosen = objects[mask]
        feats = features(chosen.leptons, chosen.jets, self.selection.btag.score)
        if "GenPart" in events.fields:
            feats.update(parton_features(events.GenPart[mask]))
        if self.eft_model is not None:
            nn_terms = self.eft_model.term_values(feats)
            feats.update({f"nn_{w}": nn_terms[:, i] for i, w in enumerate(self.wc_names)})
        out["eft_histograms"][dataset] = self.fill(feats, coef[mask], channel[mask], weights, mask)
        if self.options.features:
            key = f"{events.metadata['filename']}:{events.metadata['entrystart']:012d}"
            table = {**{k: v for k, v in feats.items() if not k.startswith("nn_")}, "weight": weights.weight()[mask],
                     "event": np.asarray(ak.to_numpy(events.event[mask])), "channel": channel[mask].astype("U4")}
            table.update({f"coef_{t}": coef[mask][:, i] for i, t in enumerate(term_names(self.wc_names))})
            out["features"][dataset] = [(key, table)]
        return out

    def weights(self, events: ak.Array, sample: SampleInfo, objects: sel.Objects) -> Weights:
        """genWeight and the era's scale factors (with up/down variations) for simulation; 1 for data."""
        weights = Weights(len(events), storeIndividual=True)
        if sample.is_mc:
            weights.add("genWeight", np.asarray(ak.to_numpy(events.genWeight), dtype=np.float64))
            if self.event_weights is not None:
                self.event_weights.add(weights, events, objects.leptons, objects.jets)
        return weights

    def cutflow(self, out, dataset, selection, cuts, channel, weight, coef) -> None:
        """Events, weighted sums and per-term yields after each cut, per channel ("all events": the whole chunk)."""
        flows = {}
        for ch in CHANNELS:
            counts, sums, flow = {"all events": len(weight)}, {"all events": float(weight.sum())}, \
                {"all events": weight @ coef}
            for i, cut in enumerate(cuts):
                m = selection.all(*cuts[: i + 1]) & (channel == ch)
                counts[cut], sums[cut], flow[cut] = int(m.sum()), float(weight[m].sum()), weight[m] @ coef[m]
            out["cutflow"].setdefault(dataset, {})[ch] = counts
            out["cutflow_weighted"].setdefault(dataset, {})[ch] = sums
            flows[ch] = flow
        out["eft_cutflow"][dataset] = flows

    def fill(self, feats, coef, channel, weights: Weights, mask) -> dict[str, EFTHist]:
        """EFT histograms of one chunk: every observable, every systematic (the weight variations)."""
        hists = self.book_dataset()
        for syst in self.systematics:
            w = weights.weight(None if syst == NOMINAL else syst)[mask]
            for h in hists.values():
                h.fill(coef, weight=w, channel=channel, region="inclusive", systematic=syst,
                       **{a.name: feats[a.name] for a in h.axes[3:]})
        return hists

    def postprocess(self, accumulator: dict[str, Any]) -> dict[str, Any]:
        """Scale each simulated dataset to xsec x luminosity / sum of genWeight; SM histograms for plots."""
        out = processor.accumulate([self.empty_output(), accumulator or {}])
        scales = {ds: normalisation(self.samples[ds], sumw, self.luminosity_fb) for ds, sumw in out["sumw"].items()}
        for ds, hists in out["eft_histograms"].items():
            for h in hists.values():
                h.scale(scales[ds])
        out["eft_cutflow_yield"] = {ds: {ch: {cut: v * scales[ds] for cut, v in cuts.items()} for ch, cuts in chans.items()}
                                    for ds, chans in out["eft_cutflow"].items()}
        out["cutflow_yield"] = {ds: {ch: {cut: w * scales[ds] for cut, w in cuts.items()} for ch, cuts in chans.items()}
                                for ds, chans in out["cutflow_weighted"].items()}
        out["scale"] = scales
        out["luminosity_fb"] = self.luminosity_fb
        out["wc_names"] = list(self.wc_names)
        out["histograms"] = self.sm_histograms(out["eft_histograms"])
        return out

    def sm_histograms(self, eft_hists: dict[str, dict[str, EFTHist]]) -> dict[str, hist.Hist]:
        """Plain 1D histograms at the SM (dataset/channel/region/systematic axes) for crema's ROOT file and plots."""
        booked = book(self.hist_specs, list(self.samples), list(CHANNELS), list(REGIONS), self.systematics)
        for ds, hists in eft_hists.items():
            for name, h in booked.items():
                sm = hists[name].eval([0.0] * len(self.wc_names)).view(flow=True)
                view = h.view(flow=True)
                inner = (h.axes["dataset"].index(ds), slice(len(CHANNELS)), slice(len(REGIONS)),
                         slice(len(self.systematics)), slice(None))
                view.value[inner] = sm.value[inner[1:]]
                view.variance[inner] = sm.variance[inner[1:]]
        return booked
