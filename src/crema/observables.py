"""The observable language: per-event quantities written as short expressions.

One parser serves histogram configs, classifier features and any other per-event column::

    Pt(Lepton1)            Eta(Jet2)            M(FatJet1)           N(BJet)
    M(Jet1+Jet2)           Pt(HbbJet1+HbbJet2)  DeltaR(Lepton1,Jet1) DeltaPhi(Lepton1,MET)
    HME.mass               SPANet.h_detection   classifier.score

``Func(Object[,Object])``: functions ``Pt Eta Phi M E`` take one object or a sum of objects
(``Jet1+Jet2+Lepton1``: the four-vector sum); ``DeltaR DeltaPhi DeltaEta`` take two;
``N`` takes a collection name (``N(Jet)``). An object is a collection name with a 1-based
index (``Jet1``: the leading jet of the collection, in the order the processor hands it) or a
singleton (``MET``: transverse only, so ``Pt``, ``Phi``, ``DeltaPhi`` and transverse sums
accept it; ``Eta``, ``M``, ``E``, ``DeltaR``, ``DeltaEta`` refuse it at parse time).
``Model.output`` names a per-event output of a model the processor ran (NaN for events of a
channel where it did not run).

Expressions are parsed once (:func:`parse`), validated against the collections and model
outputs a processor provides (an unknown name is a :class:`~crema.schema.ConfigError` naming
the key and listing what exists) and evaluated columnar by :class:`Observables` on numpy arrays
padded once per collection: a missing object (``Jet3`` in a two-jet event) gives NaN.

Conventions: ``DeltaPhi(a,b)`` is phi_a - phi_b wrapped into [-pi, pi); ``DeltaEta(a,b)`` is
eta_a - eta_b; ``DeltaR`` = sqrt(DeltaEta^2 + DeltaPhi^2); ``M`` of a sum is
sqrt(max(E^2 - p^2, 0)); ``Eta`` of a sum is asinh(pz/pt).

This module imports no processor: a processor hands :class:`Observables` a mapping of
collection name -> awkward array (fields ``pt``, ``eta``, ``phi``, ``mass``; the singleton
``MET`` only ``pt`` and ``phi``) and a mapping of model name -> per-event outputs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import awkward as ak
import numpy as np

from crema.flat import FlatFields
from crema.schema import ConfigError

__all__ = ["COLLECTIONS", "FUNCTIONS", "Expression", "Observables", "ObjectRef", "parse"]

#: collection names the language knows, with what they mean in crema's processors
COLLECTIONS: dict[str, str] = {
    "Jet": "selected central AK4 jets, pt order",
    "BJet": "b-tagged selected central AK4 jets, pt order",
    "HbbJet": "the H->bb candidate jets: the two highest b-score central jets (or SPANet's h jets)",
    "FatJet": "selected AK8 jets, pt order",
    "Lepton": "selected electrons and muons, pt order",
    "Muon": "selected muons, pt order",
    "Electron": "selected electrons, pt order",
}
#: singleton objects (one per event, no index)
SINGLETONS: dict[str, str] = {"MET": "missing transverse momentum (pt, phi)"}
TRANSVERSE_ONLY = frozenset(SINGLETONS)

#: function name -> number of object arguments
FUNCTIONS: dict[str, int] = {
    "Pt": 1, "Eta": 1, "Phi": 1, "M": 1, "E": 1,
    "DeltaR": 2, "DeltaPhi": 2, "DeltaEta": 2,
    "N": 1,
}
_NEEDS_LONGITUDINAL = {"Eta", "M", "E", "DeltaR", "DeltaEta"}

_CALL = re.compile(r"^\s*([A-Za-z_]\w*)\s*\((.*)\)\s*$")
_OUTPUT = re.compile(r"^\s*([A-Za-z_]\w*)\.([A-Za-z_]\w*)\s*$")
_OBJECT = re.compile(r"^([A-Za-z_]+?)([1-9]\d*)?$")


@dataclass(frozen=True)
class ObjectRef:
    """One object: ``collection`` and 0-based ``index`` (``None`` for a singleton such as MET)."""

    collection: str
    index: int | None

    def __str__(self) -> str:
        return self.collection if self.index is None else f"{self.collection}{self.index + 1}"


@dataclass(frozen=True)
class Expression:
    """A parsed observable.

    ``func`` is a function name with ``args`` (each a tuple of :class:`ObjectRef` summed
    together; for ``N`` the collection is ``args[0][0].collection``), or ``None`` for a model
    output ``model.output``.
    """

    text: str
    func: str | None = None
    args: tuple[tuple[ObjectRef, ...], ...] = ()
    model: str | None = None
    output: str | None = None

    @property
    def collections(self) -> set[str]:
        """Collections (and singletons) the expression reads."""
        return {o.collection for arg in self.args for o in arg}

    @property
    def models(self) -> set[str]:
        """Model names the expression reads (empty or one)."""
        return {self.model} if self.model else set()

    def __str__(self) -> str:
        return self.text


def _fail(key: str, text: str, why: str) -> ConfigError:
    return ConfigError(f"{key}: {why} in {text!r}")


def _parse_object(token: str, key: str, text: str, collections: Iterable[str], singletons: Iterable[str]) -> ObjectRef:
    collections, singletons = set(collections), set(singletons)
    token = token.strip()
    if token in singletons:
        return ObjectRef(token, None)
    m = _OBJECT.match(token)
    if m is None or m.group(1) not in collections or m.group(2) is None:
        known = ", ".join([*(f"{c}1.." for c in sorted(collections)), *sorted(singletons)])
        if m is not None and m.group(1) in collections:
            raise _fail(key, text, f"object {token!r} needs an index from 1 ({m.group(1)}1, {m.group(1)}2, ...)")
        raise _fail(key, text, f"unknown object {token!r} (known: {known})")
    return ObjectRef(m.group(1), int(m.group(2)) - 1)


def parse(text: str, key: str, *, collections: Iterable[str] = COLLECTIONS,
          singletons: Iterable[str] = SINGLETONS, outputs: Mapping[str, Iterable[str]] | None = None) -> Expression:
    """Parse and validate one expression; errors name ``key`` and list what exists.

    ``collections``/``singletons`` are the object names the caller provides, ``outputs`` its model
    outputs (model -> output names). Names outside them are errors here, at start-up.
    """
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{key}: expected an observable expression such as 'Pt(Jet1)'")
    outputs = {m: set(o) for m, o in (outputs or {}).items()}
    m = _OUTPUT.match(text)
    if m is not None:
        model, output = m.groups()
        if model not in outputs:
            known = ", ".join(f"{mod}.{o}" for mod in sorted(outputs) for o in sorted(outputs[mod])) or "none"
            raise _fail(key, text, f"unknown model {model!r} (model outputs this run has: {known})")
        if output not in outputs[model]:
            raise _fail(key, text, f"model {model!r} has no output {output!r} (it has: {', '.join(sorted(outputs[model]))})")
        return Expression(text.strip(), model=model, output=output)
    m = _CALL.match(text)
    if m is None:
        raise _fail(key, text, "expected Func(Object[,Object]) or Model.output")
    func, body = m.groups()
    if func not in FUNCTIONS:
        raise _fail(key, text, f"unknown function {func!r} (known: {', '.join(FUNCTIONS)})")
    parts = [p for p in body.split(",")]
    if len(parts) != FUNCTIONS[func] or any(not p.strip() for p in parts):
        raise _fail(key, text, f"{func} takes {FUNCTIONS[func]} argument{'s' if FUNCTIONS[func] > 1 else ''}")
    collections = set(collections)
    if func == "N":
        name = body.strip()
        if name not in collections:
            raise _fail(key, text, f"N takes a collection name; unknown {name!r} (known: {', '.join(sorted(collections))})")
        return Expression(text.strip(), func, ((ObjectRef(name, None),),))
    args = tuple(tuple(_parse_object(t, key, text, collections, singletons) for t in p.split("+")) for p in parts)
    if func in _NEEDS_LONGITUDINAL:
        flat = [o for arg in args for o in arg if o.collection in TRANSVERSE_ONLY]
        if flat:
            raise _fail(key, text, f"{func} needs a longitudinal component, which {flat[0]} does not have")
    return Expression(text.strip(), func, args)


def _wrap(dphi: np.ndarray) -> np.ndarray:
    return (dphi + np.pi) % (2 * np.pi) - np.pi


class Observables:
    """Columnar evaluation of expressions on one set of selected events.

    ``collections``: name -> jagged awkward array of objects (one entry per event) or, for a
    singleton, a flat record array; a value may also be a function returning it, called the
    first time an expression reads that collection. ``outputs``: model -> {output: per-event array}. Each
    (collection, field) is padded once into a float64 (events, k) numpy array with NaN for
    missing objects, so every expression is plain numpy and values are computed once.
    """

    def __init__(self, collections: Mapping[str, ak.Array], outputs: Mapping[str, Mapping[str, object]] | None = None,
                 n_events: int | None = None) -> None:
        self._collections = dict(collections)
        self.outputs = outputs or {}
        self.n = n_events if n_events is not None else len(self.collection(next(iter(self._collections))))
        self._slots: dict[str, int] = {}
        self._arrays: dict[tuple[str, str], np.ndarray] = {}
        self._values: dict[str, np.ndarray] = {}
        self._flat: dict[str, FlatFields] = {}

    def collection(self, name: str) -> ak.Array:
        """The awkward array of collection ``name`` (built on first use when given as a function)."""
        value = self._collections[name]
        if callable(value):
            value = self._collections[name] = value()
        return value

    def reserve(self, expressions: Iterable[Expression]) -> None:
        """Pad each collection once to the highest index any of ``expressions`` reads."""
        for e in expressions:
            for arg in e.args:
                for o in arg:
                    if o.index is not None and e.func != "N":
                        self._slots[o.collection] = max(self._slots.get(o.collection, 0), o.index + 1)

    def field(self, collection: str, name: str, index: int | None) -> np.ndarray:
        """Per-event float64 value of ``name`` for object ``index`` of ``collection`` (NaN: missing)."""
        if index is None:
            return np.asarray(ak.to_numpy(self.collection(collection)[name]), dtype=np.float64)
        key = (collection, name)
        k = max(self._slots.get(collection, 0), index + 1)
        arr = self._arrays.get(key)
        if arr is None or arr.shape[1] < k:
            self._slots[collection] = k
            arr = self._arrays[key] = self._padded(collection, name, k)
        return arr[:, index]

    def _padded(self, collection: str, name: str, k: int) -> np.ndarray:
        """(events, k) float64: ``name`` of the first ``k`` objects of each event, NaN past the last."""
        objects = self.collection(collection)
        flat = self._flat.get(collection)
        if flat is None and objects.ndim == 2:
            flat = self._flat[collection] = FlatFields(objects)
        try:
            values = flat[name] if flat is not None else None
        except (ValueError, TypeError):  # missing values inside the collection: awkward pads them too
            values = None
        if values is None:
            padded = ak.pad_none(objects[name], k, axis=1, clip=True)
            return np.ma.filled(ak.to_numpy(padded).astype(np.float64), np.nan).reshape(self.n, k)
        # on the flat values (awkward's pad_none costs ~2 ms per field and chunk)
        arr = np.full((self.n, k), np.nan)
        starts = flat.starts
        for j in range(k):
            has = flat.counts > j
            arr[has, j] = values[starts[has] + j]
        return arr

    def _p4(self, objects: tuple[ObjectRef, ...]) -> tuple[np.ndarray, ...]:
        """(px, py, pz, E) sums over ``objects``; pz and E are zero for transverse-only objects."""
        px = py = pz = e = 0.0
        for o in objects:
            pt, phi = self.field(o.collection, "pt", o.index), self.field(o.collection, "phi", o.index)
            px = px + pt * np.cos(phi)
            py = py + pt * np.sin(phi)
            if o.collection not in TRANSVERSE_ONLY:
                z = pt * np.sinh(self.field(o.collection, "eta", o.index))
                m = self.field(o.collection, "mass", o.index)
                pz = pz + z
                e = e + np.sqrt(pt**2 + z**2 + m**2)
            else:
                e = e + pt
        return px, py, pz, e

    def _one(self, func: str, objects: tuple[ObjectRef, ...]) -> np.ndarray:
        if len(objects) == 1:  # a single object: read its stored fields (no round trip through p4)
            o = objects[0]
            if func in ("Pt", "Eta", "Phi"):
                return self.field(o.collection, func.lower(), o.index)
            if func == "M":
                return self.field(o.collection, "mass", o.index)
        px, py, pz, e = self._p4(objects)
        if func == "Pt":
            return np.hypot(px, py)
        if func == "Phi":
            return np.arctan2(py, px)
        if func == "Eta":
            return np.arcsinh(pz / np.hypot(px, py))
        if func == "E":
            return np.asarray(e, dtype=np.float64)
        return np.sqrt(np.maximum(e**2 - px**2 - py**2 - pz**2, 0.0))  # M

    def evaluate(self, expr: Expression) -> np.ndarray:
        """float64 per event (NaN where an object is missing), cached by expression text."""
        cached = self._values.get(expr.text)
        if cached is not None:
            return cached
        if expr.model is not None:  # NaN where the model did not run (a channel without it)
            found = self.outputs.get(expr.model)
            value = (np.full(self.n, np.nan) if found is None
                     else np.asarray(ak.to_numpy(found[expr.output]), dtype=np.float64))
        elif expr.func == "N":
            value = np.asarray(ak.to_numpy(ak.num(self.collection(expr.args[0][0].collection), axis=1)), dtype=np.float64)
        elif FUNCTIONS[expr.func] == 1:
            value = self._one(expr.func, expr.args[0])
        else:
            a, b = expr.args
            deta = self._one("Eta", a) - self._one("Eta", b) if expr.func != "DeltaPhi" else None
            dphi = _wrap(self._one("Phi", a) - self._one("Phi", b)) if expr.func != "DeltaEta" else None
            value = {"DeltaEta": deta, "DeltaPhi": dphi}.get(expr.func)
            if value is None:
                value = np.hypot(deta, dphi)
        value = np.asarray(value, dtype=np.float64)
        self._values[expr.text] = value
        return value

    def table(self, expressions: Mapping[str, Expression]) -> dict[str, np.ndarray]:
        """``name -> values`` for every expression."""
        self.reserve(expressions.values())
        return {name: self.evaluate(e) for name, e in expressions.items()}

    def matrix(self, expressions: Iterable[Expression], dtype=np.float32) -> np.ndarray:
        """(events, features) array of ``expressions`` in order (a model's input)."""
        expressions = list(expressions)
        self.reserve(expressions)
        if not expressions:
            return np.empty((self.n, 0), dtype=dtype)
        return np.stack([self.evaluate(e) for e in expressions], axis=1).astype(dtype)
