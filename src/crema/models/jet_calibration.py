"""Jet energy calibration with Deep Sets (CMS ml-jec, arXiv:2308.12724): features, transform, ONNX wrapper.

A network predicts ``log(pt_gen / pt_raw)`` per AK4 jet; the calibrated pt is
``pt_raw * exp(prediction)``.  Its inputs are event-level (rho, number of
primary vertices), jet-level (raw pt, eta, mass, area, energy fractions,
multiplicities, ...) and, where the file has PFNano tables, the jet's
constituents by *type* (e.g. charged and neutral PF candidates, secondary
vertices).  Each type goes through a Deep Sets block (one MLP with shared
weights on every constituent, summed over the jet's constituents of that
type); the block outputs and the jet-level features feed a head MLP with one
output.  The torch side lives in :mod:`crema.models.jet_calibration_train`.

This module has no torch dependency.  It holds what training and inference
must share, so that the two cannot drift apart:

* the **feature configuration** (:class:`FeatureConfig`, the ``features``
  section of a master config): which features, how each is pre-processed;
* the **feature computation** (:func:`extract` on awkward collections, then
  :func:`compute_features` on flat numpy arrays), used by the dataset writer
  :class:`crema.processors.jet_calib_dataset.JetCalibDataset` and by
  :class:`JetCalibration` alike.  Constituents are found from the branch
  names alone (``JetPFCands_jetIdx``/``JetPFCands_pFCandsIdx`` -> ``PFCands``,
  ``JetSVs_jetIdx``/``JetSVs_sVIdx`` -> ``SV``), independent of
  ``Jet_nConstituents``;
* the **transform** (:class:`Transform`, ``transform.yaml``): per numerical
  feature the configured non-linear steps then a fitted linear rescale,
  per categorical feature the list of known values (index = position + 1,
  0 = unknown);
* the training **dataset reader** (:func:`load_dataset`) of the shards
  written by ``crema calib-dataset``;
* the ONNX wrapper :class:`JetCalibration`.

Decision: the transform is *inside* the ONNX graph.  The exported network
takes raw physical features (``float32``) and raw integer codes for the
categorical features (``int64``: charge, ``|pdgId|``); the steps, the
rescale and the value -> index lookup are graph operations built from
``transform.yaml``, which is shipped beside ``model.onnx`` for inspection
only.  So the ``.onnx`` file alone is a complete calibration, usable outside
crema.  ONNX contract (``B`` jets, ``N_t`` constituent slots of type ``t``;
``B`` and every ``N_t`` dynamic)::

    jet        float32 (B, D_jet)      jet-level numerical features, config order
    jet_cat    int64   (B, C_jet)      jet-level categorical codes (only if C_jet > 0)
    <t>_data   float32 (B, N_t, D_t)   per type t, config order; padding arbitrary
    <t>_mask   bool    (B, N_t)        true for real constituents
    <t>_cat    int64   (B, N_t, C_t)   categorical codes (only if C_t > 0)
    ->
    log_correction float32 (B,)        predicted log(pt_gen / pt_raw)
    correction     float32 (B,)        exp(log_correction): pt = pt_raw * correction

Masked slots never change the output (each block's per-constituent output
is selected with ``where(mask, h, 0)`` before the sum).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import awkward as ak
import numpy as np
import yaml

from crema.models.onnx import OnnxModel, ProviderSpec
from crema.schema import ConfigError, from_dict, load_yaml, to_dict

__all__ = [
    "EVENT_FEATURES",
    "FLAVOURS",
    "LOG_FLOOR",
    "SOURCES",
    "TREE",
    "Arcsinh",
    "Categorical",
    "CategoricalTransform",
    "ConstituentType",
    "FeatureArrays",
    "FeatureConfig",
    "Group",
    "GroupTransform",
    "JetCalibration",
    "JetFeatures",
    "Numerical",
    "NumericalTransform",
    "Transform",
    "apply_steps",
    "available_types",
    "compute_features",
    "config_path",
    "extract",
    "feeds",
    "fit_transform",
    "input_names",
    "jet_fields",
    "load_dataset",
    "load_features",
    "load_transform",
    "pad",
    "read_manifest",
    "save_transform",
    "shipped_model",
    "write_transform",
]

#: Flavour labels of the dataset's ``flavour`` branch (index = label).
FLAVOURS = ("uds", "c", "b", "g", "other")

#: Floor of the ``log`` step: ``log(max(x, LOG_FLOOR))``.
LOG_FLOOR = 1e-6


@dataclass(frozen=True)
class _Source:
    link: str  # association table (one row per jet-constituent pair)
    cand_index: str  # its field pointing into ``cands``
    cands: str  # the constituent collection
    jet_index: str = "jetIdx"


#: Constituent sources: PFNano's jet -> PF candidate and jet -> SV tables.
SOURCES = {
    "pf": _Source("JetPFCands", "pFCandsIdx", "PFCands"),
    "sv": _Source("JetSVs", "sVIdx", "SV"),
}

# derived feature names (anything else is a field of the jets / candidates / association table)
_JET_DERIVED = {"pt_raw": ("pt", "rawFactor"), "mass_raw": ("mass", "rawFactor")}
#: Event-level features: name -> branches tried in order (NanoAODv12, then older NanoAOD).
EVENT_FEATURES = {
    "rho": ("Rho_fixedGridRhoFastjetAll", "fixedGridRhoFastjetAll"),
    "npv": ("PV_npvs",),
    "npv_good": ("PV_npvsGood",),
}
_CONST_DERIVED = ("pt_rel", "deta", "dphi", "dr")
_PF_DERIVED = ("type",)  # |pdgId|
_KINEMATICS = ("pt", "eta", "phi")


# ---------------------------------------------------------------------------
# feature configuration
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Arcsinh:
    """The step ``arcsinh(x / scale)`` (written ``{arcsinh: scale}``)."""

    arcsinh: float

    def validate(self) -> None:
        if not self.arcsinh > 0:
            raise ConfigError("arcsinh: the scale must be positive")


#: One non-linear step: ``log`` (of max(x, 1e-6)), ``log1p`` (of max(x, 0)), ``abs`` or ``{arcsinh: scale}``.
Step = Literal["log", "log1p", "abs"] | Arcsinh


@dataclass(frozen=True)
class Numerical:
    """A numerical feature: non-linear ``steps`` in order, then a fitted linear rescale.

    ``scale``: ``standard`` (mean, std), ``quantile`` (median, half the 16-84 % range) or ``none``.
    """

    steps: list[Step] = field(default_factory=list)
    scale: Literal["standard", "quantile", "none"] = "standard"


@dataclass(frozen=True)
class Categorical:
    """A categorical feature: integer codes mapped to embedding indices.

    ``values``: the known codes (index = position + 1; anything else -> 0).
    When omitted, the ``max_values`` most frequent codes of the training data are used.
    """

    values: list[int] | None = None
    max_values: int = 32

    def validate(self) -> None:
        if self.values is not None and len(set(self.values)) != len(self.values):
            raise ConfigError("values: a value appears twice")
        if self.max_values < 1:
            raise ConfigError("max_values: must be >= 1")


def _check_names(names: Sequence[str], where: str) -> None:
    seen: set[str] = set()
    for name in names:
        if not name.isidentifier():
            raise ConfigError(f"{where}.{name}: a feature name must be an identifier")
        if name in seen:
            raise ConfigError(f"{where}.{name}: feature listed twice")
        seen.add(name)


@dataclass(frozen=True)
class JetFeatures:
    """Jet-level inputs: derived (``pt_raw``, ``mass_raw``), event-level (``rho``, ``npv``,
    ``npv_good``) or any jet field (``eta``, ``area``, ``chHEF``, ``nConstituents``...)."""

    numerical: dict[str, Numerical | None]
    categorical: dict[str, Categorical | None] = field(default_factory=dict)

    def validate(self) -> None:
        if not self.numerical:
            raise ConfigError("numerical: at least one jet-level feature is needed")
        _check_names(list(self.numerical) + list(self.categorical), "numerical")


@dataclass(frozen=True)
class ConstituentType:
    """One constituent type: its source table, which candidates, and the per-constituent features.

    Derived features: ``pt_rel`` (pt / jet raw pt), ``deta`` (Δη signed by the jet's η),
    ``dphi``, ``dr``, and for ``pf`` ``type`` (``|pdgId|``); any other name is a field of the
    candidate collection (``PFCands``/``SV``) or else of the association table
    (``JetPFCands``/``JetSVs``).  Constituents are ordered by decreasing pt; ``max_count``
    keeps the leading ones.
    """

    source: Literal["pf", "sv"]
    numerical: dict[str, Numerical | None]
    categorical: dict[str, Categorical | None] = field(default_factory=dict)
    select: Literal["all", "charged", "neutral"] = "all"
    pdg_ids: list[int] | None = None
    max_count: int | None = None

    def validate(self) -> None:
        if not self.numerical:
            raise ConfigError("numerical: at least one numerical feature is needed")
        _check_names(list(self.numerical) + list(self.categorical), "numerical")
        if self.source != "pf" and (self.select != "all" or self.pdg_ids is not None):
            raise ConfigError("select: charge and pdgId selections exist only for source pf")
        if self.source != "pf" and "type" in {**self.numerical, **self.categorical}:
            raise ConfigError("categorical.type: the type (|pdgId|) exists only for source pf")
        if self.max_count is not None and self.max_count < 1:
            raise ConfigError("max_count: must be >= 1")


@dataclass(frozen=True)
class FeatureConfig:
    """The ``features`` section of a calibration master config."""

    jet: JetFeatures
    constituents: dict[str, ConstituentType] = field(default_factory=dict)

    def validate(self) -> None:
        for name in self.constituents:
            if not (name.isidentifier() and name.isalnum() and name.islower()) or name == "jet":
                raise ConfigError(f"constituents.{name}: a type name must be lower-case letters/digits (not 'jet')")

    def types(self) -> list[str]:
        return list(self.constituents)

    def group(self, name: str) -> JetFeatures | ConstituentType:
        """``"jet"`` or a constituent type."""
        return self.jet if name == "jet" else self.constituents[name]


def _num(group: JetFeatures | ConstituentType) -> list[tuple[str, Numerical]]:
    return [(k, v or Numerical()) for k, v in group.numerical.items()]


def _cat(group: JetFeatures | ConstituentType) -> list[tuple[str, Categorical]]:
    return [(k, v or Categorical()) for k, v in group.categorical.items()]


_CONFIG_DIR = "configs/calibration"


def config_path(name_or_path: str | os.PathLike) -> Path:
    """A shipped master config by name (``deepsets``, ``jet_only``) or any path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    shipped = resources.files("crema") / _CONFIG_DIR / f"{name_or_path}.yaml"
    if not shipped.is_file():
        known = sorted(p.name[:-5] for p in (resources.files("crema") / _CONFIG_DIR).iterdir() if p.name.endswith(".yaml"))
        raise ConfigError(f"calibration config {name_or_path!r}: no such file or shipped config (shipped: {', '.join(known)})")
    return Path(str(shipped))


_MODEL_DIR = "data/calibration"


def shipped_model(name_or_path: str | os.PathLike) -> Path:
    """A trained model directory: shipped by name (``deepsets_generated``, ``jet_only_generated``)
    or any directory holding ``model.onnx`` and ``config.yaml``.  :class:`ConfigError` if neither."""
    path = Path(name_or_path).expanduser()
    if (path / "model.onnx").is_file():
        return path
    root = resources.files("crema") / _MODEL_DIR
    shipped = root / str(name_or_path)
    if len(path.parts) == 1 and (shipped / "model.onnx").is_file():
        return Path(str(shipped))
    known = sorted(p.name for p in root.iterdir() if (p / "model.onnx").is_file()) if root.is_dir() else []
    raise ConfigError(f"jet calibration model {str(name_or_path)!r}: neither a shipped model (shipped: "
                      f"{', '.join(known) or 'none'}) nor a directory with model.onnx and config.yaml")


def load_features(source: str | os.PathLike | Mapping | FeatureConfig) -> FeatureConfig:
    """The feature configuration from a master config (its ``features`` section), a bare
    features mapping (``jet``, ``constituents``), a shipped config name or a path."""
    if isinstance(source, FeatureConfig):
        return source
    where, prefix = "", ""
    if isinstance(source, Mapping):
        data = source
    else:
        path = config_path(source)
        data, prefix = load_yaml(path), f"{path}: "
    if isinstance(data, Mapping) and "features" in data:
        data, where = data["features"], "features"
    try:
        return from_dict(FeatureConfig, data, where)
    except ConfigError as err:
        raise ConfigError(f"{prefix}{err}") from None


# ---------------------------------------------------------------------------
# transform
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class NumericalTransform:
    """Fitted transform of one numerical feature: ``(steps(x) - center) / scale``."""

    name: str
    steps: list[Step] = field(default_factory=list)
    center: float = 0.0
    scale: float = 1.0
    fit: Literal["standard", "quantile", "none"] = "standard"  # how center/scale were obtained


@dataclass(frozen=True)
class CategoricalTransform:
    """Known codes of one categorical feature (index = position + 1; unknown -> 0)."""

    name: str
    values: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class GroupTransform:
    numerical: list[NumericalTransform] = field(default_factory=list)
    categorical: list[CategoricalTransform] = field(default_factory=list)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Numerical features ``(..., D)`` -> transformed float32 (non-finite results -> 0)."""
        x = np.asarray(x, dtype=np.float64)
        out = np.empty(x.shape, dtype=np.float32)
        for i, t in enumerate(self.numerical):
            with np.errstate(all="ignore"):
                y = (apply_steps(x[..., i], t.steps) - t.center) / t.scale
            out[..., i] = np.where(np.isfinite(y), y, 0.0)
        return out

    def inverse(self, y: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`apply` (``abs`` cannot be undone: its sign is lost)."""
        y = np.asarray(y, dtype=np.float64)
        out = np.empty(y.shape, dtype=np.float64)
        for i, t in enumerate(self.numerical):
            v = y[..., i] * t.scale + t.center
            for step in reversed(t.steps):
                if isinstance(step, Arcsinh):
                    v = np.sinh(v) * step.arcsinh
                elif step == "log":
                    v = np.exp(v)
                elif step == "log1p":
                    v = np.expm1(v)
            out[..., i] = v
        return out

    def indices(self, codes: np.ndarray) -> np.ndarray:
        """Categorical codes ``(..., C)`` -> int64 indices (0: unknown value)."""
        codes = np.asarray(codes, dtype=np.int64)
        out = np.zeros(codes.shape, dtype=np.int64)
        for i, t in enumerate(self.categorical):
            values = np.asarray(t.values, dtype=np.int64)
            order = np.argsort(values)
            pos = np.searchsorted(values[order], codes[..., i]).clip(0, max(len(values) - 1, 0))
            hit = (values[order][pos] == codes[..., i]) if len(values) else np.zeros(codes[..., i].shape, bool)
            out[..., i] = np.where(hit, order[pos] + 1, 0)
        return out

    def codes(self, indices: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`indices` (index 0 -> -999999)."""
        indices = np.asarray(indices, dtype=np.int64)
        out = np.empty(indices.shape, dtype=np.int64)
        for i, t in enumerate(self.categorical):
            table = np.asarray([-999999] + list(t.values), dtype=np.int64)
            out[..., i] = table[indices[..., i]]
        return out


@dataclass(frozen=True)
class Transform:
    """The whole fitted transform (``transform.yaml``)."""

    jet: GroupTransform
    constituents: dict[str, GroupTransform] = field(default_factory=dict)
    version: int = 1

    def group(self, name: str) -> GroupTransform:
        return self.jet if name == "jet" else self.constituents[name]

    def check(self, features: FeatureConfig) -> None:
        """Raise :class:`ConfigError` (naming the group and feature) unless this transform fits ``features``."""
        for name in ["jet", *features.types()]:
            if name != "jet" and name not in self.constituents:
                raise ConfigError(f"transform: no constituent type {name!r}")
            g, t = features.group(name), self.group(name)
            have = [(n.name, [to_dict(s) for s in n.steps], n.fit) for n in t.numerical]
            want = [(n, [to_dict(s) for s in c.steps], c.scale) for n, c in _num(g)]
            if have != want:
                raise ConfigError(f"transform.{name}.numerical: (feature, steps, scale) {have} differ from the config's {want}")
            have_c = [(c.name, c.values) for c in t.categorical]
            want_c = [(n, c.values) for n, c in _cat(g)]
            if [h[0] for h in have_c] != [w[0] for w in want_c] or any(w[1] is not None and w != h for h, w in zip(have_c, want_c)):
                raise ConfigError(f"transform.{name}.categorical: (feature, values) {have_c} differ from the config's {want_c}")
        extra = sorted(set(self.constituents) - set(features.types()))
        if extra:
            raise ConfigError(f"transform.constituents.{extra[0]}: not a type of the feature config")


def apply_steps(x: np.ndarray, steps: Sequence[Step]) -> np.ndarray:
    """The non-linear steps of a numerical feature, in float64."""
    x = np.asarray(x, dtype=np.float64)
    for step in steps:
        if isinstance(step, Arcsinh):
            x = np.arcsinh(x / step.arcsinh)
        elif step == "log":
            x = np.log(np.maximum(x, LOG_FLOOR))
        elif step == "log1p":
            x = np.log1p(np.maximum(x, 0.0))
        elif step == "abs":
            x = np.abs(x)
        else:  # pragma: no cover - the schema only admits the steps above
            raise ValueError(f"unknown step {step!r}")
    return x


def _fit_numerical(name: str, spec: Numerical, x: np.ndarray) -> NumericalTransform:
    with np.errstate(all="ignore"):
        y = apply_steps(x, spec.steps)
    y = y[np.isfinite(y)]
    center, scale = 0.0, 1.0
    if spec.scale != "none" and len(y):
        if spec.scale == "standard":
            center, scale = float(np.mean(y)), float(np.std(y))
        else:
            q16, q50, q84 = np.quantile(y, [0.16, 0.5, 0.84])
            center, scale = float(q50), float(q84 - q16) / 2
        if not (np.isfinite(scale) and scale > 1e-12):
            scale = 1.0
    return NumericalTransform(name, list(spec.steps), center, scale, spec.scale)


def _fit_categorical(name: str, spec: Categorical, codes: np.ndarray) -> CategoricalTransform:
    if spec.values is not None:
        return CategoricalTransform(name, [int(v) for v in spec.values])
    values, counts = np.unique(np.asarray(codes, dtype=np.int64), return_counts=True)
    keep = np.sort(values[np.argsort(-counts, kind="stable")[: spec.max_values]])
    return CategoricalTransform(name, [int(v) for v in keep])


def fit_transform(features: FeatureConfig, data: FeatureArrays) -> Transform:
    """Fit the transform of ``features`` on (training) feature arrays."""
    groups = {}
    for name in ["jet", *features.types()]:
        g = features.group(name)
        arrays = data.jet if name == "jet" else data.constituents.get(name)
        if arrays is None:
            raise ConfigError(f"features.constituents.{name}: the data has no constituents of this type")
        groups[name] = GroupTransform(
            [_fit_numerical(n, spec, arrays.numerical[:, i]) for i, (n, spec) in enumerate(_num(g))],
            [_fit_categorical(n, spec, arrays.categorical[:, i]) for i, (n, spec) in enumerate(_cat(g))],
        )
    return Transform(groups.pop("jet"), groups)


def save_transform(transform: Transform, path: str | os.PathLike) -> Path:
    """Write ``transform.yaml`` (floats written exactly: loading gives back the same numbers)."""
    path = Path(path)
    header = "# crema jet calibration transform: x -> (steps(x) - center) / scale; categorical index = position + 1, unknown 0\n"
    path.write_text(header + yaml.safe_dump(to_dict(transform), sort_keys=False))
    return path


def load_transform(path: str | os.PathLike) -> Transform:
    """Read and validate a ``transform.yaml``; errors name the key."""
    data = load_yaml(path)
    try:
        return from_dict(Transform, data, "")
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


# ---------------------------------------------------------------------------
# feature computation: awkward -> flat arrays -> features
# ---------------------------------------------------------------------------
@dataclass
class Group:
    """Features of one group of objects: jets (one row each) or one constituent type (CSR by jet)."""

    numerical: np.ndarray  # (M, D) float32
    categorical: np.ndarray  # (M, C) int64
    offsets: np.ndarray | None = None  # (n_jets + 1,) int64 row ranges per jet (constituents only)

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)

    def take(self, rows: np.ndarray) -> Group:
        """The constituents of jets ``rows`` (a new CSR block in that order)."""
        counts = self.counts[rows]
        starts = self.offsets[:-1][rows]
        idx = np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(int(counts.sum()))
        return Group(self.numerical[idx], self.categorical[idx], np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))


@dataclass
class FeatureArrays:
    """Raw (untransformed) inputs of ``n`` jets: ``jet`` and per constituent type a CSR :class:`Group`."""

    jet: Group
    constituents: dict[str, Group]
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. target, flavour (datasets)

    def __len__(self) -> int:
        return len(self.jet.numerical)

    def take(self, rows: np.ndarray) -> FeatureArrays:
        rows = np.asarray(rows, dtype=np.int64)
        return FeatureArrays(
            Group(self.jet.numerical[rows], self.jet.categorical[rows]),
            {k: g.take(rows) for k, g in self.constituents.items()},
            {k: v[rows] for k, v in self.extra.items()},
        )


def jet_fields(features: FeatureConfig) -> list[str]:
    """Jet fields the features read (kinematics and rawFactor always)."""
    fields = ["pt", "eta", "phi", "rawFactor"]
    for name in list(features.jet.numerical) + list(features.jet.categorical):
        if name in EVENT_FEATURES:
            continue
        for f in _JET_DERIVED.get(name, (name,)):
            if f not in fields:
                fields.append(f)
    return fields


def _event_branch(events, branch: str):
    """An event-level branch of NanoEvents by its ROOT name (``Rho_fixedGridRhoFastjetAll`` or ``fixedGridRhoFastjetAll``)."""
    if branch in events.fields:
        return events[branch]
    coll, _, name = branch.partition("_")
    if name and coll in events.fields and name in events[coll].fields:
        return events[coll][name]
    return None


def _source_fields(ctype: ConstituentType, cand_fields: Sequence[str], link_fields: Sequence[str], where: str) -> tuple[list[str], list[str]]:
    """(candidate fields, association-table fields) a constituent type reads."""
    src = SOURCES[ctype.source]
    cands = list(_KINEMATICS)
    links: list[str] = []
    if ctype.select != "all":
        cands.append("charge")
    if ctype.pdg_ids is not None:
        cands.append("pdgId")
    for name in list(ctype.numerical) + list(ctype.categorical):
        if name in _CONST_DERIVED:
            continue
        if name == "type" and ctype.source == "pf":
            cands.append("pdgId")
        elif name in cand_fields:
            cands.append(name)
        elif name in link_fields:
            links.append(name)
        else:
            raise KeyError(f"{where}.{name}: neither a derived feature ({', '.join(_CONST_DERIVED)}) nor a field of "
                           f"{src.cands} or {src.link}")
    missing = [f for f in cands if f not in cand_fields]
    if missing:
        raise KeyError(f"{where}: {src.cands} lacks field {missing[0]!r}")
    return list(dict.fromkeys(cands)), list(dict.fromkeys(links))


def available_types(features: FeatureConfig, events) -> list[str]:
    """Constituent types whose source tables are in ``events``."""
    out = []
    for name, ctype in features.constituents.items():
        src = SOURCES[ctype.source]
        if src.link in events.fields and src.cands in events.fields:
            out.append(name)
    return out


def extract(features: FeatureConfig, jets, events, jet_index=None, *, types: Sequence[str] | None = None,
            jets_collection: str = "Jet", lib=ak) -> dict[str, Any]:
    """Flat arrays (awkward or dask-awkward, numpy-convertible) that :func:`compute_features` needs.

    ``jets``: per-event jets (any selection/order); ``jet_index``: per jet, its position in
    ``events[jets_collection]`` (the collection the constituent tables point to).  Without it
    the jets are taken to be that collection in file order, which :func:`compute_features`
    verifies.  ``types``: constituent types to extract (default: all of ``features``).
    """
    types = features.types() if types is None else list(types)
    out: dict[str, Any] = {"jet_counts": lib.num(jets["pt"], axis=1)}
    for f in jet_fields(features):
        if f not in jets.fields:
            users = [n for n in list(features.jet.numerical) + list(features.jet.categorical) if f in _JET_DERIVED.get(n, (n,))]
            raise KeyError(f"jets lack field {f!r} (needed by {', '.join(f'features.jet.{u}' for u in users) or 'the calibration'})")
        out[f"jet__{f}"] = lib.flatten(jets[f], axis=1)
    for name in list(features.jet.numerical) + list(features.jet.categorical):
        if name in EVENT_FEATURES:
            for branch in EVENT_FEATURES[name]:
                value = _event_branch(events, branch)
                if value is not None:
                    out[f"event__{name}"] = value
                    break
            else:
                raise KeyError(f"features.jet.{name}: the events have none of the branches {', '.join(EVENT_FEATURES[name])}")
    if not types:
        return out
    if jet_index is None:
        jet_index = lib.local_index(jets["pt"], axis=1)
        out["alljet_counts"] = lib.num(events[jets_collection]["eta"], axis=1)
        out["alljet_eta"] = lib.flatten(events[jets_collection]["eta"], axis=1)
    out["jet_index"] = lib.flatten(jet_index, axis=1)
    sources: dict[str, tuple[list[str], list[str]]] = {}
    for name in types:
        ctype = features.constituents[name]
        src = SOURCES[ctype.source]
        for coll in (src.link, src.cands):
            if coll not in events.fields:
                raise KeyError(f"features.constituents.{name}: the events have no {coll} collection (a PFNano file is needed)")
        cands, links = _source_fields(ctype, events[src.cands].fields, events[src.link].fields, f"features.constituents.{name}")
        have = sources.setdefault(ctype.source, ([], []))
        have[0].extend(f for f in cands if f not in have[0])
        have[1].extend(f for f in links if f not in have[1])
    for s, (cands, links) in sources.items():
        src = SOURCES[s]
        link, coll = events[src.link], events[src.cands]
        out[f"{s}__link_counts"] = lib.num(link[src.jet_index], axis=1)
        for f in [src.jet_index, src.cand_index, *links]:
            out[f"{s}__link__{f}"] = lib.flatten(link[f], axis=1)
        out[f"{s}__cand_counts"] = lib.num(coll[cands[0]], axis=1)
        for f in cands:
            out[f"{s}__cand__{f}"] = lib.flatten(coll[f], axis=1)
    return out


def _columns(cols: Sequence[np.ndarray], n: int, dtype) -> np.ndarray:
    """``(n, len(cols))`` array of the given columns (also for zero rows or columns)."""
    out = np.empty((n, len(cols)), dtype=dtype)
    for i, c in enumerate(cols):
        out[:, i] = c
    return out


def _f64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _starts(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.int64)
    return np.cumsum(counts) - counts


def _wrap(dphi: np.ndarray) -> np.ndarray:
    return (dphi + np.pi) % (2 * np.pi) - np.pi


def _associate(flat: Mapping[str, np.ndarray], s: str, jet_event: np.ndarray, jet_index: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(jet row, candidate row, association row) of every constituent of the given jets.

    Rows join on (event, jet position); a jet listed twice gets its constituents twice.
    Association rows with an invalid jet or candidate index are dropped.
    """
    src = SOURCES[s]
    link_counts = np.asarray(flat[f"{s}__link_counts"], dtype=np.int64)
    n_events = len(link_counts)
    ev = np.repeat(np.arange(n_events, dtype=np.int64), link_counts)
    ljet = np.asarray(flat[f"{s}__link__{src.jet_index}"], dtype=np.int64)
    lcand = np.asarray(flat[f"{s}__link__{src.cand_index}"], dtype=np.int64)
    cand_counts = np.asarray(flat[f"{s}__cand_counts"], dtype=np.int64)
    ok = (ljet >= 0) & (lcand >= 0) & (lcand < cand_counts[ev])
    link_rows = np.flatnonzero(ok)
    shift = np.int64(1 << 24)  # jet positions per event stay far below this
    lkey = ev[link_rows] * shift + ljet[link_rows]
    jkey = np.asarray(jet_event, dtype=np.int64) * shift + np.asarray(jet_index, dtype=np.int64)
    order = np.argsort(jkey, kind="stable")
    sorted_keys = jkey[order]
    lo = np.searchsorted(sorted_keys, lkey, "left")
    mult = np.searchsorted(sorted_keys, lkey, "right") - lo
    total = int(mult.sum())
    first = np.repeat(np.cumsum(mult) - mult, mult)
    jet_rows = order[np.repeat(lo, mult) + np.arange(total) - first]
    link_rows = np.repeat(link_rows, mult)
    cand_rows = _starts(cand_counts)[ev[link_rows]] + lcand[link_rows]
    return jet_rows, cand_rows, link_rows


def _constituents(ctype: ConstituentType, flat: Mapping[str, np.ndarray], jets: Mapping[str, np.ndarray], pt_raw: np.ndarray,
                  jet_event: np.ndarray, jet_index: np.ndarray) -> Group:
    """The CSR :class:`Group` of one constituent type for the given jets."""
    s, n = ctype.source, len(pt_raw)
    jet_rows, cand_rows, link_rows = _associate(flat, s, jet_event, jet_index)
    keep = np.ones(len(jet_rows), dtype=bool)
    if ctype.select != "all":
        charged = _f64(flat[f"{s}__cand__charge"])[cand_rows] != 0
        keep &= charged if ctype.select == "charged" else ~charged
    if ctype.pdg_ids is not None:
        keep &= np.isin(np.abs(_f64(flat[f"{s}__cand__pdgId"])[cand_rows]), np.abs(np.asarray(ctype.pdg_ids, dtype=np.float64)))
    jet_rows, cand_rows, link_rows = jet_rows[keep], cand_rows[keep], link_rows[keep]
    order = np.lexsort((link_rows, -_f64(flat[f"{s}__cand__pt"])[cand_rows], jet_rows))  # by jet, then decreasing pt
    jet_rows, cand_rows, link_rows = jet_rows[order], cand_rows[order], link_rows[order]
    per_jet = np.bincount(jet_rows, minlength=n)
    if ctype.max_count is not None:
        sel = np.arange(len(jet_rows)) - _starts(per_jet)[jet_rows] < ctype.max_count
        jet_rows, cand_rows, link_rows = jet_rows[sel], cand_rows[sel], link_rows[sel]
        per_jet = np.minimum(per_jet, ctype.max_count)

    def cand(f: str) -> np.ndarray:
        return _f64(flat[f"{s}__cand__{f}"])[cand_rows]

    j_eta = jets["eta"][jet_rows]
    deta = (cand("eta") - j_eta) * np.where(j_eta < 0, -1.0, 1.0)
    dphi = _wrap(cand("phi") - jets["phi"][jet_rows])
    derived = {
        "pt_rel": lambda: cand("pt") / pt_raw[jet_rows],
        "deta": lambda: deta,
        "dphi": lambda: dphi,
        "dr": lambda: np.hypot(deta, dphi),
        "type": lambda: np.abs(cand("pdgId")),
    }

    def value(f: str) -> np.ndarray:
        if f in derived and (f != "type" or s == "pf"):
            return derived[f]()
        if f"{s}__cand__{f}" in flat:
            return cand(f)
        return _f64(flat[f"{s}__link__{f}"])[link_rows]

    m = len(jet_rows)
    return Group(
        _columns([value(k) for k, _ in _num(ctype)], m, np.float32),
        _columns([np.rint(value(k)) for k, _ in _cat(ctype)], m, np.int64),
        np.concatenate([[0], np.cumsum(per_jet)]).astype(np.int64),
    )


def compute_features(features: FeatureConfig, flat: Mapping[str, np.ndarray], types: Sequence[str] | None = None) -> FeatureArrays:
    """Flat numpy arrays from :func:`extract` -> raw features of every given jet.

    Jet-level features are float32 ``(n, D)`` in config order (event-level ones broadcast
    to the jets); each constituent type is a CSR :class:`Group` (constituents by
    decreasing pt within each jet, at most ``max_count``).
    """
    types = features.types() if types is None else list(types)
    counts = np.asarray(flat["jet_counts"], dtype=np.int64)
    jet_event = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    jets = {k[5:]: _f64(v) for k, v in flat.items() if k.startswith("jet__")}
    pt_raw = jets["pt"] * (1 - jets["rawFactor"])
    n = len(pt_raw)

    def jet_value(name: str) -> np.ndarray:
        if name in EVENT_FEATURES:
            return _f64(flat[f"event__{name}"])[jet_event]
        if name == "pt_raw":
            return pt_raw
        if name == "mass_raw":
            return jets["mass"] * (1 - jets["rawFactor"])
        return jets[name]

    jet = Group(
        _columns([jet_value(k) for k, _ in _num(features.jet)], n, np.float32),
        _columns([np.rint(jet_value(k)) for k, _ in _cat(features.jet)], n, np.int64),
    )
    out = FeatureArrays(jet, {})
    if not types:
        return out
    jet_index = np.asarray(flat["jet_index"], dtype=np.int64)
    if "alljet_counts" in flat and n:  # the jets must be the full collection in file order
        all_counts = np.asarray(flat["alljet_counts"], dtype=np.int64)
        same = np.array_equal(counts, all_counts)
        if same:
            same = np.array_equal(_f64(flat["alljet_eta"])[_starts(all_counts)[jet_event] + jet_index], jets["eta"])
        if not same:
            raise ValueError(
                "JetCalibration: the jets are not the file's jet collection in file order, so their constituents cannot be "
                "found; keep the original position in a field: jets = ak.with_field(events.Jet, "
                "ak.local_index(events.Jet, axis=1), 'jet_index') before selecting, and pass index_field='jet_index'"
            )
    for name in types:
        out.constituents[name] = _constituents(features.constituents[name], flat, jets, pt_raw, jet_event, jet_index)
    return out


# ---------------------------------------------------------------------------
# training datasets (written by crema calib-dataset)
# ---------------------------------------------------------------------------
TREE = "Jets"


def read_manifest(directory: str | os.PathLike) -> dict:
    """``data.yaml`` of a calibration dataset directory."""
    path = Path(directory) / "data.yaml"
    data = load_yaml(path)
    if not isinstance(data, Mapping) or "shards" not in data:
        raise ConfigError(f"{path}: not a crema calibration dataset manifest (no shards)")
    return dict(data)


def _read_shard(path: Path, features: FeatureConfig, extra: Sequence[str], max_jets: int | None) -> FeatureArrays:
    import uproot

    with uproot.open(path) as f:
        tree = f[TREE]
        have = set(tree.keys())
        stop = tree.num_entries if max_jets is None else min(tree.num_entries, max_jets)

        def read(branches: list[str], where: str) -> dict[str, np.ndarray]:
            missing = [b for b in branches if b not in have]
            if missing:
                raise ConfigError(f"{where}: branch {missing[0]!r} is not in the dataset ({path}); recreate the dataset with this feature")
            arrays = tree.arrays(branches, entry_stop=stop, library="ak") if branches else {}
            return {b: ak.to_numpy(ak.flatten(arrays[b], axis=None)) for b in branches}

        jet_names, jet_cats = [k for k, _ in _num(features.jet)], [k for k, _ in _cat(features.jet)]
        scal = read(jet_names + jet_cats, "features.jet")
        jet = Group(_columns([scal[k] for k in jet_names], stop, np.float32), _columns([scal[k] for k in jet_cats], stop, np.int64))
        groups = {}
        for name, ctype in features.constituents.items():
            nums, cats = [f"{name}_{k}" for k, _ in _num(ctype)], [f"{name}_{k}" for k, _ in _cat(ctype)]
            arr = read([f"n{name}", *nums, *cats], f"features.constituents.{name}")
            counts = arr[f"n{name}"].astype(np.int64)
            m = int(counts.sum())
            groups[name] = Group(_columns([arr[k] for k in nums], m, np.float32), _columns([arr[k] for k in cats], m, np.int64),
                                 np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))
        return FeatureArrays(jet, groups, read(list(extra), "dataset"))


def load_dataset(directory: str | os.PathLike, features: FeatureConfig, *, max_jets: int | None = None,
                 extra: Sequence[str] = ("target", "flavour")) -> FeatureArrays:
    """Read the shards of a calibration dataset into :class:`FeatureArrays` (raw features).

    Only the branches ``features`` need are read.  ``max_jets``: read shards in order until
    that many jets are loaded.  ``extra``: further per-jet branches (into ``.extra``).
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    written = manifest.get("constituent_types", [])
    for name in features.types():
        if name not in written:
            raise ConfigError(f"features.constituents.{name}: the dataset {directory} has no constituents of this type "
                              f"(it has: {', '.join(written) or 'none'}); remove the type from the config or use a PFNano dataset")
    parts: list[FeatureArrays] = []
    loaded = 0
    for shard in manifest["shards"]:
        if max_jets is not None and loaded >= max_jets:
            break
        part = _read_shard(directory / shard["path"], features, extra, None if max_jets is None else max_jets - loaded)
        parts.append(part)
        loaded += len(part)
    return _concat(parts, features, extra)


def _concat(parts: list[FeatureArrays], features: FeatureConfig, extra: Sequence[str]) -> FeatureArrays:
    if not parts:
        nj, cj = len(features.jet.numerical), len(features.jet.categorical)
        groups = {t: Group(np.zeros((0, len(c.numerical)), np.float32), np.zeros((0, len(c.categorical)), np.int64), np.zeros(1, np.int64))
                  for t, c in features.constituents.items()}
        return FeatureArrays(Group(np.zeros((0, nj), np.float32), np.zeros((0, cj), np.int64)), groups,
                             {k: np.zeros(0) for k in extra})
    groups = {}
    for t in parts[0].constituents:
        gs = [p.constituents[t] for p in parts]
        counts = np.concatenate([g.counts for g in gs])
        groups[t] = Group(np.concatenate([g.numerical for g in gs]), np.concatenate([g.categorical for g in gs]),
                          np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))
    return FeatureArrays(
        Group(np.concatenate([p.jet.numerical for p in parts]), np.concatenate([p.jet.categorical for p in parts])),
        groups,
        {k: np.concatenate([p.extra[k] for p in parts]) for k in parts[0].extra},
    )


def write_transform(directory: str | os.PathLike, features: str | os.PathLike | Mapping | FeatureConfig | None = None,
                    *, max_jets: int | None = 2_000_000, output: str | os.PathLike | None = None) -> Path:
    """Fit the transform on a calibration dataset and write it (default ``DIR/transform.yaml``).

    ``features``: a master/feature config (default: the features the dataset was written with).
    """
    directory = Path(directory)
    if features is None:
        features = read_manifest(directory).get("features")
        if features is None:
            raise ConfigError(f"{directory}/data.yaml: records no features; pass a feature config")
    features = load_features(features)
    data = load_dataset(directory, features, max_jets=max_jets, extra=())
    return save_transform(fit_transform(features, data), Path(output) if output else directory / "transform.yaml")


# ---------------------------------------------------------------------------
# ONNX wrapper
# ---------------------------------------------------------------------------
def input_names(features: FeatureConfig) -> list[str]:
    """ONNX input names in order (see the module docstring)."""
    names = ["jet"] + (["jet_cat"] if features.jet.categorical else [])
    for t, c in features.constituents.items():
        names += [f"{t}_data", f"{t}_mask"] + ([f"{t}_cat"] if c.categorical else [])
    return names


def pad(group: Group, rows: np.ndarray, min_slots: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Zero-padded ``(B, N, D)`` data, ``(B, N)`` mask and ``(B, N, C)`` codes of jets ``rows``;
    ``N`` = the largest count among them (at least ``min_slots``)."""
    counts = group.counts[rows]
    B = len(rows)
    N = max(int(counts.max()) if B else 0, min_slots)
    starts = group.offsets[:-1][rows]
    total = int(counts.sum())
    slot = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    row = np.repeat(np.arange(B), counts)
    src = np.repeat(starts, counts) + slot
    data = np.zeros((B, N, group.numerical.shape[1]), dtype=np.float32)
    cat = np.zeros((B, N, group.categorical.shape[1]), dtype=np.int64)
    mask = np.zeros((B, N), dtype=bool)
    data[row, slot] = group.numerical[src]
    cat[row, slot] = group.categorical[src]
    mask[row, slot] = True
    return data, mask, cat


def feeds(features: FeatureConfig, arrays: FeatureArrays, rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """ONNX feeds for jets ``rows`` (default all) of raw feature arrays."""
    rows = np.arange(len(arrays)) if rows is None else np.asarray(rows, dtype=np.int64)
    out = {"jet": arrays.jet.numerical[rows]}
    if features.jet.categorical:
        out["jet_cat"] = arrays.jet.categorical[rows]
    for t, c in features.constituents.items():
        data, mask, cat = pad(arrays.constituents[t], rows)
        out[f"{t}_data"], out[f"{t}_mask"] = data, mask
        if c.categorical:
            out[f"{t}_cat"] = cat
    return out


class JetCalibration(OnnxModel):
    """A trained jet calibration (``crema calib-train`` output) evaluated on NanoEvents jets.

    Parameters
    ----------
    model_dir:
        Directory with ``model.onnx`` and ``config.yaml`` (its ``features`` section).
        ``transform.yaml`` there documents the transform, which is part of the graph.
    index_field:
        Only for models with constituents: jet field holding each jet's position in
        ``events[jets_collection]`` (the collection the PFNano tables point to).  Without
        that field the jets must be the collection itself in file order (checked).
    jets_collection:
        The jet collection of the constituent tables (``Jet``).
    batch_size:
        Jets per ``session.run``; jets are grouped by constituent multiplicity so that a
        batch pads little.
    Other keyword arguments go to :class:`~crema.models.onnx.OnnxModel`.

    ``model(jets, events)`` returns the correction factor ``pt_gen / pt_raw`` per jet with
    the jets' layout (float32); :meth:`calibrated_pt` gives ``pt_raw * factor``.  The jets
    need ``pt``, ``eta``, ``phi``, ``rawFactor`` and the fields of the jet-level features;
    ``events`` provides rho/nPV and the constituent tables.  Results agree with the torch
    network to float32 rounding; the padding of a batch (its largest multiplicity) can
    change the last bit, so they are not bit-identical across different chunkings.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike,
        *,
        index_field: str = "jet_index",
        jets_collection: str = "Jet",
        threads: int = 1,
        providers: str | Sequence[ProviderSpec] | None = None,
        batch_size: int | None = 1024,
        row_block: int = 48,
    ) -> None:
        model_dir = Path(model_dir)
        super().__init__(model_dir / "model.onnx", threads=threads, providers=providers, batch_size=batch_size, row_block=row_block)
        self.model_dir = str(model_dir.resolve())
        self.features = load_features(model_dir / "config.yaml")
        self.index_field = index_field
        self.jets_collection = jets_collection
        self._check_export()

    def _io(self) -> tuple[dict[str, list], set[str]]:
        """Input shapes (None: dynamic) and output names, read without a session where ``onnx`` is installed."""
        try:
            import onnx
        except ImportError:  # onnx is optional: ask onnxruntime (creates this process's session)
            sess = self.session()
            return ({i.name: [d if isinstance(d, int) else None for d in i.shape] for i in sess.get_inputs()},
                    {o.name for o in sess.get_outputs()})
        model = onnx.load(self.model_paths[self.DEFAULT_MODEL], load_external_data=False)
        shapes = {i.name: [d.dim_value if d.HasField("dim_value") else None for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
        return shapes, {o.name for o in model.graph.output}

    def _check_export(self) -> None:
        shapes, outputs = self._io()
        wanted = input_names(self.features)
        if list(shapes) != wanted:
            raise ValueError(f"JetCalibration: {self.model_paths['model']} has inputs {list(shapes)}, its config implies {wanted}")
        dims = {"jet": len(self.features.jet.numerical), "jet_cat": len(self.features.jet.categorical)}
        for t, c in self.features.constituents.items():
            dims[f"{t}_data"], dims[f"{t}_cat"] = len(c.numerical), len(c.categorical)
        for name, shape in shapes.items():
            if name in dims and shape[-1] not in (None, dims[name]):
                raise ValueError(f"JetCalibration: input {name} has {shape[-1]} features, the config {dims[name]}")
        if "correction" not in outputs:
            raise ValueError("JetCalibration: the export has no output 'correction'")

    # -- numpy ----------------------------------------------------------------
    def evaluate(self, arrays: FeatureArrays) -> np.ndarray:
        """Correction factors (float32) of raw feature arrays, batched by constituent multiplicity."""
        n = len(arrays)
        if n == 0 or not self.features.constituents:
            return self.run(feeds(self.features, arrays), output_names=["correction"])["correction"].astype(np.float32)
        size = self.batch_size or n
        multiplicity = np.max(np.stack([g.counts for g in arrays.constituents.values()]), axis=0)
        order = np.argsort(multiplicity, kind="stable")
        out = np.empty(n, dtype=np.float32)
        for start in range(0, n, size):
            rows = order[start : start + size]
            out[rows] = self.run(feeds(self.features, arrays, rows), output_names=["correction"])["correction"]
        return out

    def numpy_call(self, **flat: np.ndarray) -> np.ndarray:
        """Flat arrays from :meth:`prepare_awkward` -> flat correction factors (one per jet)."""
        return self.evaluate(compute_features(self.features, flat))

    # -- awkward --------------------------------------------------------------
    def __call__(self, jets, events):
        """Correction factor per jet (awkward or dask-awkward, the jets' layout)."""
        return super().__call__(jets, events)

    def prepare_awkward(self, jets, events) -> tuple[tuple, dict]:
        lib = self.get_awkward_lib(jets, events) or ak
        index = jets[self.index_field] if self.features.constituents and self.index_field in jets.fields else None
        return (), extract(self.features, jets, events, index, jets_collection=self.jets_collection, lib=lib)

    def postprocess_awkward(self, return_array, jets, events):
        lib = self.get_awkward_lib(jets, events) or ak
        return lib.unflatten(return_array, lib.num(jets["pt"], axis=1))

    def required_branches(self) -> dict[str, str]:
        """NanoAOD branches the features read -> why (for a processor's ``required_branches``).

        Constituent features other than kinematics, charge and pdgId are looked up at run time
        (candidate collection first, then the association table) and are not listed.
        """
        why = "jet calibration DNN inputs"
        jc = self.jets_collection
        need = {f"{jc}_{f}": why for f in jet_fields(self.features)}
        for name in list(self.features.jet.numerical) + list(self.features.jet.categorical):
            if name in EVENT_FEATURES:
                need[EVENT_FEATURES[name][0]] = f"{why} ({name}; NanoAODv12 name)"
        for name, ctype in self.features.constituents.items():
            src = SOURCES[ctype.source]
            for f in (src.jet_index, src.cand_index):
                need[f"{src.link}_{f}"] = f"{why} (constituents {name})"
            cands = list(_KINEMATICS) + (["charge"] if ctype.select != "all" else [])
            if ctype.pdg_ids is not None or "type" in {**ctype.numerical, **ctype.categorical}:
                cands.append("pdgId")
            for f in cands:
                need[f"{src.cands}_{f}"] = f"{why} (constituents {name})"
        return need

    def calibrated_pt(self, jets, events):
        """``pt_raw * factor`` per jet (the jets' layout)."""
        return jets["pt"] * (1 - jets["rawFactor"]) * self(jets, events)

    def __repr__(self) -> str:
        return f"JetCalibration({self.model_dir!r}, types={self.features.types()}, threads={self.threads})"
