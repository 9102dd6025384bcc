"""correctionlib files: start-up validation, validity ranges, and lazy per-process loading.

Two views of one file are used, for different jobs:

* a *summary* (names, inputs, the categories and bin ranges of every correction) is read once per
  process from the JSON with the standard library, because correctionlib's compiled objects do not
  expose category keys or bin edges. It is what validation and input clipping need, and it is small
  (bin contents and formulas are dropped), so the multi-megabyte JSON is not kept in memory.
* the compiled :class:`correctionlib.CorrectionSet` evaluates; it is loaded lazily, once per process
  and file (:func:`correction_set`), and never pickled: objects holding one drop it in ``__getstate__``.

A correction evaluated on every jet of every event that is no more than a binned map (the jet veto
map) can also be read as a :class:`BinnedTable`: correctionlib's values per bin, looked up in numpy.
"""

from __future__ import annotations

import functools
import gzip
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import correctionlib
import numpy as np

from crema.schema import ConfigError

# --------------------------------------------------------------------------- summaries
# A correction's "skeleton": its decision tree with bin contents and formulas dropped and identical
# subtrees merged, so bin ranges and category keys can be looked up without the full JSON.
#   ("bin", inputs, lows, highs, children)      binning / multibinning
#   ("cat", input, ((key, child), ...), default)  category
#   ("all", children)                            anything else with sub-nodes (transform, ...)
#   None                                         a leaf (number, formula, hashprng)
Skeleton = tuple | None


@dataclass(frozen=True)
class CorrectionInfo:
    """What a file says about one correction (or compound correction)."""

    name: str
    inputs: tuple[tuple[str, str], ...]  # (name, type) in evaluation order
    compound: bool
    skeleton: Skeleton = None

    @property
    def input_names(self) -> list[str]:
        return [name for name, _ in self.inputs]


@dataclass(frozen=True)
class FileSummary:
    """Names and inputs of every correction in one correctionlib file."""

    path: Path
    corrections: dict[str, CorrectionInfo]

    @property
    def compound_names(self) -> list[str]:
        return [n for n, c in self.corrections.items() if c.compound]

    @property
    def plain_names(self) -> list[str]:
        return [n for n, c in self.corrections.items() if not c.compound]

    def contents(self) -> str:
        """A listing for error messages: compound corrections first, then the others."""
        parts = []
        if self.compound_names:
            parts.append("compound corrections: " + ", ".join(self.compound_names))
        parts.append("corrections: " + (", ".join(self.plain_names) or "none"))
        return "; ".join(parts)

    def require(self, name: str, key: str, compound: bool = False) -> CorrectionInfo:
        """The correction ``name``; a :class:`ConfigError` naming ``key`` and the file's contents if absent."""
        info = self.corrections.get(name)
        if info is None or info.compound != compound:
            kind = "compound correction" if compound else "correction"
            raise ConfigError(f"{key}: no {kind} {name!r} in {self.path.name} (the file has {self.contents()})")
        return info


def summary(path: str | Path, key: str = "file") -> FileSummary:
    """Summary of the correctionlib file ``path``, read once per process (cached on path, size, mtime).

    ``key`` names the config key holding the path, for the error if the file is missing or unreadable.
    """
    path = Path(path)
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise ConfigError(f"{key}: correction file {path} does not exist") from None
    try:
        return _summary(str(path), stat.st_size, stat.st_mtime_ns)
    except ConfigError as err:
        raise ConfigError(f"{key}: {err}") from None


@functools.lru_cache(maxsize=32)
def _summary(path: str, size: int, mtime: int) -> FileSummary:
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt") as stream:
            data = json.load(stream)
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: not a readable correctionlib JSON file ({err})") from None
    if not isinstance(data, dict) or "corrections" not in data:
        raise ConfigError(f"{path}: not a correctionlib JSON file (no 'corrections' list)")
    corrections: dict[str, CorrectionInfo] = {}
    for c in data.get("corrections") or []:
        inputs = tuple((i["name"], i["type"]) for i in c["inputs"])
        corrections[c["name"]] = CorrectionInfo(c["name"], inputs, False, _skeleton(c["data"]))
    for c in data.get("compound_corrections") or []:
        inputs = tuple((i["name"], i["type"]) for i in c["inputs"])
        corrections[c["name"]] = CorrectionInfo(c["name"], inputs, True, None)
    return FileSummary(Path(path), corrections)


def _skeleton(node: Any) -> Skeleton:
    if not isinstance(node, dict):
        return None
    kind = node.get("nodetype")
    if kind in ("binning", "multibinning"):
        if kind == "binning":
            inputs, all_edges = (node["input"],), (node["edges"],)
        else:
            inputs, all_edges = tuple(node["inputs"]), tuple(node["edges"])
        lows, highs = zip(*(_edge_range(e) for e in all_edges))
        children = {_skeleton(c) for c in node["content"] if isinstance(c, dict)}  # numbers are leaves
        if isinstance(node.get("flow"), dict):
            children.add(_skeleton(node["flow"]))
        children.discard(None)
        return ("bin", inputs, lows, highs, tuple(sorted(children, key=repr)))
    if kind == "category":
        items = tuple((str(item["key"]), _skeleton(item["value"])) for item in node["content"])
        return ("cat", node["input"], items, _skeleton(node.get("default")))
    children = set()
    for key in ("content", "rule", "value"):
        if isinstance(node.get(key), dict):
            children.add(_skeleton(node[key]))
    children.discard(None)
    return ("all", tuple(sorted(children, key=repr))) if children else None


def _edge_range(edges: Any) -> tuple[float, float]:
    if isinstance(edges, dict):  # uniform binning {n, low, high}
        return float(edges["low"]), float(edges["high"])
    return float(edges[0]), float(edges[-1])


# --------------------------------------------------------------------------- categories and ranges
def category_keys(info: CorrectionInfo, input_name: str, fixed: Mapping[str, str] | None = None) -> list[str]:
    """Keys of the category nodes on ``input_name`` reachable with the categorical inputs ``fixed``."""
    keys: set[str] = set()
    _walk(info.skeleton, dict(fixed or {}), lambda n: keys.update(k for k, _ in n[2]) if n[0] == "cat" and n[1] == input_name else None)
    return sorted(keys)


def input_ranges(info: CorrectionInfo, fixed: Mapping[str, str] | None = None) -> dict[str, tuple[float, float]]:
    """Lowest and highest bin edge of each binned input, on the branches selected by ``fixed``."""
    ranges: dict[str, tuple[float, float]] = {}

    def visit(node: tuple) -> None:
        if node[0] != "bin":
            return
        for name, lo, hi in zip(node[1], node[2], node[3]):
            old = ranges.get(name)
            ranges[name] = (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))

    _walk(info.skeleton, dict(fixed or {}), visit)
    return ranges


def _walk(node: Skeleton, fixed: dict[str, str], visit) -> None:
    if node is None:
        return
    visit(node)
    if node[0] == "bin":
        for child in node[4]:
            _walk(child, fixed, visit)
    elif node[0] == "cat":
        _, name, items, default = node
        if name in fixed:
            chosen = [child for key, child in items if key == str(fixed[name])]
            if not chosen and default is not None:
                chosen = [default]
        else:
            chosen = [child for _, child in items] + ([default] if default is not None else [])
        for child in chosen:
            _walk(child, fixed, visit)
    else:
        for child in node[1]:
            _walk(child, fixed, visit)


def require_category(info: CorrectionInfo, input_name: str, value: str, key: str,
                     fixed: Mapping[str, str] | None = None) -> None:
    """Fail with a :class:`ConfigError` naming ``key`` if ``value`` is not a key of ``input_name``."""
    keys = category_keys(info, input_name, fixed)
    if keys and str(value) not in keys:
        raise ConfigError(f"{key}: {info.name} has no {input_name} {value!r} (it has: {', '.join(keys)})")


def require_inputs(info: CorrectionInfo, provided: Iterable[str], key: str) -> None:
    """Fail if the correction needs an input crema does not know how to provide."""
    missing = [n for n in info.input_names if n not in set(provided)]
    if missing:
        raise ConfigError(
            f"{key}: {info.name} needs input(s) {', '.join(missing)} that crema does not provide "
            f"(it provides: {', '.join(sorted(set(provided)))})"
        )


def clip(values: np.ndarray, bounds: tuple[float, float] | None) -> np.ndarray:
    """``values`` clipped into ``[low, high)`` so a binned correction never falls off its edges."""
    if bounds is None:
        return values
    lo, hi = bounds
    # the upper edge is exclusive in correctionlib: stay just below it
    return np.clip(values, lo, np.nextafter(hi, -np.inf) if np.isfinite(hi) else hi)


def guard(values: np.ndarray, bounds: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``values`` made safe to evaluate, and the mask of entries that were not usable.

    NaN and +-inf (a correction with an infinite last edge, as muon SFs have, fails on +inf with
    "Index above bounds") are replaced by a finite stand-in (1 clipped into ``bounds``), then
    everything is :func:`clip`-ped into ``bounds`` (``None``: no clipping, e.g. the JEC).
    """
    bad = ~np.isfinite(values)
    if bad.any():
        values = np.where(bad, clip(np.array(1.0), bounds), values)
    return clip(values, bounds), bad


def evaluate(correction: Any, args: list[Any], bounds: list[tuple[float, float] | None]) -> np.ndarray:
    """``correction.evaluate(*args)`` as float64, with every real array input :func:`guard`-ed.

    Entries whose inputs were not finite are evaluated on the stand-in and returned as NaN, so no
    input value can make correctionlib raise and no made-up factor can pass for a real one; the
    callers decide what NaN means (jets: the jet is dropped; weights: the event fails ``finite weight``).
    ``bounds`` holds one range (or ``None``) per argument.
    """
    safe, bad = [], None
    for value, bound in zip(args, bounds):
        if isinstance(value, np.ndarray) and value.dtype.kind == "f":
            value, nonfinite = guard(value, bound)
            bad = nonfinite if bad is None else bad | nonfinite
        safe.append(value)
    out = np.asarray(correction.evaluate(*safe), dtype=np.float64)
    if bad is not None and bad.any():
        out = np.where(bad, np.nan, out)
    return out


# --------------------------------------------------------------------------- evaluation
@functools.lru_cache(maxsize=16)
def _correction_set(path: str, mtime: int) -> correctionlib.CorrectionSet:
    return correctionlib.CorrectionSet.from_file(path)


def correction_set(path: str | Path) -> correctionlib.CorrectionSet:
    """The compiled correction set of ``path``, loaded once per process (not meant to be pickled)."""
    path = Path(path)
    return _correction_set(str(path), path.stat().st_mtime_ns)


# --------------------------------------------------------------------------- binned tables
@dataclass(frozen=True)
class BinnedTable:
    """One branch of a correction that is a plain (multi)binning of numbers, as numpy.

    correctionlib evaluates a multibinning at about 270 ns per entry (the 2022 jet veto map: 80 ms
    per 300k jets). Here each input's bin is found in a few array passes (:class:`BinFinder`) and
    the value read from a table holding correctionlib's own value for every bin (evaluated at the
    bin centres); the bin rule is correctionlib's (lower edge inclusive, upper exclusive), so every
    value is the one correctionlib gives.
    """

    inputs: tuple[str, ...]  # the binned inputs, in the table's axis order
    finders: tuple["BinFinder", ...]  # one per input: its bin edges
    values: np.ndarray  # one axis per input

    @property
    def edges(self) -> tuple[np.ndarray, ...]:
        return tuple(f.edges for f in self.finders)

    def evaluate(self, args: Mapping[str, np.ndarray]) -> np.ndarray:
        """The value for each entry of ``args`` (input name -> array): :func:`evaluate`'s contract,
        inputs clipped into the edges and NaN where an input was not finite."""
        index, bad = [], None
        for name, finder in zip(self.inputs, self.finders):
            values, nonfinite = guard(np.asarray(args[name], dtype=np.float64), (finder.edges[0], finder.edges[-1]))
            bad = nonfinite if bad is None else bad | nonfinite
            index.append(finder.bins(values))
        out = self.values[tuple(index)]
        return np.where(bad, np.nan, out) if bad.any() else out


def binned_table(path: str | Path, correction: str, fixed: Mapping[str, str]) -> BinnedTable | None:
    """``correction`` of the file ``path`` with its categorical inputs set to ``fixed``, as a
    :class:`BinnedTable`; ``None`` when that branch is not one binning of numbers with explicit
    edges, or ``correction`` is a compound one (then evaluate with correctionlib). Built once per
    process and file."""
    path = Path(path)
    return _binned_table(str(path), path.stat().st_mtime_ns, correction, tuple(sorted(fixed.items())))


@functools.lru_cache(maxsize=8)
def _binned_table(path: str, mtime: int, correction: str, fixed: tuple[tuple[str, str], ...]) -> BinnedTable | None:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as stream:
        data = json.load(stream)
    chosen = dict(fixed)
    spec = next((c for c in data["corrections"] if c["name"] == correction), None)
    if spec is None:  # a compound correction
        return None
    node = spec["data"]
    while isinstance(node, dict) and node.get("nodetype") == "category" and node["input"] in chosen:
        key = chosen[node["input"]]
        node = next((i["value"] for i in node["content"] if str(i["key"]) == key), node.get("default"))
    if not isinstance(node, dict) or node.get("nodetype") not in ("binning", "multibinning"):
        return None
    inputs = (node["input"],) if node["nodetype"] == "binning" else tuple(node["inputs"])
    all_edges = (node["edges"],) if node["nodetype"] == "binning" else tuple(node["edges"])
    names = [i["name"] for i in spec["inputs"]]
    if (any(not isinstance(e, list) for e in all_edges)  # uniform binnings: correctionlib computes the bin
            or any(not isinstance(c, (int, float)) for c in node["content"])
            or set(names) != set(inputs) | set(chosen)):
        return None
    edges = tuple(np.asarray(e, dtype=np.float64) for e in all_edges)
    centres = np.meshgrid(*[(e[:-1] + e[1:]) / 2 for e in edges], indexing="ij")
    at = dict(zip(inputs, (c.ravel() for c in centres)))
    args = [chosen[n] if n in chosen else at[n] for n in names]
    values = np.asarray(_correction_set(path, mtime)[correction].evaluate(*args), dtype=np.float64)
    return BinnedTable(inputs, tuple(BinFinder(e) for e in edges), values.reshape(centres[0].shape))


class BinFinder:
    """The bin of each value in increasing ``edges``: ``searchsorted(edges, x, side="right") - 1``
    for ``edges[0] <= x < edges[-1]``, without a binary search per value.

    A binary search over random values costs ~55 ns each (mispredicted branches). Instead the range
    is cut into uniform cells at most a quarter of the narrowest bin wide, each knowing the bin of
    its lower end; a value's cell, computed with a rounding error far below a cell, lies within one
    cell of the true one, so its bin is the cell's or a neighbour, settled by comparing with the edges.
    Edges so uneven that this needs over a million cells are searched as usual.
    """

    MAX_CELLS = 1 << 20

    def __init__(self, edges: np.ndarray) -> None:
        self.edges = np.asarray(edges, dtype=np.float64)
        if self.edges.ndim != 1 or self.edges.size < 2 or not np.all(np.diff(self.edges) > 0):
            raise ValueError("bin edges must be a strictly increasing 1D array of at least 2 values")
        lo, hi = self.edges[0], self.edges[-1]
        cells = 4 * (hi - lo) / np.diff(self.edges).min()
        self.ncells = int(np.ceil(cells)) if cells <= self.MAX_CELLS else 0
        self.scale = self.ncells / (hi - lo)
        starts = lo + np.arange(self.ncells) * ((hi - lo) / max(self.ncells, 1))
        self.start = np.searchsorted(self.edges, starts, side="right") - 1

    def bins(self, x: np.ndarray) -> np.ndarray:
        """Bin index of each value of ``x``, which must lie in ``[edges[0], edges[-1])``."""
        if not self.ncells:
            return np.searchsorted(self.edges, x, side="right") - 1
        cell = np.clip(((x - self.edges[0]) * self.scale).astype(np.int64), 0, self.ncells - 1)
        b = self.start[cell]
        b -= x < self.edges[b]
        b += x >= self.edges[b + 1]
        return b
