"""Cut-and-count: rectangular cuts chosen to maximise the weighted Asimov significance."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from crema.models.classifier import metrics
from crema.models.classifier.base import Method, read_meta, shuffled_split
from crema.models.classifier.bdt import write_onnx


class CutAndCount(Method):
    """A window ``lo < x < hi`` per feature, found by coordinate ascent on Z_A.

    Each round tries, for every feature, ``n_candidates`` lower and upper thresholds at quantiles
    of the signal still selected by the other cuts, and keeps the single change that raises the
    Asimov significance of the selected yields (s, b) the most while at least
    ``min_background`` weighted background events and ``min_background_events`` simulated
    background events stay selected (a significance from a background estimate of a few
    simulated events is a fluctuation). It stops when no change
    helps or after ``max_rounds``. Weights are yields (signed; the metric sees them as they are).
    An event whose feature is NaN fails a cut on that feature.

    ``predict`` gives the fraction of the cut features an event passes: 1 for the selected
    events, so ``score > threshold`` with ``threshold`` just under 1 is the cut-and-count selection.
    """

    name = "cut"

    def __init__(self, features: list[str], seed: int = 0, threads: int = 1, min_background: float = 1.0,
                 min_background_events: int = 10, n_candidates: int = 32, max_rounds: int = 12,
                 relative_uncertainty: float = 0.0, validation_fraction: float = 0.3) -> None:
        super().__init__(features, seed, threads)
        self.params = {"min_background": min_background, "min_background_events": min_background_events,
                       "n_candidates": n_candidates, "max_rounds": max_rounds,
                       "relative_uncertainty": relative_uncertainty, "validation_fraction": validation_fraction}
        self.lo = np.full(len(features), -np.inf)
        self.hi = np.full(len(features), np.inf)
        self.significance = float("nan")
        self.validation_significance = float("nan")

    @property
    def active(self) -> np.ndarray:
        """Indices of the features with a cut."""
        return np.flatnonzero(np.isfinite(self.lo) | np.isfinite(self.hi))

    @property
    def threshold(self) -> float:  # all cuts passed
        return 1.0 - 0.5 / max(len(self.active), 1)

    def _z(self, s, b, n_b, events_fraction: float = 1.0):
        z = metrics.asimov_significance(s, b, self.params["relative_uncertainty"])
        ok = ((np.asarray(b) >= self.params["min_background"])
              & (np.asarray(n_b) >= self.params["min_background_events"] * events_fraction))
        return np.where(ok, z, np.nan)

    def fit(self, X, y, sample_weight) -> "CutAndCount":
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y).astype(bool)
        w = np.asarray(sample_weight, dtype=np.float64)
        f = self.params["validation_fraction"]
        if f <= 0:
            return self._search(X, y, w, None)
        search, val = shuffled_split(len(y), f, self.seed)
        # each part's weights scaled to the yields of the whole sample
        return self._search(X[search], y[search], w[search] / (1 - f), (X[val], y[val], w[val] / f, f / (1 - f)))

    def _validation_z(self, val) -> float:
        X, y, w, fraction = val
        sel = np.all((X[:, self.active] > self.lo[self.active]) & (X[:, self.active] < self.hi[self.active]), axis=1)
        return float(np.nan_to_num(self._z(w[sel & y].sum(), w[sel & ~y].sum(), (sel & ~y).sum(), fraction), nan=0.0))

    def _search(self, X, y, w, val) -> "CutAndCount":
        history = []  # (validation Z, training Z, lo, hi) after each round
        ws, wb = np.where(y, w, 0.0), np.where(y, 0.0, w)
        levels = np.linspace(0, 1, self.params["n_candidates"] + 2)[1:-1]
        inside = (X > self.lo) & (X < self.hi)  # per feature: passes its window (NaN fails, but only cut features count)
        best = float(np.nan_to_num(self._z(ws.sum(), wb.sum(), (~y).sum()), nan=0.0))
        if val is not None:
            history.append((self._validation_z(val), best, self.lo.copy(), self.hi.copy()))
        for _ in range(self.params["max_rounds"]):
            cut = np.isfinite(self.lo) | np.isfinite(self.hi)
            passing = np.where(cut, inside, True)
            change = None
            for j in range(X.shape[1]):
                others = np.all(np.delete(passing, j, axis=1), axis=1)
                x = X[:, j]
                sig = x[others & y & np.isfinite(x)]
                if len(sig) < 2:
                    continue
                for t in np.unique(np.quantile(sig, levels)):
                    for bound in ("lo", "hi"):
                        lo = t if bound == "lo" else self.lo[j]
                        hi = t if bound == "hi" else self.hi[j]
                        sel = others & (x > lo) & (x < hi)
                        z = float(self._z(ws[sel].sum(), wb[sel].sum(), (sel & ~y).sum()))
                        if z > best * (1 + 1e-9):
                            best, change = z, (j, lo, hi)
            if change is None:
                break
            j, self.lo[j], self.hi[j] = change
            inside[:, j] = (X[:, j] > self.lo[j]) & (X[:, j] < self.hi[j])
            if val is not None:
                history.append((self._validation_z(val), best, self.lo.copy(), self.hi.copy()))
        self.significance = best
        if history:  # the earliest round with the best validation significance
            i = max(range(len(history)), key=lambda k: (history[k][0], -k))
            self.validation_significance, self.significance, self.lo, self.hi = history[i]
        return self

    def predict(self, X) -> np.ndarray:
        active = self.active
        if len(active) == 0:
            return np.ones(len(X))
        x = np.asarray(X, dtype=np.float32)[:, active]
        passed = (x > self.lo[active].astype(np.float32)) & (x < self.hi[active].astype(np.float32))
        return passed.mean(axis=1, dtype=np.float64)

    def cuts(self) -> dict[str, dict[str, float | None]]:
        """``feature -> {"min": lo, "max": hi}`` for the cut features (None: no bound)."""
        def bound(v):
            return None if not np.isfinite(v) else float(v)
        return {self.features[j]: {"min": bound(self.lo[j]), "max": bound(self.hi[j])} for j in self.active}

    def save(self, directory) -> None:
        directory = Path(directory)
        self._write_meta(directory, {"params": self.params, "significance": self.significance,
                                     "validation_significance": self.validation_significance})
        (directory / "cuts.json").write_text(json.dumps(self.cuts(), indent=1))

    @classmethod
    def load(cls, directory) -> "CutAndCount":
        meta = read_meta(directory)
        cut = cls(meta["features"], meta["seed"], **meta["params"])
        cut.significance = meta["significance"]
        cut.validation_significance = meta.get("validation_significance", float("nan"))
        for name, b in json.loads((Path(directory) / "cuts.json").read_text()).items():
            j = cut.features.index(name)
            cut.lo[j] = -np.inf if b["min"] is None else b["min"]
            cut.hi[j] = np.inf if b["max"] is None else b["max"]
        return cut

    def to_onnx(self, path) -> Path:
        from onnx import TensorProto, helper

        active = self.active
        inputs = [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", len(self.features)])]
        outputs = [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"])]
        if len(active) == 0:  # no cut kept: every event is selected (score 1)
            graph = helper.make_graph(
                [helper.make_node("Shape", ["features"], ["shape"], start=0, end=1),
                 helper.make_node("ConstantOfShape", ["shape"], ["score"],
                                  value=helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0]))],
                "crema_cut_and_count", inputs, outputs)
            return write_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                                producer_name="crema"), path)
        f32 = np.float32
        graph = helper.make_graph(
            [helper.make_node("Gather", ["features", "index"], ["x"], axis=1),
             helper.make_node("Greater", ["x", "lo"], ["above"]),
             helper.make_node("Less", ["x", "hi"], ["below"]),
             helper.make_node("And", ["above", "below"], ["inside"]),
             helper.make_node("Cast", ["inside"], ["passed"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMean", ["passed"], ["score"], axes=[1], keepdims=0)],
            "crema_cut_and_count", inputs, outputs,
            initializer=[helper.make_tensor("index", TensorProto.INT64, [len(active)], active.tolist()),
                         helper.make_tensor("lo", TensorProto.FLOAT, [len(active)], self.lo[active].astype(f32).tolist()),
                         helper.make_tensor("hi", TensorProto.FLOAT, [len(active)], self.hi[active].astype(f32).tolist())],
        )
        return write_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="crema"), path)
