"""ML4EFT likelihood-ratio networks: training config, model folder, replica selection, ONNX wrapper.

The learned ratio of an EFT to the SM differential cross section is

    r(x, c) = 1 + sum_i c_i NN_i(x) + sum_i c_i^2 NN_ii(x) + sum_{i<j} c_i c_j NN_ij(x),

one network per term (Ambrosio et al., JHEP 03 (2023) 033, arXiv:2211.02058).  This module has no
torch dependency: it holds the training configuration, the replica filter, the model folder's
metadata and :class:`ML4EFTModel`, the columnar ONNX wrapper that evaluates every term at once and
gives r(x, c) for any c without re-running the networks.  Training and export live in
:mod:`crema.models.ml4eft_train` (torch, the ``train`` extra).  See docs/eft.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crema.histograms.eft import term_names, term_vector
from crema.models.onnx import OnnxModel
from crema.schema import ConfigError, from_dict, load_yaml

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "ml4eft"
METADATA = "ml4eft.json"
ONNX_FILE = "ml4eft.onnx"
REPLICA_DIR = "replicas"
MIN_REPLICAS_FILTER = 5  # below this a median absolute deviation says nothing (3 replicas: MAD of one value)


@dataclass(frozen=True)
class TrainConfig:
    """``crema eft-train`` settings (``src/crema/configs/ml4eft/default.yaml``).

    ``c_train``: the WC value of the EFT "sample" of each coefficient (a term's sample is the SM
    sample reweighted by its own quadratic weight at c_train); ``fold``: the event-number parity
    used for training (``even``/``odd``), the other one is held out for intervals; ``loss``: ``CE``
    (cross entropy) or ``QC`` (quadratic); ``patience``: epochs past the validation minimum before
    stopping (then the minimum is restored); ``outlier_sigma``: the replica filter's fallback width.
    """

    features: list[str]
    wc_names: list[str] = field(default_factory=lambda: ["ctGRe", "ctj8"])
    c_train: dict[str, float] = field(default_factory=dict)
    fold: str = "even"
    loss: str = "CE"
    hidden: list[int] = field(default_factory=lambda: [100, 100, 100])
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 512
    max_epochs: int = 100
    patience: int = 10
    validation_fraction: float = 0.2
    replicas: int = 5
    outlier_sigma: float = 4.0
    max_events: int = 0
    quantile_bins: int = 10
    seed: int = 1
    threads: int = 1

    def validate(self) -> None:
        if not self.features:
            raise ConfigError("features: need at least one feature")
        if not self.wc_names or len(set(self.wc_names)) != len(self.wc_names):
            raise ConfigError("wc_names: need unique, non-empty names")
        missing = [w for w in self.wc_names if w not in self.c_train]
        if missing:
            raise ConfigError(f"c_train: no value for {missing[0]}")
        if any(v == 0 for v in self.c_train.values()):
            raise ConfigError("c_train: values must be non-zero")
        if self.fold not in ("even", "odd"):
            raise ConfigError("fold: expected 'even' or 'odd'")
        if self.loss not in ("CE", "QC"):
            raise ConfigError("loss: expected 'CE' or 'QC'")
        if not self.hidden or min(self.hidden) < 1:
            raise ConfigError("hidden: need positive layer widths")
        for name in ("batch_size", "max_epochs", "replicas", "quantile_bins", "threads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1")
        if self.patience < 0 or self.max_events < 0:
            raise ConfigError("patience and max_events: must be >= 0")
        if not 0 < self.validation_fraction < 1:
            raise ConfigError("validation_fraction: must be in (0, 1)")

    def term_scales(self) -> dict[str, float]:
        """The monomial of each non-SM term at c_train (c_i, c_i^2, c_i c_j)."""
        c = np.array([self.c_train[w] for w in self.wc_names])
        return dict(zip(term_names(self.wc_names)[1:], map(float, term_vector(c)[1:])))


def load_train_config(path: str | Path | None = None, **overrides: Any) -> TrainConfig:
    """Training config from YAML (default: the shipped ``default.yaml``), with keyword overrides."""
    path = Path(path) if path else CONFIG_DIR / "default.yaml"
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping")
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return from_dict(TrainConfig, data, "")
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def fold_mask(events: np.ndarray, fold: str) -> np.ndarray:
    """Events of the training fold ``fold`` (event-number parity)."""
    even = np.asarray(events, dtype=np.int64) % 2 == 0
    return even if fold == "even" else ~even


def held_out_fold(fold: str) -> str:
    """The parity a model trained on ``fold`` has never seen."""
    return "odd" if fold == "even" else "even"


def select_replicas(losses, n_sigma: float = 4.0, gain: float = 0.0) -> np.ndarray:
    """Boolean mask of the replicas to keep, from their final validation losses (same validation events).

    The sorted losses are split into the two groups with the smallest within-group variance; if the
    high group is a minority and its gap to the low group exceeds ``n_sigma`` sigma, it is rejected.
    Otherwise replicas further than ``n_sigma`` sigma from the median are rejected.  sigma is the
    largest of the low group's standard deviation, 1.4826 x the median absolute deviation and 1% of
    ``gain`` (how much the median replica improves on a constant ratio): differences far below what
    the networks learned are not outliers.  With fewer than :data:`MIN_REPLICAS_FILTER` finite losses
    no spread can be estimated and only non-finite losses are rejected.
    """
    x = np.asarray(losses, dtype=np.float64)
    keep = np.isfinite(x)
    v = x[keep]
    if len(v) < MIN_REPLICAS_FILTER:
        return keep
    med = np.median(v)
    floor = max(1.4826 * np.median(np.abs(v - med)), 0.01 * abs(gain), 1e-12 * abs(med))
    s = np.sort(v)
    costs = [np.var(s[:k]) * k + np.var(s[k:]) * (len(s) - k) for k in range(1, len(s))]
    k = int(np.argmin(costs)) + 1
    low, high = s[:k], s[k:]
    if len(high) < len(low) and high[0] - low[-1] > n_sigma * max(np.std(low, ddof=1), floor):
        return keep & (x <= low[-1])
    return keep & (np.abs(x - med) <= n_sigma * floor)


def weighted_quantiles(values: np.ndarray, weights: np.ndarray, n_bins: int) -> np.ndarray:
    """``n_bins + 1`` edges splitting the weighted distribution of ``values`` into equal parts
    (outer edges at the extreme values; duplicates removed)."""
    order = np.argsort(values)
    v, w = values[order], np.clip(weights[order], 0.0, None)
    cdf = np.cumsum(w)
    cdf /= cdf[-1]
    inner = np.interp(np.arange(1, n_bins) / n_bins, cdf, v)
    return np.unique(np.concatenate([[v[0]], inner, [v[-1]]]))


def read_metadata(model_dir: str | Path) -> dict:
    """``ml4eft.json`` of a model folder (errors name the file)."""
    path = Path(model_dir) / METADATA
    if not path.is_file():
        raise ConfigError(f"{path}: not an ML4EFT model folder (no {METADATA}; train one with crema eft-train)")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON ({err})") from None
    for key in ("wc_names", "features", "terms", "quantile_edges", "training"):
        if key not in meta:
            raise ConfigError(f"{path}: missing key {key!r}")
    return meta


class ML4EFTModel(OnnxModel):
    """Columnar evaluation of an ML4EFT model folder (the replica-median networks, scaler inside).

    ``model(x)`` with ``x`` (N, n_features) gives the (N, n_terms - 1) network terms NN_t in the order
    of :func:`crema.histograms.eft.term_names` without ``sm``; :meth:`ratio` turns them into r(x, c).
    Stateless per call and picklable: the onnxruntime session is created lazily on each worker.
    """

    def __init__(self, model_dir: str | Path, **kwargs: Any) -> None:
        self.model_dir = str(Path(model_dir).resolve())
        meta = read_metadata(self.model_dir)
        self.wc_names: list[str] = list(meta["wc_names"])
        self.features: list[str] = list(meta["features"])
        self.terms: list[str] = list(meta["terms"])
        self.quantile_edges: dict[str, list[float]] = dict(meta["quantile_edges"])
        self.training: dict = dict(meta["training"])
        super().__init__(Path(self.model_dir) / ONNX_FILE, **kwargs)

    def prepare_awkward(self, features):
        """A mapping of per-event feature arrays (or a record array) -> the (N, n_features) matrix."""
        import awkward as ak

        return [np.stack([np.asarray(ak.to_numpy(features[f]), dtype=np.float32) for f in self.features], axis=1)
                .reshape(-1, len(self.features))], {}

    def numpy_call(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32).reshape(-1, len(self.features))
        return self.run(x)["terms"]

    def matrix(self, table) -> np.ndarray:
        """The (N, n_features) input matrix of a column mapping (DataFrame or dict); errors name a missing column."""
        missing = [f for f in self.features if f not in table]
        if missing:
            raise ConfigError(f"{self.model_dir}: the model needs feature {missing[0]!r}, not in the input")
        return np.stack([np.asarray(table[f], dtype=np.float32) for f in self.features], axis=1)

    def term_values(self, table) -> np.ndarray:
        """(N, n_terms - 1) NN terms of the events of a column mapping."""
        return self.numpy_call(self.matrix(table))

    @staticmethod
    def ratio_from_terms(terms: np.ndarray, point) -> np.ndarray:
        """r(x, c) = 1 + terms @ monomials(c) (``point``: one point (n_wc,) or several (P, n_wc) -> (N, P))."""
        m = term_vector(np.asarray(point, dtype=np.float64))
        return 1.0 + np.asarray(terms, dtype=np.float64) @ m[..., 1:].T

    def ratio(self, x: np.ndarray, point) -> np.ndarray:
        """r(x, c) of feature matrix ``x`` at ``point`` (empty input -> empty output)."""
        return self.ratio_from_terms(self.numpy_call(x), point)


__all__ = ["ML4EFTModel", "TrainConfig", "fold_mask", "held_out_fold", "load_train_config", "read_metadata",
           "select_replicas", "weighted_quantiles"]
