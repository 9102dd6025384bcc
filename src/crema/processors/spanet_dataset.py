"""SPANet training files from NanoAOD: inputs, gen-matched jet targets, truth regressions, class labels.

:class:`SpanetDataset` is a coffea processor; :func:`write_h5` writes its
(post-processed) output in SPANet's HDF5 layout::

    INPUTS/<sequential>/{MASK, <feature>...}   bool / float32 (N, J)
    INPUTS/<global>/{<feature>..., sumet}      float32 (N,)
    TARGETS/<particle>/<product>               int64 (N,)   jet slot, -1 unmatched
    REGRESSIONS/EVENT/<name>                   float32 (N,) NaN: no value
    CLASSIFICATIONS/EVENT/<name>               int64 (N,)   -1: no class

Inputs hold physical values (SPANet applies ``log_normalize``/``normalize``
itself when training).  Matching rules, truth definitions and the lepton
target are documented in ``docs/spanet.md``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

import awkward as ak
import numpy as np
from coffea import processor

from crema.models.spanet import (
    DEFAULT_TAGS,
    EventFile,
    InputSource,
    builtin_event_file,
    jet_features,
    met_features,
)
from crema.physical import physical_kinematics
from crema.processors.common import count_nonfinite
from crema.selections.config import load_selection
from crema.selections.hhbbww import required_branches, select_objects

__all__ = ["TRUTH", "SpanetDataset", "SpanetDatasetOptions", "match_partons", "write_h5"]

_HARD, _LAST = 8, 13  # GenPart statusFlags bits: fromHardProcess, isLastCopy
_LAYOUT_PREFIXES = ("INPUTS/", "TARGETS/", "REGRESSIONS/", "CLASSIFICATIONS/")


def _flag(gen, bit: int):
    return ((gen.statusFlags >> bit) & 1) == 1


def _tth_partons(gen, mom, grand, hard_quark) -> dict[tuple[str, tuple[str, ...]], Any]:
    """ttH/tt SL: (particle, products) -> mask selecting exactly those partons (in any order)."""
    lep = _flag(gen, _HARD) & _flag(gen, _LAST) & ((abs(gen.pdgId) == 11) | (abs(gen.pdgId) == 13)) & (abs(mom) == 24)
    # the leptonic top has the W's charge: l+ (pdgId < 0) comes from t (pdgId +6)
    lt_pdg = ak.fill_none(ak.firsts(-6 * np.sign(gen.pdgId[lep])), 0)
    b = hard_quark & (abs(gen.pdgId) == 5)
    return {
        ("lt", ("b",)): b & (mom == lt_pdg),
        ("ht", ("b",)): b & (abs(mom) == 6) & (mom != lt_pdg),
        ("ht", ("q1", "q2")): hard_quark & (abs(mom) == 24) & (abs(grand) == 6),
        ("h", ("b1", "b2")): b & (mom == 25),
    }


def _hh_partons(gen, mom, grand, hard_quark) -> dict[tuple[str, tuple[str, ...]], Any]:
    """HH->bbWW SL: H->bb and the hadronic W's quarks."""
    return {
        ("h", ("b1", "b2")): hard_quark & (abs(gen.pdgId) == 5) & (mom == 25),
        ("w", ("q1", "q2")): hard_quark & (abs(mom) == 24) & (grand == 25),
    }


#: Truth recipe per shipped event file: which hard-process partons are the products.
TRUTH: dict[str, Callable] = {"tth_sl": _tth_partons, "hh_sl": _hh_partons}
#: The (particle -> products) each recipe defines.
TRUTH_PRODUCTS: dict[str, dict[str, tuple[str, ...]]] = {
    "tth_sl": {"lt": ("b",), "ht": ("b", "q1", "q2"), "h": ("b1", "b2")},
    "hh_sl": {"h": ("b1", "b2"), "w": ("q1", "q2")},
}
#: Extra lepton targets written besides the event file's jet targets (see docs).
LEPTON_TARGETS = {"tth_sl": ("lt", "l")}


@dataclass(frozen=True)
class SpanetDatasetOptions:
    """``processor.options`` of a ``spanet_dataset`` run config (see :class:`SpanetDataset`).

    ``labels``: dataset -> class of the ``signal`` classification; null labels each dataset by
    its kind in the run config (signal 1, background 0, data -1).
    """

    event_file: str = "tth_sl"
    truth: str | None = None
    labels: dict[str, int] | None = None
    max_jets: int = 12
    selection: str = "hhbbww_run3"
    n_leptons: int = 1
    min_jets: int = 4
    met: Literal["PuppiMET", "MET"] = "PuppiMET"
    tags: dict[str, str | float] | None = None
    match_dr: float = 0.4


def match_partons(jet_eta: np.ndarray, jet_phi: np.ndarray, jet_ok: np.ndarray,
                  parton_eta: np.ndarray, parton_phi: np.ndarray, parton_ok: np.ndarray, dr_max: float = 0.4) -> np.ndarray:
    """``(B, T)`` jet slot matched to each parton, -1 when none or ambiguous.

    Inputs are ``(B, J)`` GenJet directions of the reco jets (``jet_ok``: has a
    GenJet) and ``(B, T)`` parton directions.  A parton matches a jet if
    ΔR(GenJet, parton) < ``dr_max``; a parton within ``dr_max`` of two jets,
    or sharing its jet with another parton, is unmatched (-1).
    """
    deta = parton_eta[:, :, None] - jet_eta[:, None, :]
    dphi = (parton_phi[:, :, None] - jet_phi[:, None, :] + np.pi) % (2 * np.pi) - np.pi
    close = (deta**2 + dphi**2 < dr_max**2) & jet_ok[:, None, :] & parton_ok[:, :, None]
    per_parton = close.sum(axis=2)
    per_jet = close.sum(axis=1)
    slot = np.argmax(close, axis=2)
    shared = np.take_along_axis(per_jet, slot, axis=1) > 1
    return np.where((per_parton == 1) & ~shared, slot, -1).astype(np.int64)


def _padded(values, n: int, fill: float = 0.0, dtype=np.float64) -> np.ndarray:
    return ak.to_numpy(ak.fill_none(ak.pad_none(values, n, axis=1, clip=True), fill)).astype(dtype)


class SpanetDataset(processor.ProcessorABC):
    """NanoAOD -> SPANet training arrays (see the module docstring for the layout).

    Parameters
    ----------
    event_file:
        Shipped event-file name (``tth_sl``, ``hh_sl``) or an :class:`EventFile`
        (then ``truth`` must name the recipe).
    labels:
        ``dataset -> class`` for each classification (e.g. ``{"tth": 1, "tt": 0}``);
        datasets not listed get -1 (no class).
    max_jets:
        Jet slots per event (pt order; more jets are clipped, fewer padded with MASK false).
    selection:
        Selection config (builtin name or path) for leptons and jets.
    n_leptons, min_jets:
        Events are kept with exactly ``n_leptons`` selected leptons and at least ``min_jets`` jets.
    met:
        MET collection (``PuppiMET``).
    tags:
        Tag features -> jet field or constant (default :data:`~crema.models.spanet.DEFAULT_TAGS`).
    match_dr:
        ΔR(GenJet, parton) for a match.
    """

    def __init__(
        self,
        event_file: str | os.PathLike | EventFile = "tth_sl",
        labels: Mapping[str, int] | None = None,
        *,
        truth: str | None = None,
        max_jets: int = 16,
        selection: str = "hhbbww_run3",
        n_leptons: int = 1,
        min_jets: int = 4,
        met: str = "PuppiMET",
        tags: Mapping[str, str | float] | None = None,
        match_dr: float = 0.4,
    ) -> None:
        self.event = builtin_event_file(event_file)
        self.truth = truth or (str(event_file) if isinstance(event_file, str) else None)
        if self.truth not in TRUTH:
            raise ValueError(f"SpanetDataset: no truth recipe {self.truth!r} (known: {', '.join(TRUTH)}); pass truth=")
        known = TRUTH_PRODUCTS[self.truth]
        unknown = [f"{p.name}{list(p.products)}" for p in self.event.particles if known.get(p.name) != p.products]
        if unknown:
            raise ValueError(f"SpanetDataset: truth recipe {self.truth!r} does not define particles {unknown} (it has {known})")
        if len(self.event.sequential) != 1:
            raise ValueError("SpanetDataset: exactly one sequential input (the jets) is supported")
        if max_jets < 1:
            raise ValueError("max_jets must be positive")
        self.labels = dict(labels or {})
        self.max_jets = int(max_jets)
        self.selection = load_selection(selection)
        self.n_leptons, self.min_jets = int(n_leptons), int(min_jets)
        self.met = met
        self.tags = dict(DEFAULT_TAGS if tags is None else tags)
        self.match_dr = float(match_dr)

    @classmethod
    def from_options(cls, options: SpanetDatasetOptions, kinds: Mapping[str, str]) -> SpanetDataset:
        """Build from run-config options; ``kinds`` (dataset -> signal/background/data) gives default labels."""
        labels = options.labels
        if labels is None:
            labels = {name: {"signal": 1, "background": 0}.get(kind, -1) for name, kind in kinds.items()}
        return cls(options.event_file, labels, truth=options.truth, max_jets=options.max_jets,
                   selection=options.selection, n_leptons=options.n_leptons, min_jets=options.min_jets,
                   met=options.met, tags=options.tags, match_dr=options.match_dr)

    def required_branches(self, sample: Any = None) -> dict[str, str]:
        """Branches this processor reads, each mapped to what needs it."""
        needs = required_branches(self.selection, self.met)
        needs[f"{self.met}_sumEt"] = "SPANet MET input (sumet)"
        for tag in self.tags.values():
            if isinstance(tag, str):
                needs[f"Jet_{tag}"] = "SPANet jet tag features"
        for b in ("Jet_genJetIdx", "GenJet_eta", "GenJet_phi", "GenPart_pdgId", "GenPart_statusFlags",
                  "GenPart_genPartIdxMother", "GenPart_status", "GenPart_pt", "GenPart_eta", "GenPart_phi"):
            needs[b] = "SPANet targets and regressions from generator truth"
        return needs

    # -- per chunk ----------------------------------------------------------
    def process(self, events) -> dict:
        """One chunk -> ``{"datasets": {name: [chunk record]}, "processed": {file: entries}, "nonfinite": {branch: n}}``.

        Objects with unphysical kinematics are dropped by the selection; events whose MET is not
        physical are not written (a NaN input would poison training).
        """
        meta = events.metadata
        dataset = meta["dataset"]
        objs = select_objects(events, self.selection, 1.0, self.met)  # (b-tag threshold unused here)
        keep = ak.to_numpy((ak.num(objs.leptons, axis=1) == self.n_leptons) & (ak.num(objs.jets, axis=1) >= self.min_jets)
                           & physical_kinematics(objs.met, ("pt", "phi", "sumEt")))
        ev = events[keep]
        objs = objs[keep]
        jets = objs.jets[ak.argsort(objs.jets.pt, axis=1, ascending=False, stable=True)]
        J = self.max_jets
        arrays: dict[str, np.ndarray] = {"event": ak.to_numpy(ev.event).astype(np.uint64)}
        arrays.update(self._inputs(jets, objs.met))
        arrays.update(self._targets(ev, jets, objs.leptons, J))
        arrays.update(self._regressions(ev))
        for target, names in self.event.classifications.items():
            for name in names:
                arrays[f"CLASSIFICATIONS/{target}/{name}"] = np.full(len(ev), self.labels.get(dataset, -1), dtype=np.int64)
        record = {"file": meta.get("filename", ""), "start": int(meta.get("entrystart", 0)), "arrays": arrays}
        return {"datasets": {dataset: [record]}, "processed": {meta.get("filename", dataset): len(events)},
                "nonfinite": count_nonfinite(events, self.required_branches())}

    def _inputs(self, jets, met) -> dict[str, np.ndarray]:
        J = self.max_jets
        seq = self.event.sequential[0]
        raw = replace(seq, features=tuple((f, "none") for f in seq.feature_names))  # physical values
        fields = {"pt", "eta", "phi", "mass"} | {t for t in self.tags.values() if isinstance(t, str)}
        padded = {f: _padded(jets[f], J) for f in sorted(fields) if f in jets.fields}
        mask = np.arange(J)[None, :] < np.minimum(ak.to_numpy(ak.num(jets, axis=1)), J)[:, None]
        feats = np.where(mask[..., None], jet_features(raw, padded, self.tags), np.float32(0))
        out = {f"INPUTS/{seq.name}/MASK": mask}
        for i, f in enumerate(seq.feature_names):
            out[f"INPUTS/{seq.name}/{f}"] = np.ascontiguousarray(feats[..., i])
        m = {"pt": ak.to_numpy(met.pt), "phi": ak.to_numpy(met.phi), "sumEt": ak.to_numpy(met.sumEt)}
        for g in self.event.globals:
            names = list(g.feature_names) + (["sumet"] if "sumet" not in g.feature_names else [])
            gsrc = InputSource(g.name, False, tuple((f, "none") for f in names))
            vals = met_features(gsrc, m)
            for i, f in enumerate(names):
                out[f"INPUTS/{g.name}/{f}"] = np.ascontiguousarray(vals[:, i])
        return out

    def _targets(self, ev, jets, leptons, J: int) -> dict[str, np.ndarray]:
        gen = ev.GenPart
        mom = ak.fill_none(gen.parent.pdgId, 0)
        grand = ak.fill_none(gen.parent.parent.pdgId, 0)
        hard_quark = _flag(gen, _HARD) & _flag(gen, _LAST) & (abs(gen.pdgId) <= 5)
        recipe = TRUTH[self.truth](gen, mom, grand, hard_quark)
        # partons as (B, T) arrays; a group needs exactly as many partons as products
        slots, eta, phi, ok = [], [], [], []
        wanted = {p.name for p in self.event.particles}
        for (particle, products), mask in recipe.items():
            if particle not in wanted:
                continue
            k = len(products)
            sel = gen[mask]
            exact = ak.to_numpy(ak.num(sel, axis=1) == k)
            sel = sel[ak.argsort(sel.pt, axis=1, ascending=False, stable=True)]
            e, p = _padded(sel.eta, k), _padded(sel.phi, k)
            for i, prod in enumerate(products):
                slots.append((particle, prod))
                eta.append(e[:, i])
                phi.append(p[:, i])
                ok.append(exact)
        gj = jets.matched_gen
        jet_ok = _padded(ak.is_none(gj, axis=1) == False, J, fill=False, dtype=bool)
        jet_eta = _padded(ak.fill_none(gj.eta, 0.0, axis=1), J)
        jet_phi = _padded(ak.fill_none(gj.phi, 0.0, axis=1), J)
        matched = match_partons(jet_eta, jet_phi, jet_ok, np.stack(eta, 1) if eta else np.zeros((len(ev), 0)),
                                np.stack(phi, 1) if phi else np.zeros((len(ev), 0)),
                                np.stack(ok, 1) if ok else np.zeros((len(ev), 0), bool), self.match_dr)
        out = {}
        col = {s: i for i, s in enumerate(slots)}
        for p in self.event.particles:
            idx = np.stack([matched[:, col[(p.name, prod)]] for prod in p.products], axis=1)
            for g in p.groups:  # symmetric products in increasing jet order (unmatched -1 first)
                idx[:, list(g)] = np.sort(idx[:, list(g)], axis=1)
            for i, prod in enumerate(p.products):
                out[f"TARGETS/{p.name}/{prod}"] = np.ascontiguousarray(idx[:, i])
        if self.truth in LEPTON_TARGETS:
            out["TARGETS/{}/{}".format(*LEPTON_TARGETS[self.truth])] = self._lepton_target(gen, mom, leptons)
        return out

    @staticmethod
    def _lepton_target(gen, mom, leptons) -> np.ndarray:
        """0 if the leading selected lepton is the W's lepton (same flavour, ΔR < 0.1), else -1."""
        w_lep = gen[_flag(gen, _HARD) & _flag(gen, _LAST) & ((abs(gen.pdgId) == 11) | (abs(gen.pdgId) == 13)) & (abs(mom) == 24)]
        g = ak.firsts(w_lep)
        r = ak.firsts(leptons)
        dphi = (r.phi - g.phi + np.pi) % (2 * np.pi) - np.pi
        good = (abs(r.pdgId) == abs(g.pdgId)) & ((r.eta - g.eta) ** 2 + dphi**2 < 0.01) & (ak.num(w_lep, axis=1) == 1)
        return np.where(ak.to_numpy(ak.fill_none(good, False)), 0, -1).astype(np.int64)

    def _regressions(self, ev) -> dict[str, np.ndarray]:
        gen = ev.GenPart
        n = len(ev)
        mom = ak.fill_none(gen.parent.pdgId, 0)
        nu = gen[_flag(gen, _HARD) & _flag(gen, _LAST) & (abs(gen.pdgId) >= 12) & (abs(gen.pdgId) <= 16)
                 & (abs(gen.pdgId) % 2 == 0) & (abs(mom) == 24)]
        one = ak.to_numpy(ak.num(nu, axis=1) == 1)
        nu1 = ak.firsts(nu)

        def val(x):
            return np.where(one, ak.to_numpy(ak.fill_none(x, np.nan)), np.nan).astype(np.float32)

        # the top-level hard system: resonances whose mother is an incoming parton (status 21)
        top = gen[(gen.status == 22) & (ak.fill_none(gen.parent.status, 0) == 21)]
        px, py = top.pt * np.cos(top.phi), top.pt * np.sin(top.phi)
        pz = top.pt * np.sinh(top.eta)
        e = np.sqrt(px**2 + py**2 + pz**2 + top.mass**2)
        m2 = ak.sum(e, axis=1) ** 2 - ak.sum(px, axis=1) ** 2 - ak.sum(py, axis=1) ** 2 - ak.sum(pz, axis=1) ** 2
        m2 = ak.to_numpy(m2).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            logm = np.where((ak.to_numpy(ak.num(top, axis=1)) > 0) & (m2 > 0), np.log(np.sqrt(np.maximum(m2, 0))), np.nan)
        values = {
            "neutrino_eta": lambda: val(nu1.eta),
            "neutrino_px": lambda: val(nu1.pt * np.cos(nu1.phi)),
            "neutrino_py": lambda: val(nu1.pt * np.sin(nu1.phi)),
            "neutrino_pz": lambda: val(nu1.pt * np.sinh(nu1.eta)),
            "log_invariant_mass": lambda: logm.astype(np.float32),
        }
        out = {}
        for target, names in self.event.regressions.items():
            for name in names:
                out[f"REGRESSIONS/{target}/{name}"] = values[name]() if name in values else np.full(n, np.nan, np.float32)
        return out

    # -- merge ----------------------------------------------------------------
    def postprocess(self, accumulator: dict) -> dict:
        """Concatenate the chunk records: datasets in name order, each sorted by event number.

        Chunks are first put in (file, entry start) order so the result does not
        depend on the order the executor finished them; a stable sort by event
        number follows.  Returns ``{"arrays": {layout key: array}, "dataset": names,
        "dataset_index": (N,), "event": (N,), "processed": {...}}``.
        """
        datasets = sorted(accumulator.get("datasets", {}))
        parts, ds_index = [], []
        for i, name in enumerate(datasets):
            records = sorted(accumulator["datasets"][name], key=lambda r: (r["file"], r["start"]))
            arrays = {k: np.concatenate([r["arrays"][k] for r in records]) for k in records[0]["arrays"]}
            order = np.argsort(arrays["event"], kind="stable")
            parts.append({k: v[order] for k, v in arrays.items()})
            ds_index.append(np.full(len(order), i, dtype=np.int64))
        if parts:
            merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        else:
            merged = {"event": np.zeros(0, np.uint64)}
        return {
            "arrays": {k: v for k, v in merged.items() if k.startswith(_LAYOUT_PREFIXES)},
            "event": merged["event"],
            "dataset": datasets,
            "dataset_index": np.concatenate(ds_index) if ds_index else np.zeros(0, np.int64),
            "processed": dict(accumulator.get("processed", {})),
            "nonfinite": dict(accumulator.get("nonfinite", {})),
        }


def write_h5(output: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write :meth:`SpanetDataset.postprocess` output (or its ``arrays``) as a SPANet HDF5 file."""
    import h5py

    arrays = output.get("arrays", output)
    with h5py.File(path, "w") as f:
        for key in sorted(arrays):
            f.create_dataset(key, data=arrays[key])
