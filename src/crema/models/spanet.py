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
    "NORMALIZATIONS",
    "DEFAULT_TAGS",
    "InputSource",
    "Particle",
    "EventFile",
    "parse_event_file",
    "load_event_file",
    "builtin_event_file",
    "event_file_names",
    "jet_features",
    "met_features",
    "decode",
    "Decoded",
    "SPANet",
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


# ---------------------------------------------------------------------------
# decoder
# ---------------------------------------------------------------------------
@dataclass
class Decoded:
    """Decoder result: per particle ``(n, k)`` jet indices (-1: not assigned) and the chosen tuple's probability."""

    assignments: dict[str, np.ndarray]
    probabilities: dict[str, np.ndarray]  # (n,) float32, 0 when not assigned
    detection: dict[str, np.ndarray]  # (n,) float32, passed through (NaN if not given)


def _canonical_scores(prob: np.ndarray, groups: Sequence[Sequence[int]], n_valid: np.ndarray | None) -> np.ndarray:
    """``(B, N**k)`` scores: symmetrised (max over the permutation group), -inf on invalid tuples.

    Invalid: a repeated jet, a padded jet (index >= ``n_valid``), a non-finite
    or non-positive probability, or a non-canonical ordering (jet indices not
    increasing within a permutation group) -- so every unordered assignment
    appears exactly once.
    """
    B = prob.shape[0]
    k = prob.ndim - 1
    N = prob.shape[1]
    p = np.nan_to_num(np.asarray(prob, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if groups:
        # why: a model that is only approximately symmetric must not make the decoder order-dependent
        axes_perms = [list(itertools.permutations(g)) for g in groups]
        sym = p
        for choice in itertools.product(*axes_perms):
            axes = list(range(k))
            for g, perm in zip(groups, choice):
                for src, dst in zip(g, perm):
                    axes[src] = dst
            if axes != list(range(k)):
                sym = np.maximum(sym, np.transpose(p, [0] + [a + 1 for a in axes]))
        p = sym
    idx = np.indices((N,) * k, sparse=True)
    valid = np.ones((N,) * k, dtype=bool)
    for a in range(k):
        for b in range(a + 1, k):
            valid = valid & (idx[a] != idx[b])
    for g in groups:
        for a, b in zip(g[:-1], g[1:]):
            valid = valid & (idx[a] < idx[b])
    ok = valid[None] & (p > 0)
    if n_valid is not None:
        nv = np.asarray(n_valid).reshape((B,) + (1,) * k)
        for a in range(k):
            ok = ok & (idx[a][None] < nv)
    return np.where(ok, p, -np.inf).reshape(B, N**k)


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
    """
    particles = event.particles
    B = len(next(iter(assignment.values())))
    N = next(iter(assignment.values())).shape[1]
    scores = {p.name: _canonical_scores(assignment[p.name], p.groups, n_jets) for p in particles}
    k = {p.name: len(p.products) for p in particles}
    out = {p.name: np.full((B, k[p.name]), -1, dtype=np.int64) for p in particles}
    probs = {p.name: np.zeros(B, dtype=np.float32) for p in particles}
    done = np.zeros((B, len(particles)), dtype=bool)
    used = np.zeros((B, N), dtype=bool)
    active = np.ones(B, dtype=bool)
    rows = np.arange(B)
    for _ in particles:
        best = np.full((B, len(particles)), -np.inf, dtype=np.float32)
        arg = np.zeros((B, len(particles)), dtype=np.int64)
        for j, p in enumerate(particles):
            kk = k[p.name]
            # a tuple is blocked if any of its jets is already used (any number of products)
            blocked = np.zeros((B,) + (N,) * kk, dtype=bool)
            for a in range(kk):
                shape = [B] + [1] * kk
                shape[a + 1] = N
                blocked = blocked | used.reshape(shape)
            s = np.where(blocked.reshape(B, N**kk), -np.inf, scores[p.name])
            arg[:, j] = np.argmax(s, axis=1)
            best[:, j] = s[rows, arg[:, j]]
        best[done] = -np.inf
        choice = np.argmax(best, axis=1)
        top = best[rows, choice]
        active &= np.isfinite(top)  # exhausted events stop for good
        for j, p in enumerate(particles):
            sel = active & (choice == j)
            if not sel.any():
                continue
            flat = arg[sel, j]
            jets = np.stack(np.unravel_index(flat, (N,) * k[p.name]), axis=1).astype(np.int64)
            out[p.name][sel] = jets
            probs[p.name][sel] = top[sel]
            done[sel, j] = True
            r = np.repeat(np.flatnonzero(sel), k[p.name])
            used[r, jets.ravel()] = True
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
        self.max_jets = shapes[f"{self.event.sequential[0].name}_data"][1]
        if not self.max_jets:
            raise ValueError("SPANet export: the number of jet slots must be fixed in the ONNX input shape")

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

    def numpy_call(self, counts: np.ndarray, order: np.ndarray, met_pt: np.ndarray, met_phi: np.ndarray,
                   met_sumEt: np.ndarray | None = None, **flat: np.ndarray) -> dict[str, np.ndarray]:
        """Flat jet arrays (+ per-event pt order) -> padded inputs -> outputs with original jet indices."""
        counts = np.asarray(counts, dtype=np.int64)
        n, J = len(counts), self.max_jets
        starts = np.cumsum(counts) - counts
        local = np.arange(int(counts.sum())) - np.repeat(starts, counts)
        keep = local < J
        dest = (np.repeat(np.arange(n) * J, counts) + local)[keep]
        src = (np.repeat(starts, counts) + np.asarray(order, dtype=np.int64))[keep]
        jets = {}
        for name, values in flat.items():
            arr = np.zeros(n * J, dtype=np.float64)
            arr[dest] = np.asarray(values, dtype=np.float64)[src]
            jets[name] = arr.reshape(n, J)
        # slot -> index in the original collection
        original = np.full(n * J, -1, dtype=np.int64)
        original[dest] = np.asarray(order, dtype=np.int64)[keep]
        original = original.reshape(n, J)
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
