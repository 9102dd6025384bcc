"""SPANet jet-parton assignment: event files, the assignment decoder and the ONNX inference wrapper.

SPANet (Symmetry Preserving Attention Networks) assigns reconstructed jets to
the partons of an event topology described by an *event file*.  This module

* parses and validates event files into typed objects (:func:`load_event_file`,
  :class:`EventFile`); the ttH and HH->bbWW single-lepton files ship with
  crema (:func:`builtin_event_file`);
* decodes the network's joint assignment probabilities into jet indices
  (:func:`decode`), vectorised over events, without the two defects of
  SPANet's own decoder (see ``docs/spanet.md``);
* evaluates an ONNX export on NanoEvents jets and MET (:class:`SPANet`).

The training-file writer lives in :mod:`crema.processors.spanet_dataset`.
"""

from __future__ import annotations

import functools
import itertools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np

from crema.models.onnx import OnnxModel, ProviderSpec
from crema.schema import ConfigError, load_yaml

__all__ = [
    "DEFAULT_TAGS",
    "NORMALIZATIONS",
    "Decoded",
    "EventFile",
    "InputSource",
    "Particle",
    "SPANet",
    "assignment_purity",
    "assignment_targets",
    "builtin_event_file",
    "decode",
    "event_file_names",
    "jet_features",
    "load_event_file",
    "met_features",
    "network_inputs",
    "parse_event_file",
    "shipped_model",
]

#: Allowed per-feature normalisations of an event file.
NORMALIZATIONS = ("log_normalize", "normalize", "none")

#: Default jet field for each tag feature (see ``docs/spanet.md``).  A string
#: is a NanoAOD jet field, a number a constant.  Why these: NanoAODv12 PNet
#: scores are ratios ``B = b/(b+c+uds+g)``, ``QvG = uds/(uds+g)``,
#: ``CvL = c/(c+uds+g)``; ``btag`` is the b score, ``qtag`` the light-quark
#: (vs gluon) score (the W->qq' daughters), ``etag``/``utag`` are SPANet's
#: electron/muon object flags, 0 for jets (crema keeps leptons out of Momenta).
DEFAULT_TAGS: dict[str, str | float] = {"btag": "btagPNetB", "qtag": "btagPNetQvG", "etag": 0.0, "utag": 0.0}


# ---------------------------------------------------------------------------
# event files
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class InputSource:
    """One input of the network: a jet-like sequence or a global (one-per-event) vector."""

    name: str
    sequential: bool
    features: tuple[tuple[str, str], ...]  # (feature, normalisation) in event-file order

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f for f, _ in self.features)


@dataclass(frozen=True)
class Particle:
    """A resonance with its decay products and the symmetry groups among them."""

    name: str
    products: tuple[str, ...]
    permutations: tuple[tuple[str, ...], ...] = ()  # each group: fully interchangeable products

    @property
    def groups(self) -> tuple[tuple[int, ...], ...]:
        """Permutation groups as product positions (sorted)."""
        return tuple(tuple(sorted(self.products.index(p) for p in g)) for g in self.permutations)


@dataclass(frozen=True)
class EventFile:
    """A validated SPANet event file."""

    inputs: tuple[InputSource, ...]
    particles: tuple[Particle, ...]
    regressions: dict[str, tuple[str, ...]]  # target ("EVENT" or a particle) -> names
    classifications: dict[str, tuple[str, ...]]

    @property
    def sequential(self) -> tuple[InputSource, ...]:
        return tuple(i for i in self.inputs if i.sequential)

    @property
    def globals(self) -> tuple[InputSource, ...]:
        return tuple(i for i in self.inputs if not i.sequential)

    def particle(self, name: str) -> Particle:
        for p in self.particles:
            if p.name == name:
                return p
        raise KeyError(name)

    @property
    def regression_names(self) -> tuple[str, ...]:
        """ONNX output names of the regressions (``EVENT/neutrino_px`` ...)."""
        return tuple(f"{t}/{n}" for t, names in self.regressions.items() for n in names)

    @property
    def classification_names(self) -> tuple[str, ...]:
        return tuple(f"{t}/{n}" for t, names in self.classifications.items() for n in names)


def _names(value: Any, key: str) -> tuple[str, ...]:
    """A list of distinct strings (also accepts a mapping name -> anything, SPANet's long form)."""
    if isinstance(value, Mapping):
        value = list(value)
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{key}: expected a list of names, got {type(value).__name__}")
    out = []
    for i, v in enumerate(value):
        if not isinstance(v, str) or not v:
            raise ConfigError(f"{key}[{i}]: expected a name, got {v!r}")
        if v in out:
            raise ConfigError(f"{key}[{i}]: {v!r} appears twice")
        out.append(v)
    return tuple(out)


def _mapping(value: Any, key: str, allow_none: bool = False) -> Mapping:
    if value is None and allow_none:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
    return value


def parse_event_file(data: Any, where: str = "") -> EventFile:
    """Validate an event-file mapping; errors (:class:`ConfigError`) name the offending key."""

    def k(*parts: str) -> str:
        return ".".join(p for p in (where, *parts) if p)

    top = _mapping(data, k() or "top level")
    unknown = sorted(set(top) - {"INPUTS", "EVENT", "PERMUTATIONS", "REGRESSIONS", "CLASSIFICATIONS"})
    if unknown:
        raise ConfigError(f"{k(unknown[0])}: unknown key (allowed: INPUTS, EVENT, PERMUTATIONS, REGRESSIONS, CLASSIFICATIONS)")
    for required in ("INPUTS", "EVENT"):
        if required not in top:
            raise ConfigError(f"{k(required)}: required key is missing")

    inputs: list[InputSource] = []
    ins = _mapping(top["INPUTS"], k("INPUTS"))
    for kind in ins:
        if kind not in ("SEQUENTIAL", "GLOBAL"):
            raise ConfigError(f"{k('INPUTS', str(kind))}: unknown key (allowed: SEQUENTIAL, GLOBAL)")
    for kind in ("SEQUENTIAL", "GLOBAL"):
        for name, feats in _mapping(ins.get(kind), k("INPUTS", kind), allow_none=True).items():
            key = k("INPUTS", kind, str(name))
            if any(i.name == name for i in inputs):
                raise ConfigError(f"{key}: input defined twice")
            feats = _mapping(feats, key)
            if not feats:
                raise ConfigError(f"{key}: an input needs at least one feature")
            for f, norm in feats.items():
                if norm not in NORMALIZATIONS:
                    raise ConfigError(f"{key}.{f}: expected one of {', '.join(NORMALIZATIONS)}, got {norm!r}")
            inputs.append(InputSource(str(name), kind == "SEQUENTIAL", tuple((str(f), str(n)) for f, n in feats.items())))
    if not any(i.sequential for i in inputs):
        raise ConfigError(f"{k('INPUTS', 'SEQUENTIAL')}: at least one sequential input is required")

    event = _mapping(top["EVENT"], k("EVENT"))
    if not event:
        raise ConfigError(f"{k('EVENT')}: at least one particle is required")
    products = {str(p): _names(v, k("EVENT", str(p))) for p, v in event.items()}
    for p, prods in products.items():
        if not prods:
            raise ConfigError(f"{k('EVENT', p)}: a particle needs at least one product")

    perms: dict[str, tuple[tuple[str, ...], ...]] = {}
    for p, groups in _mapping(top.get("PERMUTATIONS"), k("PERMUTATIONS"), allow_none=True).items():
        key = k("PERMUTATIONS", str(p))
        if p not in products:
            raise ConfigError(f"{key}: not a particle of EVENT (known: {', '.join(products)})")
        if not isinstance(groups, (list, tuple)):
            raise ConfigError(f"{key}: expected a list of permutation groups, e.g. [[q1, q2]]")
        seen: set[str] = set()
        parsed = []
        for i, g in enumerate(groups):
            names = _names(g, f"{key}[{i}]")
            if len(names) < 2:
                raise ConfigError(f"{key}[{i}]: a permutation group needs at least two products")
            for j, n in enumerate(names):
                if n not in products[p]:
                    raise ConfigError(f"{key}[{i}][{j}]: {n!r} is not a product of {p} ({', '.join(products[p])})")
                if n in seen:
                    raise ConfigError(f"{key}[{i}][{j}]: {n!r} is in two permutation groups")
                seen.add(n)
            parsed.append(names)
        perms[str(p)] = tuple(parsed)
    particles = tuple(Particle(p, prods, perms.get(p, ())) for p, prods in products.items())

    def targets(section: str) -> dict[str, tuple[str, ...]]:
        out = {}
        for t, names in _mapping(top.get(section), k(section), allow_none=True).items():
            if t != "EVENT" and t not in products:
                raise ConfigError(f"{k(section, str(t))}: expected EVENT or a particle of EVENT")
            out[str(t)] = _names(names, k(section, str(t)))
        return out

    return EventFile(tuple(inputs), particles, targets("REGRESSIONS"), targets("CLASSIFICATIONS"))


def load_event_file(path: str | os.PathLike) -> EventFile:
    """Read and validate an event file; errors read ``FILE: key: message``."""
    data = load_yaml(path)
    try:
        return parse_event_file(data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def _event_dir():
    return resources.files("crema") / "data" / "spanet"


def event_file_names() -> list[str]:
    """Names of the event files shipped with crema (``tth_sl``, ``hh_sl``)."""
    return sorted(p.name[:-5] for p in _event_dir().iterdir() if p.name.endswith(".yaml"))


def builtin_event_file(name_or_path: str | os.PathLike) -> EventFile:
    """A shipped event file by name (``tth_sl``) or any event file by path."""
    if isinstance(name_or_path, EventFile):
        return name_or_path
    path = Path(name_or_path)
    if path.suffix:
        return load_event_file(path)
    resource = _event_dir() / f"{name_or_path}.yaml"
    if not resource.is_file():
        raise ConfigError(f"SPANet event file {name_or_path!r}: not shipped (known: {', '.join(event_file_names())})")
    with resources.as_file(resource) as p:
        return load_event_file(p)


def shipped_model(name: str) -> Path:
    """Path of a SPANet ONNX export shipped with crema (``tth_sl``, ``hh_sl``); a path is returned as is."""
    if Path(name).suffix == ".onnx":
        return Path(name)
    resource = _event_dir() / f"{name}.onnx"
    if not resource.is_file():
        known = sorted(p.name[:-5] for p in _event_dir().iterdir() if p.name.endswith(".onnx"))
        raise ConfigError(f"SPANet model {name!r}: not shipped (known: {', '.join(known)}; or give a .onnx path)")
    return Path(str(resource))


# ---------------------------------------------------------------------------
# input features
# ---------------------------------------------------------------------------
def _log_if(values: np.ndarray, norm: str) -> np.ndarray:
    # log(1+x) is applied outside the graph for log_normalize (mean/std are inside)
    return np.log1p(np.maximum(values, 0.0)) if norm == "log_normalize" else values


def jet_features(
    source: InputSource, jets: Mapping[str, np.ndarray], tags: Mapping[str, str | float] = DEFAULT_TAGS
) -> np.ndarray:
    """``(..., D)`` float32 features of a sequential input from jet arrays (any common shape).

    ``jets`` maps NanoAOD jet fields (``pt``, ``eta``, ``phi``, ``mass``, tag
    scores) to arrays.  Known features: ``pt``, ``mass``, ``eta``, ``phi``,
    ``sin_phi``, ``cos_phi``, ``px``, ``py``, ``pz``, ``energy``/``e`` and the
    tag features of ``tags`` (field name or constant).  ``log_normalize``
    features get ``log(1+x)``; the standardisation is left to the network.
    """
    pt = np.asarray(jets["pt"], dtype=np.float64)
    phi = np.asarray(jets["phi"], dtype=np.float64)
    cols = []
    for feat, norm in source.features:
        if feat in tags:
            tag = tags[feat]
            v = np.full(pt.shape, float(tag)) if isinstance(tag, (int, float)) else np.asarray(jets[tag], dtype=np.float64)
            v = np.where(v < 0, 0.0, v)  # NanoAOD stores -1 for "no score"
        elif feat == "pt":
            v = pt
        elif feat == "mass":
            v = np.asarray(jets["mass"], dtype=np.float64)
        elif feat == "eta":
            v = np.asarray(jets["eta"], dtype=np.float64)
        elif feat == "phi":
            v = phi
        elif feat == "sin_phi":
            v = np.sin(phi)
        elif feat == "cos_phi":
            v = np.cos(phi)
        elif feat == "px":
            v = pt * np.cos(phi)
        elif feat == "py":
            v = pt * np.sin(phi)
        elif feat == "pz":
            v = pt * np.sinh(np.asarray(jets["eta"], dtype=np.float64))
        elif feat in ("energy", "e"):
            pz = pt * np.sinh(np.asarray(jets["eta"], dtype=np.float64))
            v = np.sqrt(pt**2 + pz**2 + np.asarray(jets["mass"], dtype=np.float64) ** 2)
        else:
            raise KeyError(f"SPANet input {source.name}: no rule for jet feature {feat!r} (add it to tags?)")
        cols.append(_log_if(v, norm))
    return np.stack(cols, axis=-1).astype(np.float32)


def met_features(source: InputSource, met: Mapping[str, np.ndarray]) -> np.ndarray:
    """``(n, D)`` float32 features of a global input from MET arrays (``pt``, ``phi``, optional ``sumEt``)."""
    pt = np.asarray(met["pt"], dtype=np.float64)
    phi = np.asarray(met["phi"], dtype=np.float64)
    rules = {
        "met": lambda: pt,
        "pt": lambda: pt,
        "phi": lambda: phi,
        "sin_phi": lambda: np.sin(phi),
        "cos_phi": lambda: np.cos(phi),
        "px": lambda: pt * np.cos(phi),
        "py": lambda: pt * np.sin(phi),
        "sumet": lambda: np.asarray(met["sumEt"], dtype=np.float64),
    }
    cols = []
    for feat, norm in source.features:
        if feat not in rules:
            raise KeyError(f"SPANet input {source.name}: no rule for global feature {feat!r}")
        cols.append(_log_if(rules[feat](), norm))
    return np.stack(cols, axis=-1).astype(np.float32)


def network_inputs(arrays: Mapping[str, np.ndarray], event: EventFile) -> dict[str, np.ndarray]:
    """ONNX feeds (``<input>_data``, ``<input>_mask``) from training-file arrays (``INPUTS/...`` keys).

    The training file holds physical values; ``log_normalize`` features get their ``log(1+x)``
    here, as the wrapper does for NanoEvents (the standardisation is inside the network).
    """
    feeds = {}
    for src in event.inputs:
        cols = [_log_if(np.asarray(arrays[f"INPUTS/{src.name}/{feat}"], dtype=np.float32), norm)
                for feat, norm in src.features]
        x = np.stack(cols, axis=-1).astype(np.float32)
        if src.sequential:
            mask = np.asarray(arrays[f"INPUTS/{src.name}/MASK"], dtype=bool)
            x = np.where(mask[..., None], x, np.float32(0))
        else:
            x = x[:, None, :]
            mask = np.ones((len(x), 1), dtype=bool)
        feeds[f"{src.name}_data"], feeds[f"{src.name}_mask"] = x, mask
    return feeds


def assignment_targets(arrays: Mapping[str, np.ndarray], event: EventFile) -> dict[str, np.ndarray]:
    """Per particle the ``(N, k)`` target jet slots of a training file, symmetric products sorted."""
    out = {}
    for p in event.particles:
        t = np.stack([np.asarray(arrays[f"TARGETS/{p.name}/{q}"]) for q in p.products], axis=1).astype(np.int64)
        for g in p.groups:
            t[:, list(g)] = np.sort(t[:, list(g)], axis=1)
        out[p.name] = t
    return out


def assignment_purity(predicted: Mapping[str, np.ndarray], targets: Mapping[str, np.ndarray],
                      event: EventFile) -> dict[str, Any]:
    """Purities of predicted jet slots against targets (both ``(N, k)`` per particle).

    A particle counts where all its products are matched (targets >= 0); it is correct when
    every product's jet agrees (symmetric products in any order).  ``event``: over events with
    every particle matched, the fraction with all particles correct.  Also the counts used.
    """
    full = np.ones(len(next(iter(targets.values()))), dtype=bool)
    correct_all = np.ones_like(full)
    out: dict[str, Any] = {"particles": {}, "counts": {}}
    for p in event.particles:
        t, pr = np.array(targets[p.name]), np.array(predicted[p.name])
        for g in p.groups:
            t[:, list(g)] = np.sort(t[:, list(g)], axis=1)
            pr[:, list(g)] = np.sort(pr[:, list(g)], axis=1)
        matched = (t >= 0).all(axis=1)
        ok = (t == pr).all(axis=1) & matched
        full &= matched
        correct_all &= ok
        out["particles"][p.name] = float(ok.sum() / matched.sum()) if matched.any() else float("nan")
        out["counts"][p.name] = int(matched.sum())
    out["event"] = float((correct_all & full).sum() / full.sum()) if full.any() else float("nan")
    out["counts"]["event"] = int(full.sum())
    return out


# ---------------------------------------------------------------------------
# decoder
# ---------------------------------------------------------------------------
@dataclass
class Decoded:
    """Decoder result: per particle ``(n, k)`` jet indices (-1: not assigned) and the chosen tuple's probability."""

    assignments: dict[str, np.ndarray]
    probabilities: dict[str, np.ndarray]  # (n,) float32, 0 when not assigned
    detection: dict[str, np.ndarray]  # (n,) float32, passed through (NaN if not given)


@functools.lru_cache(maxsize=64)
def _candidates(N: int, k: int, groups: tuple[tuple[int, ...], ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The canonical k-tuples of N jets: distinct jets, increasing within each permutation group.

    Returns their flat indices into the (N,)*k tensor ``(C,)`` in increasing order, the flat
    indices of every group permutation of them ``(P, C)``, their jets ``(C, k)`` and
    ``contains`` ``(N, C)`` (jet j is in candidate c).  Each unordered assignment appears once.
    """
    idx = np.indices((N,) * k).reshape(k, -1)
    valid = np.ones(idx.shape[1], dtype=bool)
    for a, b in itertools.combinations(range(k), 2):
        valid &= idx[a] != idx[b]
    for g in groups:
        for a, b in itertools.pairwise(g):
            valid &= idx[a] < idx[b]
    flat = np.flatnonzero(valid)
    jets = idx[:, flat].T.copy()
    perms = []
    for choice in itertools.product(*[list(itertools.permutations(g)) for g in groups]):
        axes = list(range(k))
        for g, perm in zip(groups, choice):
            for src, dst in zip(g, perm):
                axes[src] = dst
        perms.append(np.ravel_multi_index(tuple(jets[:, a] for a in axes), (N,) * k))
    contains = np.zeros((N, len(flat)), dtype=bool)
    for a in range(k):
        contains[jets[:, a], np.arange(len(flat))] = True
    return flat, np.array(perms if perms else [flat]), jets, contains


def _candidate_scores(prob: np.ndarray, perms: np.ndarray, jets: np.ndarray, n_valid: np.ndarray | None) -> np.ndarray:
    """``(B, C)`` candidate scores: the maximum over the permutation group (so a slightly asymmetric
    export cannot make the result order-dependent), -inf where a jet is padding (index >=
    ``n_valid``) or the probability is not positive and finite."""
    B = prob.shape[0]
    prob = np.asarray(prob, dtype=np.float32)
    p = prob.reshape(B, int(np.prod(prob.shape[1:])))
    score = None
    for perm in perms:  # (gathered first: only the candidates are touched)
        g = np.take(p, perm, axis=1)
        g[~np.isfinite(g)] = 0.0  # non-finite entries count as zero, as a missing tuple
        score = g if score is None else np.maximum(score, g)
    ok = score > 0
    if n_valid is not None:
        ok &= jets.max(axis=1)[None, :] < np.asarray(n_valid).reshape(B, 1)
    return np.where(ok, score, np.float32(-np.inf))


def decode(
    assignment: Mapping[str, np.ndarray],
    event: EventFile,
    n_jets: np.ndarray | None = None,
    detection: Mapping[str, np.ndarray] | None = None,
) -> Decoded:
    """Greedy global decoding of joint assignment probabilities into jet indices.

    ``assignment[particle]`` has shape ``(B, N, ..., N)`` (one axis per
    product, in event-file order).  At each step, over all particles not yet
    assigned, the single most probable valid tuple of unused jets is taken;
    its jets are then unavailable to every other particle.  An event whose
    remaining particles have no valid tuple stops there (those particles get
    -1).  Within a permutation group jets are reported in increasing index
    order.  Vectorised over events; loops only over particles.

    ``n_jets`` (``(B,)``) marks slots ``>= n_jets`` as padding (never assigned).
    Valid tuples are distinct, unpadded jets with a positive finite probability;
    each unordered assignment is scored once (the maximum over its permutation group).
    """
    particles = event.particles
    first = np.asarray(next(iter(assignment.values())))
    B, N = first.shape[0], first.shape[1]
    cands = {p.name: _candidates(N, len(p.products), tuple(tuple(g) for g in p.groups)) for p in particles}
    scores = {p.name: _candidate_scores(assignment[p.name], cands[p.name][1], cands[p.name][2], n_jets)
              for p in particles}
    out = {p.name: np.full((B, len(p.products)), -1, dtype=np.int64) for p in particles}
    probs = {p.name: np.zeros(B, dtype=np.float32) for p in particles}
    done = np.zeros((B, len(particles)), dtype=bool)
    active = np.ones(B, dtype=bool)
    rows = np.arange(B)
    for _ in particles:
        best = np.full((B, len(particles)), -np.inf, dtype=np.float32)
        arg = np.zeros((B, len(particles)), dtype=np.int64)
        for j, p in enumerate(particles):
            if scores[p.name].shape[1]:
                arg[:, j] = np.argmax(scores[p.name], axis=1)
                best[:, j] = scores[p.name][rows, arg[:, j]]
        best[done] = -np.inf
        choice = np.argmax(best, axis=1)
        top = best[rows, choice]
        active &= np.isfinite(top)  # exhausted events stop for good
        for j, p in enumerate(particles):
            sel = np.flatnonzero(active & (choice == j))
            if not len(sel):
                continue
            jets = cands[p.name][2][arg[sel, j]]  # (n, k)
            out[p.name][sel] = jets
            probs[p.name][sel] = top[sel]
            done[sel, j] = True
            for q in particles:  # a candidate with a used jet is out, for every particle
                sc = scores[q.name]
                sc[sel] = np.where(cands[q.name][3][jets].any(axis=1), np.float32(-np.inf), sc[sel])
    det = {
        p.name: (np.asarray(detection[p.name], dtype=np.float32) if detection and p.name in detection else np.full(B, np.nan, np.float32))
        for p in particles
    }
    return Decoded(out, probs, det)


# ---------------------------------------------------------------------------
# ONNX wrapper
# ---------------------------------------------------------------------------
def _read_io(path: str) -> tuple[dict[str, tuple], set[str]]:
    """Input shapes (``None`` for dynamic dimensions) and output names of an ONNX file, without a session."""
    import onnx

    model = onnx.load(path, load_external_data=False)
    shapes = {}
    for inp in model.graph.input:
        dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim)
        shapes[inp.name] = dims
    return shapes, {o.name for o in model.graph.output}


class SPANet(OnnxModel):
    """A SPANet ONNX export evaluated on NanoEvents jets and MET.

    Parameters
    ----------
    model_path:
        The ``.onnx`` export (inputs ``<input>_data``/``<input>_mask`` per event-file input,
        outputs ``<particle>_assignment_probability``, ``<particle>_detection_probability``,
        ``EVENT/<regression>``, ``EVENT/<classification>``).
    event_file:
        Its event file: a shipped name (``tth_sl``), a path or an :class:`EventFile`.
    tags:
        Jet field (or constant) of each tag feature; default :data:`DEFAULT_TAGS`.
    max_jets:
        Jet slots to pad/clip to when the export's jet axis is dynamic (SPANet's own
        exporter); must agree with a fixed axis.
    Other keyword arguments go to :class:`~crema.models.onnx.OnnxModel`.

    Call it as ``model(jets, met)`` with the selected jets (any order: they are
    sorted by pt here) and the MET record (``pt``, ``phi``, ``sumEt`` if used).
    The result has one record per event: per particle ``<particle>`` the jet
    indices into the given (unpadded, unsorted) jet collection (-1: not
    assigned), ``<particle>_probability`` (chosen tuple), ``<particle>_detection``,
    then the regressions and class-probability vectors (``/`` replaced by ``_``).
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        event_file: str | os.PathLike | EventFile,
        *,
        tags: Mapping[str, str | float] | None = None,
        threads: int = 1,
        providers: str | Sequence[ProviderSpec] | None = None,
        batch_size: int | None = 4096,
        row_block: int = 48,
        max_jets: int | None = None,
    ) -> None:
        super().__init__(model_path, threads=threads, providers=providers, batch_size=batch_size, row_block=row_block)
        self.event = builtin_event_file(event_file) if not isinstance(event_file, EventFile) else event_file
        self.tags = dict(DEFAULT_TAGS if tags is None else tags)
        if len(self.event.sequential) != 1:
            raise ConfigError("SPANet wrapper: exactly one sequential input (the jets) is supported")
        shapes, outputs = _read_io(self.model_paths[self.DEFAULT_MODEL])
        for src in self.event.inputs:
            # (an exporter may drop a mask input the graph does not use; the data input must be there)
            if f"{src.name}_data" not in shapes:
                raise KeyError(f"SPANet export lacks input {src.name}_data of the event file")
            dims = shapes[f"{src.name}_data"]
            if dims[-1] is not None and dims[-1] != len(src.features):
                raise ValueError(f"SPANet export: {src.name}_data has {dims[-1]} features, event file {len(src.features)}")
        wanted = [f"{p.name}_{kind}_probability" for p in self.event.particles for kind in ("assignment", "detection")]
        missing = [o for o in wanted + list(self.event.regression_names + self.event.classification_names) if o not in outputs]
        if missing:
            raise KeyError(f"SPANet export lacks outputs {missing} of the event file")
        fixed = shapes[f"{self.event.sequential[0].name}_data"][1]
        if fixed and max_jets is not None and max_jets != fixed:
            raise ValueError(f"SPANet export has {fixed} jet slots, max_jets={max_jets} was asked for")
        # SPANet's own exporter leaves the jet axis dynamic: then the caller says how many slots
        self.max_jets = fixed or max_jets
        if not self.max_jets:
            raise ValueError("SPANet export: the jet axis is dynamic in the ONNX input shape; pass max_jets")

    # -- numpy --------------------------------------------------------------
    def inputs(self, jets: Mapping[str, np.ndarray], n_jets: np.ndarray, met: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """ONNX feeds from padded ``(B, max_jets)`` pt-ordered jet arrays, their counts and MET arrays."""
        seq = self.event.sequential[0]
        n = len(n_jets)
        mask = np.arange(self.max_jets)[None, :] < np.minimum(n_jets, self.max_jets)[:, None]
        data = jet_features(seq, jets, self.tags)
        feeds = {f"{seq.name}_data": np.where(mask[..., None], data, np.float32(0)), f"{seq.name}_mask": mask}
        for g in self.event.globals:
            feeds[f"{g.name}_data"] = met_features(g, met).reshape(n, 1, len(g.features))
            feeds[f"{g.name}_mask"] = np.ones((n, 1), dtype=bool)
        return feeds

    def evaluate(self, feeds: Mapping[str, np.ndarray]) -> tuple[Decoded, dict[str, np.ndarray]]:
        """Run the export on ready feeds and decode; returns (decoded, raw outputs)."""
        raw = self.run(feeds)
        seq = self.event.sequential[0]
        n_valid = np.asarray(feeds[f"{seq.name}_mask"]).sum(axis=1)
        dec = decode(
            {p.name: raw[f"{p.name}_assignment_probability"] for p in self.event.particles},
            self.event,
            n_valid,
            {p.name: raw[f"{p.name}_detection_probability"] for p in self.event.particles},
        )
        return dec, raw

    def padded_jets(self, counts: np.ndarray, order: np.ndarray,
                    flat: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Flat jet fields -> ``(B, max_jets)`` arrays in pt order (zero padded, clipped), and each
        slot's index in the original collection (-1: padding)."""
        counts = np.asarray(counts, dtype=np.int64)
        order = np.asarray(order, dtype=np.int64)
        n, J = len(counts), self.max_jets
        starts = np.cumsum(counts) - counts
        local = np.arange(int(counts.sum())) - np.repeat(starts, counts)
        keep = local < J
        dest = (np.repeat(np.arange(n) * J, counts) + local)[keep]
        src = (np.repeat(starts, counts) + order)[keep]
        jets = {}
        for name, values in flat.items():
            arr = np.zeros(n * J, dtype=np.float64)
            arr[dest] = np.asarray(values, dtype=np.float64)[src]
            jets[name] = arr.reshape(n, J)
        original = np.full(n * J, -1, dtype=np.int64)
        original[dest] = order[keep]
        return jets, original.reshape(n, J)

    def numpy_call(self, counts: np.ndarray, order: np.ndarray, met_pt: np.ndarray, met_phi: np.ndarray,
                   met_sumEt: np.ndarray | None = None, **flat: np.ndarray) -> dict[str, np.ndarray]:
        """Flat jet arrays (+ per-event pt order) -> padded inputs -> outputs with original jet indices."""
        counts = np.asarray(counts, dtype=np.int64)
        jets, original = self.padded_jets(counts, order, flat)
        met = {"pt": met_pt, "phi": met_phi}
        if met_sumEt is not None:
            met["sumEt"] = met_sumEt
        dec, raw = self.evaluate(self.inputs(jets, counts, met))
        out: dict[str, np.ndarray] = {}
        for p in self.event.particles:
            slots = dec.assignments[p.name]
            out[p.name] = np.where(slots >= 0, np.take_along_axis(original, np.maximum(slots, 0), axis=1), -1)
            out[f"{p.name}_probability"] = dec.probabilities[p.name]
            out[f"{p.name}_detection"] = dec.detection[p.name]
        for name in self.event.regression_names + self.event.classification_names:
            out[name.replace("/", "_")] = raw[name]
        return out

    # -- awkward -------------------------------------------------------------
    def __call__(self, jets, met):
        """Evaluate on awkward (or dask-awkward) jets and MET."""
        return super().__call__(jets, met)

    def prepare_awkward(self, jets, met) -> tuple[tuple, dict]:
        """Jets -> flat arrays plus the flattened per-event pt order; MET -> per-event arrays."""
        lib = self.get_awkward_lib(jets, met) or ak
        seq = self.event.sequential[0]
        fields = {"pt", "eta", "phi", "mass"} | {t for f, t in self.tags.items() if isinstance(t, str) and f in seq.feature_names}
        missing = sorted(f for f in fields if f not in jets.fields)
        if missing:
            raise KeyError(f"SPANet: jets lack fields {missing}")
        kw: dict[str, Any] = {
            "counts": lib.num(jets.pt, axis=1),
            "order": lib.flatten(lib.argsort(jets.pt, axis=1, ascending=False, stable=True), axis=1),
            "met_pt": met.pt,
            "met_phi": met.phi,
        }
        if any(f == "sumet" for g in self.event.globals for f in g.feature_names):
            kw["met_sumEt"] = met.sumEt
        for f in sorted(fields):
            kw[f] = lib.flatten(jets[f], axis=1)
        return (), kw

    def postprocess_awkward(self, return_array, *args, **kwargs):
        """Per-event record; particles as regular ``(k,)`` index lists."""
        lib = self.get_awkward_lib(*args, **kwargs) or ak
        fields = {}
        for name, arr in return_array.items():
            fields[name] = lib.from_regular(arr, axis=1) if isinstance(arr, ak.Array) and arr.ndim > 1 else arr
        return lib.zip(fields, depth_limit=1)

    def __repr__(self) -> str:
        return f"SPANet(model={self.model_paths[self.DEFAULT_MODEL]!r}, particles={[p.name for p in self.event.particles]}, max_jets={self.max_jets})"
