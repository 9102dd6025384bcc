"""Event weights from correctionlib scale factors, added to a coffea ``Weights`` with up/down variations.

* ``pileup``: the era's pileup correction in ``Pileup_nTrueInt`` (nominal, up, down);
* ``muon_<part>`` (e.g. ``muon_id``, ``muon_iso``) and ``electron_id``: product over the selected
  muons / electrons of the scale factor, its up and down values (the names each file uses are set in
  the era config);
* ``btag_bc`` and ``btag_light``: fixed-working-point b-tagging weight, b/c and light SFs varied
  separately (as BTV recommends); only when the era has a ``btag_sf`` section.

Real inputs are clipped into each correction's bin range rather than failing on a muon below the
SF's 15 GeV edge or an electron beyond |eta| 2.5; a non-finite input gives a NaN factor
(:func:`crema.corrections.files.evaluate`), which makes the event fail the processors'
``finite weight`` step instead of crashing the run or weighting a histogram with NaN. Data events get unit weights under the same names,
so the list of variations does not depend on the dataset.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
from coffea.analysis_tools import Weights

from crema.corrections import files
from crema.corrections.btag import fixed_wp_jet_factor, working_point
from crema.corrections.era import VALUE_INPUTS, EraConfig, resolve_correction_file
from crema.schema import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BTagChoice:
    """Which tagger, score branch and working point the b-tag weight is for (as in the selection)."""

    tagger: str = "particleNet"
    score: str = "btagPNetB"
    working_point: str = "M"


class _Correction:
    """One correction of one file: evaluates by input name, clipping real inputs into the bin range.

    Holds only names and ranges; the compiled correction comes from the per-process cache.
    """

    def __init__(self, file: str, name: str, fixed: dict[str, Any] | None = None) -> None:
        self.path: Path = resolve_correction_file(file)
        self.name = name
        info = files.summary(self.path).corrections[name]
        self.inputs = info.input_names
        self.types = dict(info.inputs)
        self.fixed = dict(fixed or {})
        self.ranges = files.input_ranges(info, {k: str(v) for k, v in self.fixed.items()})

    def __call__(self, value: str, **arrays: np.ndarray) -> np.ndarray:
        """The correction for ``value`` (nominal/up/down name); NaN where a real input is not finite."""
        args = []
        for name in self.inputs:
            if name in VALUE_INPUTS:
                args.append(value)
            elif name in self.fixed:
                args.append(self.fixed[name])
            elif self.types[name] == "int":
                args.append(np.asarray(arrays[name], dtype=np.int64))
            else:
                args.append(np.asarray(arrays[name], dtype=np.float64))
        if any(isinstance(a, np.ndarray) and a.size == 0 for a in args):
            return np.ones(0)
        return files.evaluate(files.correction_set(self.path)[self.name], args,
                              [self.ranges.get(name) for name in self.inputs])


class EventWeights:
    """Pileup, lepton and (when configured) b-tagging weights of an era.

    Picklable and cheap to construct once its era is loaded; correctionlib files are compiled lazily
    once per process. ``btag`` names the tagger, score and working point (the selection's ``btag``
    block fits); its threshold is read from the era's ``btag_file``.
    """

    def __init__(self, era: EraConfig, btag: Any | None = None) -> None:
        for section in ("pileup", "muon", "electron", "btag_sf"):
            cfg = getattr(era, section)
            try:
                if cfg is not None:
                    cfg.validate()  # done already if the era came from load_era; cheap then (cached)
            except ConfigError as err:
                raise ConfigError(f"{section}.{err}") from None
        self.era_name = era.name
        self.pileup = _Correction(era.pileup.file, era.pileup.correction) if era.pileup else None
        self.pileup_values = era.pileup.values if era.pileup else None
        self.muon: dict[str, _Correction] = {}
        self.muon_values = era.muon.values if era.muon else None
        if era.muon:
            year = {"year": era.muon.year} if era.muon.year is not None else {}
            self.muon = {part: _Correction(era.muon.file, name, year) for part, name in era.muon.corrections.items()}
        self.electron = None
        if era.electron:
            e = era.electron
            fixed = {"year": e.year} if e.year is not None else {}
            fixed.update({k: e.working_point for k in ("WorkingPoint", "working_point")
                          if k in files.summary(resolve_correction_file(e.file)).corrections[e.correction].input_names})
            self.electron = _Correction(e.file, e.correction, fixed)
            self.electron_values = e.values
            self.supercluster_eta = e.supercluster_eta
        self.btag_choice = BTagChoice(btag.tagger, btag.score, btag.working_point) if btag is not None else BTagChoice()
        self.btag_sf = None
        if era.btag_sf is None:
            log.warning("era %s: no b-tag scale-factor correction configured (btag_sf), so no b-tag weight is added",
                        era.name)
        else:
            b = era.btag_sf
            wp = {"working_point": self.btag_choice.working_point}
            self.btag_sf = {"heavy": _Correction(b.file, b.heavy, wp), "light": _Correction(b.file, b.light, wp)}
            self.btag_efficiency = _Correction(b.efficiency_file, b.efficiency)
            self.btag_values = b.values
            self.btag_threshold = working_point(era.path("btag_file"), self.btag_choice.tagger,
                                                self.btag_choice.working_point)

    # ------------------------------------------------------------------ public API
    @property
    def names(self) -> list[str]:
        """The weights :meth:`add` adds, in order."""
        out = ["pileup"] if self.pileup else []
        out += [f"muon_{part}" for part in self.muon]
        out += ["electron_id"] if self.electron else []
        out += ["btag_bc", "btag_light"] if self.btag_sf else []
        return out

    def required_branches(self) -> dict[str, str]:
        """Branches these weights read in simulation beyond the selected objects' kinematics -> what needs them."""
        needs = {}
        if self.pileup:
            needs["Pileup_nTrueInt"] = "pileup weight (the era's pileup correction)"
        if self.btag_sf:
            needs["Jet_hadronFlavour"] = "b-tag weights (the era's btag_sf)"
        return needs

    @property
    def variations(self) -> list[str]:
        """Weight variations as coffea ``Weights`` names them: ``<name>Up``, ``<name>Down``."""
        return [f"{n}{d}" for n in self.names for d in ("Up", "Down")]

    def add(self, weights: Weights, events: ak.Array, leptons: ak.Array, jets: ak.Array) -> None:
        """Add every weight of :attr:`names` to ``weights`` with its up and down variation.

        ``leptons``: selected leptons (pt, eta, pdgId; electrons may carry deltaEtaSC); ``jets``:
        selected jets (pt, eta, hadronFlavour and the b-tag score). Data get unit weights.
        """
        for name, (nominal, up, down) in self.factors(events, leptons, jets).items():
            weights.add(name, nominal, weightUp=up, weightDown=down)

    def factors(self, events: ak.Array, leptons: ak.Array, jets: ak.Array) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """``{name: (nominal, up, down)}`` per-event factors, as :meth:`add` adds them."""
        n = len(events)
        if "genWeight" not in ak.fields(events):
            ones = np.ones(n)
            return {name: (ones, ones, ones) for name in self.names}
        out = {}
        if self.pileup:
            ntrue = np.asarray(ak.to_numpy(events.Pileup.nTrueInt), dtype=np.float64)
            out["pileup"] = tuple(self.pileup(v, NumTrueInteractions=ntrue) for v in self.pileup_values)
        if self.muon or self.electron:
            out.update(self._lepton_factors(leptons))
        if self.btag_sf:
            out.update(self._btag_factors(jets))
        return out

    # ------------------------------------------------------------------ internals
    def _lepton_factors(self, leptons: ak.Array) -> dict[str, tuple[np.ndarray, ...]]:
        counts = ak.to_numpy(ak.num(leptons, axis=1))
        flat = lambda a: np.asarray(ak.to_numpy(ak.flatten(a, axis=1)), dtype=np.float64)  # noqa: E731
        pt, eta = flat(leptons["pt"]), flat(leptons["eta"])
        flavour = np.abs(np.asarray(ak.to_numpy(ak.flatten(leptons.pdgId, axis=1))))
        out = {}

        def per_event(mask: np.ndarray, sf: np.ndarray) -> np.ndarray:
            full = np.ones(len(pt))
            full[mask] = sf
            return np.asarray(ak.to_numpy(ak.prod(ak.unflatten(full, counts), axis=1)), dtype=np.float64)

        muons = flavour == 13
        for part, corr in self.muon.items():
            args = {"pt": pt[muons], "abseta": np.abs(eta[muons]), "eta": eta[muons]}
            out[f"muon_{part}"] = tuple(per_event(muons, corr(v, **args)) for v in self.muon_values)
        if self.electron:
            electrons = flavour == 11
            e_eta = eta
            if self.supercluster_eta and "deltaEtaSC" in ak.fields(leptons):
                e_eta = eta + flat(leptons.deltaEtaSC)  # the electron SFs are binned in supercluster eta
            args = {"pt": pt[electrons], "eta": e_eta[electrons], "abseta": np.abs(e_eta[electrons])}
            out["electron_id"] = tuple(per_event(electrons, self.electron(v, **args)) for v in self.electron_values)
        return out

    def _btag_factors(self, jets: ak.Array) -> dict[str, tuple[np.ndarray, ...]]:
        counts = ak.to_numpy(ak.num(jets, axis=1))
        flat = lambda a: np.asarray(ak.to_numpy(ak.flatten(a, axis=1)))  # noqa: E731
        pt, abseta = flat(jets["pt"]).astype(np.float64), np.abs(flat(jets["eta"]).astype(np.float64))
        flavour = flat(jets.hadronFlavour).astype(np.int64)
        tagged = flat(jets[self.btag_choice.score]) > self.btag_threshold
        heavy = flavour >= 4
        eff = self.btag_efficiency("", flavor=flavour, abseta=abseta, pt=pt) if len(pt) else np.ones(0)

        def sf(kind: str, value: str) -> np.ndarray:
            mask = heavy if kind == "heavy" else ~heavy
            out = np.ones(len(pt))
            if mask.any():
                out[mask] = self.btag_sf[kind](value, flavor=flavour[mask], abseta=abseta[mask], pt=pt[mask])
            return out

        def per_event(factor: np.ndarray, mask: np.ndarray) -> np.ndarray:
            # the weight factorises over jets: each group's weight is the product over its own jets
            factor = np.where(mask, factor, 1.0)
            return np.asarray(ak.to_numpy(ak.prod(ak.unflatten(factor, counts), axis=1)), dtype=np.float64)

        out = {}
        for name, kind, mask in (("btag_bc", "heavy", heavy), ("btag_light", "light", ~heavy)):
            out[name] = tuple(per_event(fixed_wp_jet_factor(tagged, eff, sf(kind, v)), mask) for v in self.btag_values)
        return out
