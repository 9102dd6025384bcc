"""EFT histograms and per-event quadratic coefficients.

A yield depends on Wilson coefficients c as

    yield(c) = sm + sum_i c_i lin_i + sum_i c_i^2 quad_i + sum_{i<j} c_i c_j mixed_ij

per event and hence per bin.  :func:`fit_coefficients` turns NanoAOD reweighting weights
(``LHEReweightingWeight`` at the points of ``EFTReweightPoints``) into these per-event coefficients
with one pseudo-inverse per dataset; :class:`EFTHist` histograms them on ``hist`` axes with a
hidden term axis (order of :func:`term_names`), evaluates ordinary :class:`hist.Hist` at any point,
keeps exact sums of squared weights at declared benchmark points, and merges as a coffea
accumulator only with the same coefficients.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import hist
import numba
import numpy as np

from crema.histograms.io import register
from crema.schema import ConfigError

MAX_CONDITION = 1e8  # above this the design matrix of the reweight points is called degenerate
CLOSURE_TOLERANCE = 1e-6


def n_terms(n_wc: int) -> int:
    """Number of terms for ``n_wc`` coefficients: 1 + n + n (n + 1) / 2."""
    return 1 + n_wc + n_wc * (n_wc + 1) // 2


def term_names(wc_names) -> list[str]:
    """Term names in lower-triangular order: ``sm``, ``lin_<wc>``..., ``quad_<wc>``..., ``mixed_<wc_i>_<wc_j>``
    (i < j, ordered by j then i)."""
    wc = list(wc_names)
    names = ["sm", *(f"lin_{w}" for w in wc), *(f"quad_{w}" for w in wc)]
    names += [f"mixed_{wc[i]}_{wc[j]}" for j in range(len(wc)) for i in range(j)]
    return names


def term_vector(point) -> np.ndarray:
    """Monomials ``(..., n_terms)`` [1, c_i, c_i^2, c_i c_j (i < j)] of point(s) ``(..., n_wc)``."""
    c = np.asarray(point, dtype=np.float64)
    n = c.shape[-1]
    parts = [np.ones(c.shape[:-1] + (1,)), c, c * c]
    if n > 1:
        parts.append(np.stack([c[..., i] * c[..., j] for j in range(n) for i in range(j)], axis=-1))
    return np.concatenate(parts, axis=-1)


@dataclass(frozen=True)
class EFTPoints:
    """What ``EFTReweightPoints`` holds: the WC names and the point of every reweighting weight."""

    wc_names: list[str]
    points: list[list[float]]
    generated_at: list[float] | None = None

    def validate(self) -> None:
        if not self.wc_names or len(set(self.wc_names)) != len(self.wc_names):
            raise ConfigError("wc_names: need unique, non-empty Wilson coefficient names")
        n = len(self.wc_names)
        for k, p in enumerate(self.points):
            if len(p) != n or not all(np.isfinite(float(x)) for x in p):
                raise ConfigError(f"points[{k}]: need {n} finite values ({', '.join(self.wc_names)})")
        if self.generated_at is not None and len(self.generated_at) != n:
            raise ConfigError(f"generated_at: need {n} values")

    @classmethod
    def from_json(cls, text: str, where: str) -> EFTPoints:
        """Parse and validate the JSON text; errors name ``where``."""
        from crema.schema import from_dict

        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{where}: not valid JSON ({err})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a JSON object with wc_names and points")
        try:
            return from_dict(cls, data, where)
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None


def design_matrix(points: EFTPoints, dataset: str) -> np.ndarray:
    """The pseudo-inverse (terms x points) of the (points x terms) monomial matrix, checked once per dataset."""
    design = term_vector(np.asarray(points.points, dtype=np.float64))
    k, t = design.shape
    if k < t:
        raise ConfigError(f"dataset {dataset}: {k} reweight points cannot determine {t} quadratic terms "
                          f"of {len(points.wc_names)} coefficients (need >= {t})")
    cond = np.linalg.cond(design)
    if not np.isfinite(cond) or cond > MAX_CONDITION:
        raise ConfigError(f"dataset {dataset}: the reweight points are degenerate (condition number {cond:.3g} "
                          f"> {MAX_CONDITION:.0e}); they do not separate all {t} quadratic terms")
    return np.linalg.pinv(design)


def fit_coefficients(weights, points: EFTPoints, dataset: str, pinv: np.ndarray | None = None) -> np.ndarray:
    """Per-event coefficients (N, n_terms) from reweighting weights (N, n_points), columnar.

    ``weights[:, k]`` is the event weight at ``points.points[k]`` relative to its nominal weight.
    Raises :class:`~crema.schema.ConfigError` naming the dataset if the points are degenerate or
    the coefficients do not reproduce every reweight point to 1e-6 (relative).
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 2 or w.shape[1] != len(points.points):
        raise ConfigError(f"dataset {dataset}: {w.shape[-1] if w.ndim == 2 else '?'} reweighting weights per event "
                          f"but {len(points.points)} reweight points")
    pinv = design_matrix(points, dataset) if pinv is None else pinv
    coef = w @ pinv.T
    if len(w):
        design = term_vector(np.asarray(points.points, dtype=np.float64))
        scale = np.maximum(np.abs(w).max(axis=1, keepdims=True), 1e-300)
        err = float(np.max(np.abs(coef @ design.T - w) / scale))
        if err > CLOSURE_TOLERANCE:
            raise ConfigError(f"dataset {dataset}: the reweighting weights are not quadratic in "
                              f"{', '.join(points.wc_names)} (closure {err:.2g} > {CLOSURE_TOLERANCE:g})")
    return coef


# ------------------------------------------------------------------------------- histogram


@numba.njit(cache=True, nogil=True)
def _flat_bins(reg_x, reg_lo, reg_delta, reg_size, reg_shift, reg_extent, reg_stride,
               idx, idx_extent, idx_stride, offset):  # pragma: no cover - compiled
    """Flat storage bin per event (-1: outside the storage). Regular axes are indexed exactly as
    boost-histogram does; other axes come as precomputed indices."""
    n = reg_x.shape[1] if reg_x.shape[0] else idx.shape[1]
    out = np.empty(n, np.int64)
    for i in range(n):
        b = offset
        for a in range(reg_x.shape[0]):
            z = (reg_x[a, i] - reg_lo[a]) / reg_delta[a]
            if z < 1.0:
                j = int(z * reg_size[a]) if z >= 0.0 else -1
            else:
                j = reg_size[a]
            j += reg_shift[a]
            if j < 0 or j >= reg_extent[a]:
                b = -1
                break
            b += j * reg_stride[a]
        if b >= 0:
            for a in range(idx.shape[0]):
                j = idx[a, i]
                if j < 0 or j >= idx_extent[a]:
                    b = -1
                    break
                b += j * idx_stride[a]
        out[i] = b
    return out


@numba.njit(cache=True, nogil=True)
def _regular_bins(x, lo, delta, size, shift, extent, stride, offset):  # pragma: no cover - compiled
    """:func:`_flat_bins` for the common case of one regular axis (and scalar categories)."""
    out = np.empty(x.shape[0], np.int64)
    for i in range(x.shape[0]):
        z = (x[i] - lo) / delta
        if z < 1.0:
            j = int(z * size) if z >= 0.0 else -1
        else:
            j = size
        j += shift
        out[i] = offset + j * stride if 0 <= j < extent else -1
    return out


@numba.njit(cache=True, nogil=True)
def _accumulate(bins, coef, w, bench, values, sumw2):  # pragma: no cover - compiled
    """values[bin, t] += w c_t and sumw2[bin, k] += (w sum_t c_t m_kt)^2 for every event with a bin."""
    n, n_terms_ = coef.shape
    n_bench = bench.shape[0]
    for i in range(n):
        b = bins[i]
        if b < 0:
            continue
        wi = w[i]
        for t in range(n_terms_):
            values[b, t] += wi * coef[i, t]
        for k in range(n_bench):
            r = 0.0
            for t in range(n_terms_):
                r += coef[i, t] * bench[k, t]
            r *= wi
            sumw2[b, k] += r * r


def _category_index(ax, value) -> int:
    """Index of a category; its number of categories (the overflow bin) when unknown."""
    try:
        return int(ax.index(value.item() if isinstance(value, np.generic) else value))
    except KeyError:
        return len(ax)


def _axis_state(ax) -> dict:
    t = ax.traits
    base = {"name": ax.name, "label": ax.label}
    if isinstance(ax, hist.axis.StrCategory):
        return {**base, "type": "str", "categories": list(ax), "growth": t.growth}
    if isinstance(ax, hist.axis.IntCategory):
        return {**base, "type": "int", "categories": [int(x) for x in ax], "growth": t.growth}
    if isinstance(ax, (hist.axis.Regular, hist.axis.Variable, hist.axis.Integer)):
        return {**base, "type": "variable", "edges": [float(x) for x in ax.edges], "underflow": t.underflow,
                "overflow": t.overflow}
    raise TypeError(f"EFTHist: unsupported axis type {type(ax).__name__}")


def _axis_from_state(s: dict):
    if s["type"] == "str":
        return hist.axis.StrCategory(s["categories"], name=s["name"], label=s["label"], growth=s["growth"])
    if s["type"] == "int":
        return hist.axis.IntCategory(s["categories"], name=s["name"], label=s["label"], growth=s["growth"])
    return hist.axis.Variable(s["edges"], name=s["name"], label=s["label"], underflow=s["underflow"],
                              overflow=s["overflow"])


@register("crema.EFTHist")  # storable in run checkpoints (crema.histograms.io), no pickle
class EFTHist:
    """A histogram of quadratic EFT yields: ``hist`` axes plus a hidden term axis.

    ``EFTHist(*axes, wc_names=[...], benchmarks=[[...], ...])``. Category axes are fixed (no
    growth). Fill with per-event coefficients ``(N, n_terms)`` (term order of :func:`term_names`)
    and a weight; ``eval(point)`` gives a :class:`hist.Hist` (``Weight`` storage with the exact
    sum of squared weights at a declared benchmark point, ``Double`` elsewhere).
    """

    def __init__(self, *axes, wc_names, benchmarks=None) -> None:
        self.axes = hist.axis.NamedAxesTuple(axes)
        for ax in self.axes:
            _axis_state(ax)  # refuses unsupported axes
            if ax.traits.growth:
                raise ValueError(f"EFTHist: axis {ax.name!r} must not grow (declare its categories)")
        self.wc_names = tuple(wc_names)
        self.terms = term_names(self.wc_names)
        bench = np.zeros((0, len(self.wc_names))) if benchmarks is None else np.asarray(benchmarks, dtype=np.float64)
        if bench.ndim != 2 or bench.shape[1] != len(self.wc_names):
            raise ValueError(f"EFTHist: benchmarks need {len(self.wc_names)} values each")
        self.benchmarks = bench
        self._bench_terms = term_vector(bench) if len(bench) else np.zeros((0, len(self.terms)))
        self._shape = tuple(ax.extent for ax in self.axes)
        strides = [int(np.prod(self._shape[k + 1:])) for k in range(len(self._shape))]
        self._layout = [(ax, st, 1 if ax.traits.underflow else 0) for ax, st in zip(self.axes, strides)]
        # regular axes are indexed inside the fill loop (as boost-histogram does): lo, width, bins, shift, extent, stride
        self._regular = {k: (ax.edges[0], ax.edges[-1] - ax.edges[0], len(ax), sh, ax.extent, st)
                         for k, (ax, st, sh) in enumerate(self._layout)
                         if isinstance(ax, hist.axis.Regular) and ax.transform is None}
        nbins = int(np.prod(self._shape)) if self._shape else 1
        # bins x terms: the terms of one bin are contiguous, as the fill loop adds them together
        self._values = np.zeros((nbins, len(self.terms)))
        self._sumw2 = np.zeros((nbins, len(self.benchmarks)))

    # ---------------------------------------------------------------- filling
    def _index_inputs(self, values: dict, n: int):
        """Kernel inputs: regular-axis values and parameters, other axes' indices, the scalar offset
        (None when a scalar category lies outside the storage)."""
        reg, idx, reg_axes, idx_axes, offset = [], [], [], [], 0
        for k, (ax, stride, shift) in enumerate(self._layout):
            if ax.name not in values:
                raise ValueError(f"EFTHist.fill: no values for axis {ax.name!r}")
            v = values[ax.name]
            if isinstance(ax, (hist.axis.StrCategory, hist.axis.IntCategory)):
                if np.ndim(v) == 0:
                    j = _category_index(ax, v) + shift
                    if not 0 <= j < ax.extent:
                        return None
                    offset += j * stride
                    continue
                # unknown categories go to the overflow bin (dropped without one), as in hist
                uniq, inverse = np.unique(np.asarray(v), return_inverse=True)
                lookup = np.array([_category_index(ax, u) for u in uniq], dtype=np.int64)
                arr = lookup[inverse].reshape(-1) + shift
            elif k in self._regular:
                arr = np.asarray(v, dtype=np.float64)
            else:
                arr = np.asarray(ax.index(np.asarray(v)), dtype=np.int64) + shift
            if arr.shape != (n,):
                raise ValueError(f"EFTHist.fill: values of axis {ax.name!r} need shape ({n},)")
            if k in self._regular:
                reg.append(arr)
                reg_axes.append(self._regular[k])
            else:
                idx.append(arr)
                idx_axes.append((ax.extent, stride))
        reg_x = reg[0][None] if len(reg) == 1 else (np.stack(reg) if reg else np.zeros((0, n)))
        rp = np.asarray(reg_axes, dtype=np.float64).reshape(-1, 6)
        ip = np.asarray(idx_axes, dtype=np.int64).reshape(-1, 2)
        as_int = lambda col: rp[:, col].astype(np.int64)  # noqa: E731
        return (reg_x, rp[:, 0].copy(), rp[:, 1].copy(), as_int(2), as_int(3), as_int(4), as_int(5),
                np.stack(idx) if idx else np.zeros((0, n), dtype=np.int64), ip[:, 0].copy(), ip[:, 1].copy(), offset)

    def fill(self, coefficients, weight=None, **values) -> None:
        """Add events: ``coefficients`` (N, n_terms) float32 or float64, ``weight`` (N,) or None, one array
        (or a scalar for a category) per axis.

        Compiled loops: the bin of every event is computed once, then one pass adds weight x
        coefficient to every term of the event's bin (and the squared weight at every benchmark
        point); no copy of the coefficient array is made.
        """
        coef = np.asarray(coefficients)
        if coef.ndim != 2 or coef.shape[1] != len(self.terms):
            raise ValueError(f"EFTHist.fill: coefficients need shape (N, {len(self.terms)})")
        if coef.dtype not in (np.float32, np.float64):
            coef = coef.astype(np.float64)
        n = coef.shape[0]
        if n == 0:
            return
        inputs = self._index_inputs(values, n)
        if inputs is None:  # a category outside the storage: nothing to fill
            return
        w = np.ones(n) if weight is None else np.asarray(weight, dtype=np.float64)
        if w.shape != (n,):
            raise ValueError(f"EFTHist.fill: weight needs shape ({n},)")
        bench = self._bench_terms
        reg_x, lo, delta, size, shift, extent, stride, idx = inputs[:8]
        if reg_x.shape[0] == 1 and idx.shape[0] == 0:
            bins = _regular_bins(reg_x[0], lo[0], delta[0], size[0], shift[0], extent[0], stride[0], inputs[-1])
        else:
            bins = _flat_bins(*inputs)
        _accumulate(bins, coef, w, bench, self._values, self._sumw2)

    # ---------------------------------------------------------------- reading
    def term_view(self, flow: bool = False) -> np.ndarray:
        """(n_terms, *axes) yields per term."""
        v = np.moveaxis(self._values.reshape((*self._shape, len(self.terms))), -1, 0)
        return v if flow else v[(slice(None), *self._inner())]

    def _inner(self):
        return tuple(slice(1 if ax.traits.underflow else 0, (1 if ax.traits.underflow else 0) + len(ax)) for ax in self.axes)

    def eval(self, point) -> hist.Hist:
        """The ordinary histogram at the WC ``point`` (a sequence in ``wc_names`` order or a mapping)."""
        if isinstance(point, dict):
            unknown = sorted(set(point) - set(self.wc_names))
            if unknown:
                raise KeyError(f"EFTHist.eval: unknown coefficient {unknown[0]!r} (known: {', '.join(self.wc_names)})")
            point = [float(point.get(w, 0.0)) for w in self.wc_names]
        c = np.asarray(point, dtype=np.float64)
        values = (self._values @ term_vector(c)).reshape(self._shape)
        k = np.flatnonzero(np.all(self.benchmarks == c, axis=1)) if len(self.benchmarks) else []
        if len(k):
            h = hist.Hist(*self.axes, storage=hist.storage.Weight())
            view = h.view(flow=True)
            view.value[...] = values
            view.variance[...] = self._sumw2[:, k[0]].reshape(self._shape)
        else:
            h = hist.Hist(*self.axes, storage=hist.storage.Double())
            h.view(flow=True)[...] = values
        return h

    def __getitem__(self, selection: dict) -> EFTHist:
        """Pick one category per named axis: ``h[{"systematic": "nominal"}]`` drops that axis."""
        index = []
        axes = []
        for ax in self.axes:
            if ax.name in selection:
                index.append(ax.index(selection[ax.name]) + (1 if ax.traits.underflow else 0))
            else:
                index.append(slice(None))
                axes.append(ax)
        out = EFTHist(*axes, wc_names=self.wc_names, benchmarks=self.benchmarks)
        for src, dst in ((self._values, out._values), (self._sumw2, out._sumw2)):
            dst[...] = src.reshape((*self._shape, src.shape[-1]))[(*index, slice(None))].reshape(dst.shape)
        return out

    def scale(self, factor: float) -> None:
        """Multiply every yield by ``factor`` (sums of squared weights by its square), in place."""
        self._values *= factor
        self._sumw2 *= factor * factor

    # ---------------------------------------------------------------- merging
    def _check_compatible(self, other: EFTHist) -> None:
        if not isinstance(other, EFTHist):
            raise TypeError(f"cannot add {type(other).__name__} to an EFTHist")
        if self.wc_names != other.wc_names:
            raise ValueError(f"EFTHist: cannot merge different Wilson coefficients {list(self.wc_names)} "
                             f"and {list(other.wc_names)}")
        if [_axis_state(a) for a in self.axes] != [_axis_state(a) for a in other.axes]:
            raise ValueError("EFTHist: cannot merge histograms with different axes")
        if not np.array_equal(self.benchmarks, other.benchmarks):
            raise ValueError("EFTHist: cannot merge histograms with different benchmark points")

    def __iadd__(self, other: EFTHist) -> EFTHist:
        self._check_compatible(other)
        self._values += other._values
        self._sumw2 += other._sumw2
        return self

    def __add__(self, other: EFTHist) -> EFTHist:
        out = self.copy()
        out += other
        return out

    def copy(self) -> EFTHist:
        out = EFTHist(*self.axes, wc_names=self.wc_names, benchmarks=self.benchmarks)
        out._values[...] = self._values
        out._sumw2[...] = self._sumw2
        return out

    def __eq__(self, other) -> bool:
        return (isinstance(other, EFTHist) and self.wc_names == other.wc_names
                and [_axis_state(a) for a in self.axes] == [_axis_state(a) for a in other.axes]
                and np.array_equal(self.benchmarks, other.benchmarks)
                and np.array_equal(self._values, other._values) and np.array_equal(self._sumw2, other._sumw2))

    __hash__ = None

    def __repr__(self) -> str:
        return f"EFTHist({', '.join(a.name for a in self.axes)}; wc={list(self.wc_names)}, {len(self.terms)} terms)"

    # ---------------------------------------------------------------- serialisation (no pickle)
    def _crema_state(self) -> tuple[dict[str, np.ndarray], dict]:
        """Arrays and JSON-able metadata that restore this histogram (:meth:`_crema_from_state`)."""
        meta = {"type": "EFTHist", "axes": [_axis_state(a) for a in self.axes], "wc_names": list(self.wc_names),
                "benchmarks": self.benchmarks.tolist()}
        return {"values": self._values.copy(), "sumw2": self._sumw2.copy()}, meta

    @classmethod
    def _crema_from_state(cls, arrays: dict[str, np.ndarray], meta: dict) -> EFTHist:
        if meta.get("type") != "EFTHist":
            raise ValueError(f"not an EFTHist state (type {meta.get('type')!r})")
        out = cls(*(_axis_from_state(a) for a in meta["axes"]), wc_names=meta["wc_names"],
                  benchmarks=np.asarray(meta["benchmarks"], dtype=np.float64).reshape(-1, len(meta["wc_names"])))
        for key, dst in (("values", out._values), ("sumw2", out._sumw2)):
            arr = np.asarray(arrays[key], dtype=np.float64)
            if arr.shape != dst.shape:
                raise ValueError(f"EFTHist state: {key} has shape {arr.shape}, expected {dst.shape}")
            dst[...] = arr
        return out


__all__ = ["EFTHist", "EFTPoints", "design_matrix", "fit_coefficients", "n_terms", "term_names", "term_vector"]
