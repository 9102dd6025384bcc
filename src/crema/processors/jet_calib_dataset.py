"""Jet calibration training data from NanoAOD: gen-matched AK4 jets, their features and constituents.

:class:`JetCalibDataset` is a coffea processor.  Per chunk it

1. matches reco jets to GenJets (``Jet_genJetIdx`` confirmed by ΔR < ``match_dr``,
   or the nearest GenJet within ``match_dr``) and applies the configured cuts;
2. computes the raw features of the :class:`~crema.models.jet_calibration.FeatureConfig`
   with the same code the inference wrapper uses (constituents only where the file
   has the PFNano tables ``JetPFCands``/``PFCands``, ``JetSVs``/``SV``);
3. writes one ROOT shard with uproot and returns only its description.

:meth:`JetCalibDataset.postprocess` puts the shards in (dataset, file, first entry)
order, names them ``shards/001.root``, ``shards/002.root``, ... and writes
``data.yaml``, so the result does not depend on the executor or the order in
which chunks finished; a chunk run twice (a retry) overwrites its own file.
Workers write into the output directory: with a remote dask cluster it must
be on a shared filesystem.

Shard layout (tree ``Jets``, one entry per jet)::

    <jet feature>            float32 / int32    raw value of each jet-level feature
    target                   float32            log(pt_gen / pt_raw)
    flavour                  int32              0 uds, 1 c, 2 b, 3 g, 4 other/unknown
    pt_gen, eta_gen, phi_gen, pt, pt_raw, eta, phi   float32
    hadronFlavour, partonFlavour, jet_index          int32
    event (uint64), run, luminosityBlock (uint32), entry (int64)
    n<type>                  int32              constituents of each type
    <type>_<feature>         float32[] / int32[]  jagged, by decreasing pt

Flavour: ``hadronFlavour`` 5 -> b, 4 -> c; otherwise ``|partonFlavour|`` 1-3 -> uds,
21 -> g; anything else (no parton, or a heavy parton without hadron) -> other.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import awkward as ak
import numpy as np
import uproot
import yaml
from coffea import processor

from crema.models.jet_calibration import (
    EVENT_FEATURES,
    FLAVOURS,
    TREE,
    FeatureConfig,
    available_types,
    compute_features,
    extract,
    jet_fields,
    load_features,
)
from crema.schema import ConfigError, from_dict, load_yaml, to_dict

__all__ = ["CalibDatasetOptions", "JetCalibDataset", "flavour_label", "load_options", "match_genjets", "prepare_output"]

_PART = ".part-"
#: per-jet branches written besides the features
_META = ("target", "flavour", "pt_gen", "eta_gen", "phi_gen", "pt", "pt_raw", "eta", "phi", "hadronFlavour",
         "partonFlavour", "jet_index", "event", "run", "luminosityBlock", "entry")
COMPRESSION = uproot.LZ4(1)


@dataclass(frozen=True)
class CalibDatasetOptions:
    """Physics choices of the dataset (the ``dataset`` section of a master config)."""

    jets: str = "Jet"
    gen_jets: str = "GenJet"
    match: Literal["index", "dr"] = "index"  # index: Jet_genJetIdx confirmed by ΔR; dr: nearest GenJet
    match_dr: float = 0.2
    pt_raw_min: float = 10.0
    gen_pt_min: float = 0.0
    eta_max: float = 5.2
    jet_id: int = 0  # required jetId bits (0: none)

    def validate(self) -> None:
        if not self.match_dr > 0:
            raise ConfigError("match_dr: must be positive")
        if not self.eta_max > 0:
            raise ConfigError("eta_max: must be positive")


def load_options(source: str | os.PathLike | Mapping | None) -> CalibDatasetOptions:
    """Options from a master config's ``dataset`` section (path or mapping); ``None``: defaults."""
    if source is None:
        return CalibDatasetOptions()
    data = source if isinstance(source, Mapping) else load_yaml(source)
    try:
        return from_dict(CalibDatasetOptions, (data or {}).get("dataset") or {}, "dataset")
    except ConfigError as err:
        raise ConfigError(f"{source if not isinstance(source, Mapping) else ''}: {err}".lstrip(": ")) from None


def flavour_label(hadron: np.ndarray, parton: np.ndarray) -> np.ndarray:
    """Index into :data:`~crema.models.jet_calibration.FLAVOURS` (uds, c, b, g, other)."""
    hadron = np.asarray(hadron)
    parton = np.abs(np.asarray(parton))
    out = np.full(hadron.shape, FLAVOURS.index("other"), dtype=np.int32)
    out[(parton >= 1) & (parton <= 3)] = FLAVOURS.index("uds")
    out[parton == 21] = FLAVOURS.index("g")
    out[hadron == 4] = FLAVOURS.index("c")
    out[hadron == 5] = FLAVOURS.index("b")
    return out


def _np(x, dtype=None) -> np.ndarray:
    return np.asarray(ak.to_numpy(x), dtype=dtype)


def match_genjets(events, jets, options: CalibDatasetOptions) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Flat matched-GenJet row per jet (-1: none) and flat GenJet ``pt``/``eta``/``phi`` arrays.

    ``options.match``: ``index`` (``genJetIdx`` confirmed by ΔR < ``match_dr``) or ``dr`` (the
    nearest GenJet within ``match_dr``).
    """
    o = options
    gen = events[o.gen_jets]
    gcounts = _np(ak.num(gen.pt, axis=1), np.int64)
    counts = _np(ak.num(jets.pt, axis=1), np.int64)
    ev = np.repeat(np.arange(len(counts)), counts)
    g = {f: _np(ak.flatten(gen[f], axis=1), np.float64) for f in ("pt", "eta", "phi")}
    eta, phi = _np(ak.flatten(jets.eta), np.float64), _np(ak.flatten(jets.phi), np.float64)
    gstart = np.cumsum(gcounts) - gcounts
    if o.match == "index":
        idx = _np(ak.flatten(jets.genJetIdx), np.int64)
    else:
        j_eta, g_eta = ak.unzip(ak.cartesian([jets.eta, gen.eta], axis=1, nested=True))
        j_phi, g_phi = ak.unzip(ak.cartesian([jets.phi, gen.phi], axis=1, nested=True))
        dr2 = (j_eta - g_eta) ** 2 + ((j_phi - g_phi + np.pi) % (2 * np.pi) - np.pi) ** 2
        idx = _np(ak.fill_none(ak.flatten(ak.argmin(dr2, axis=2)), -1), np.int64)
    ok = (idx >= 0) & (idx < gcounts[ev])
    row = np.where(ok, gstart[ev] + np.where(ok, idx, 0), 0)
    dphi = (phi - g["phi"][row] + np.pi) % (2 * np.pi) - np.pi if len(row) else np.zeros(0)
    dr = np.hypot(eta - g["eta"][row], dphi) if len(row) else np.zeros(0)
    return np.where(ok & (dr < o.match_dr), row, -1), g


class JetCalibDataset(processor.ProcessorABC):
    """NanoAOD chunks -> calibration shards in ``output_dir`` (see the module docstring).

    Parameters
    ----------
    features:
        Feature config (object, mapping, master config path or shipped name).
    options:
        :class:`CalibDatasetOptions` (object, mapping or master config path).
    output_dir:
        Where ``shards/`` and ``data.yaml`` go (created; must be empty of earlier shards).
    """

    def __init__(self, features: FeatureConfig | str | os.PathLike | Mapping, options: CalibDatasetOptions | Mapping | str | os.PathLike | None,
                 output_dir: str | os.PathLike) -> None:
        self.features = load_features(features)
        if isinstance(options, CalibDatasetOptions):
            self.options = options
        elif isinstance(options, Mapping) and "dataset" not in options:
            self.options = from_dict(CalibDatasetOptions, options, "dataset")
        else:
            self.options = load_options(options)
        self.output_dir = str(Path(output_dir).resolve())
        clash = sorted(set(self.features.jet.numerical) | set(self.features.jet.categorical))
        clash = [n for n in clash if n in _META and n not in ("pt", "pt_raw", "eta", "phi")]
        if clash:
            raise ConfigError(f"features.jet.{clash[0]}: the name of a dataset branch ({', '.join(_META)}); rename the feature")

    # -- what it reads (columnflow's uses=) -------------------------------------
    def required_branches(self, sample: Any = None) -> dict[str, str]:
        """Branches every input file must have -> what needs them (for the preflight check)."""
        o = self.options
        need = {f"{o.jets}_{f}": "the jet kinematics" for f in ("pt", "eta", "phi", "rawFactor", "hadronFlavour", "partonFlavour")}
        need.update({f"{o.gen_jets}_{f}": "the GenJet matching" for f in ("pt", "eta", "phi")})
        if o.match == "index":
            need[f"{o.jets}_genJetIdx"] = "the GenJet matching (dataset.match: index)"
        if o.jet_id:
            need[f"{o.jets}_jetId"] = "dataset.jet_id"
        for f in jet_fields(self.features):
            need.setdefault(f"{o.jets}_{f}", f"features.jet.{f}")
        for name in self.features.jet.numerical:
            if name in EVENT_FEATURES and len(EVENT_FEATURES[name]) == 1:
                need[EVENT_FEATURES[name][0]] = f"features.jet.{name}"
        return need

    # -- per chunk ------------------------------------------------------------
    def process(self, events) -> dict:
        """One chunk -> one shard file; returns ``{"shards": [description], "processed": {file: events}}``."""
        meta = events.metadata
        dataset, filename = meta.get("dataset", "dataset"), meta.get("filename", "")
        start, stop = int(meta.get("entrystart", 0)), int(meta.get("entrystop", len(events)))
        o = self.options
        jets = events[o.jets]
        counts = _np(ak.num(jets.pt, axis=1), np.int64)
        gen_row, gen = match_genjets(events, jets, o)
        pt = _np(ak.flatten(jets.pt), np.float64)
        pt_raw = pt * (1 - _np(ak.flatten(jets.rawFactor), np.float64))
        eta = _np(ak.flatten(jets.eta), np.float64)
        matched = gen_row >= 0
        pt_gen = np.where(matched, gen["pt"][np.maximum(gen_row, 0)] if len(gen_row) else 0.0, np.nan)
        keep = matched & (pt_raw >= o.pt_raw_min) & (np.abs(eta) <= o.eta_max) & (pt_gen >= o.gen_pt_min) & (pt_raw > 0)
        if o.jet_id:
            keep &= (_np(ak.flatten(jets.jetId), np.int64) & o.jet_id) == o.jet_id
        sel = ak.unflatten(keep, counts)
        types = available_types(self.features, events)
        flat = extract(self.features, jets[sel], events, ak.local_index(jets.pt, axis=1)[sel], types=types)
        feats = compute_features(self.features, {k: _np(v) for k, v in flat.items()}, types=types)

        rows = np.flatnonzero(keep)
        ev = np.repeat(np.arange(len(counts)), counts)[rows]
        g = gen_row[rows]
        arrays: dict[str, Any] = {}
        for i, name in enumerate(self.features.jet.numerical):
            arrays[name] = feats.jet.numerical[:, i]
        for i, name in enumerate(self.features.jet.categorical):
            arrays[name] = feats.jet.categorical[:, i].astype(np.int32)
        flav = flavour_label(_np(ak.flatten(jets.hadronFlavour), np.int64)[rows], _np(ak.flatten(jets.partonFlavour), np.int64)[rows])
        arrays.update({
            "target": np.log(pt_gen[rows] / pt_raw[rows]).astype(np.float32),
            "flavour": flav,
            "pt_gen": gen["pt"][g].astype(np.float32),
            "eta_gen": gen["eta"][g].astype(np.float32),
            "phi_gen": gen["phi"][g].astype(np.float32),
            "pt": pt[rows].astype(np.float32),
            "pt_raw": pt_raw[rows].astype(np.float32),
            "eta": eta[rows].astype(np.float32),
            "phi": _np(ak.flatten(jets.phi), np.float32)[rows],
            "hadronFlavour": _np(ak.flatten(jets.hadronFlavour), np.int32)[rows],
            "partonFlavour": _np(ak.flatten(jets.partonFlavour), np.int32)[rows],
            "jet_index": _np(ak.flatten(ak.local_index(jets.pt, axis=1)), np.int32)[rows],
            "event": _np(events.event, np.uint64)[ev],
            "run": _np(events.run, np.uint32)[ev],
            "luminosityBlock": _np(events.luminosityBlock, np.uint32)[ev],
            "entry": (start + ev).astype(np.int64),
        })
        for t in types:
            grp, ctype = feats.constituents[t], self.features.constituents[t]
            fields = {n: ak.unflatten(grp.numerical[:, i], grp.counts) for i, n in enumerate(ctype.numerical)}
            fields.update({n: ak.unflatten(grp.categorical[:, i].astype(np.int32), grp.counts) for i, n in enumerate(ctype.categorical)})
            arrays[t] = ak.zip(fields)
        record = {"dataset": dataset, "file": filename, "start": start, "stop": stop, "jets": len(rows),
                  "types": sorted(types), "path": None}
        if len(rows):
            record["path"] = self._write(arrays, dataset, filename, start, stop)
        return {"shards": [record], "processed": {filename or dataset: len(events)}}

    def _write(self, arrays: dict[str, Any], dataset: str, filename: str, start: int, stop: int) -> str:
        key = hashlib.sha1(f"{dataset}|{filename}|{start}|{stop}".encode()).hexdigest()[:20]
        path = Path(self.output_dir) / "shards" / f"{_PART}{key}.root"
        path.parent.mkdir(parents=True, exist_ok=True)
        types = {k: (v.type.content if isinstance(v, ak.Array) else v.dtype) for k, v in arrays.items()}
        with uproot.recreate(path, compression=COMPRESSION) as f:
            tree = f.mktree(TREE, types, counter_name=lambda c: "n" + c)
            tree.extend(arrays)
        return path.name

    # -- merge -------------------------------------------------------------------
    def postprocess(self, accumulator: dict) -> dict:
        """Order the chunk shards by (dataset, file, entry), rename them and write ``data.yaml``."""
        out = Path(self.output_dir)
        shards_dir = out / "shards"
        records = sorted(accumulator.get("shards", []), key=lambda r: (r["dataset"], r["file"], r["start"]))
        type_sets = {tuple(r["types"]) for r in records}
        if len(type_sets) > 1:
            raise ValueError(f"JetCalibDataset: the inputs differ in their constituent tables (types {sorted(type_sets)}); "
                             "use only PFNano files or only plain NanoAOD in one dataset")
        written = [r for r in records if r["path"]]
        width = max(3, len(str(len(written))))
        shards, per_dataset = [], {}
        for i, r in enumerate(written, 1):
            name = f"{i:0{width}d}.root"
            os.replace(shards_dir / r["path"], shards_dir / name)
            shards.append({"path": f"shards/{name}", "jets": r["jets"], "dataset": r["dataset"], "file": r["file"],
                           "entry_start": r["start"], "entry_stop": r["stop"]})
        for r in records:
            d = per_dataset.setdefault(r["dataset"], {"jets": 0, "events": 0})
            d["jets"] += r["jets"]
            d["events"] += r["stop"] - r["start"]
        for stale in shards_dir.glob(f"{_PART}*") if shards_dir.exists() else ():
            stale.unlink()  # chunks that failed and were not retried
        manifest = {
            "format": "crema-jet-calibration",
            "version": 1,
            "tree": TREE,
            "total": sum(s["jets"] for s in shards),
            "shards": shards,
            "datasets": per_dataset,
            "constituent_types": [t for t in self.features.types() if type_sets and t in next(iter(type_sets))],
            "flavours": list(FLAVOURS),
            "options": to_dict(self.options),
            "features": to_dict(self.features),
        }
        out.mkdir(parents=True, exist_ok=True)
        (out / "data.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
        return {"data": str(out / "data.yaml"), "total": manifest["total"], "shards": shards,
                "processed": dict(accumulator.get("processed", {}))}


def prepare_output(output_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Create ``output_dir``; refuse (or with ``overwrite`` remove) an earlier dataset there."""
    out = Path(output_dir)
    old = list((out / "shards").glob("*.root")) if (out / "shards").exists() else []
    if (out / "data.yaml").exists() or old:
        if not overwrite:
            raise ConfigError(f"{out}: already holds a calibration dataset; choose another directory or overwrite it")
        for p in old:
            p.unlink()
        for name in ("data.yaml", "transform.yaml"):
            (out / name).unlink(missing_ok=True)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    return out
