"""The one protocol every signal-vs-background method follows, and the training weights."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from crema.models.classifier import metrics


class Method(ABC):
    """A discriminant: ``fit(X, y, sample_weight)``, ``predict(X)`` (higher = more signal-like),
    ``evaluate(X, y, sample_weight)``, ``save(dir)``/``load(dir)`` (no pickle) and ``to_onnx(path)``.

    ``X`` is float32 (events, features) with NaN for undefined features; ``y`` 1 signal, 0 background;
    ``sample_weight`` yield weights at the luminosity (see :func:`training_weights` for how they
    enter a fit).
    """

    name: str = ""

    def __init__(self, features: list[str], seed: int = 0, threads: int = 1) -> None:
        self.features = list(features)
        self.seed = int(seed)
        self.threads = int(threads)

    @abstractmethod
    def fit(self, X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray) -> "Method":
        """Train on ``X``, ``y`` with yield weights ``sample_weight``; returns self."""

    @abstractmethod
    def predict(self, X: np.ndarray) -> np.ndarray:
        """float64 score per event, higher = more signal-like."""

    def evaluate(self, X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None) -> dict[str, float]:
        """:func:`crema.models.classifier.metrics.summary` of this method's scores."""
        return metrics.summary(y, self.predict(X), sample_weight, threshold=self.threshold)

    #: the method's own working point on its score (for accuracy and the fixed-threshold Z_A)
    threshold: float = 0.5

    @abstractmethod
    def save(self, directory: str | Path) -> None:
        """Write the trained method into ``directory`` (JSON/UBJ/state_dict, never pickle)."""

    @classmethod
    @abstractmethod
    def load(cls, directory: str | Path) -> "Method":
        """Read a method written by :meth:`save`."""

    @abstractmethod
    def to_onnx(self, path: str | Path) -> Path:
        """Export to ONNX: input ``features`` float32 [N, F] (NaN allowed), output ``score`` float32 [N]."""

    def _write_meta(self, directory: Path, extra: dict[str, Any]) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"method": self.name, "features": self.features, "seed": self.seed, **extra}
        (directory / "method.json").write_text(json.dumps(meta, indent=1))


def read_meta(directory: str | Path) -> dict[str, Any]:
    """The ``method.json`` of a saved method."""
    path = Path(directory) / "method.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no saved classifier here")
    return json.loads(path.read_text())


def training_weights(y: np.ndarray, sample_weight: np.ndarray) -> np.ndarray:
    """Weights a classification loss sees: negative yield weights set to 0 (a loss with negative
    weights can diverge), then signal and background each scaled to half the number of events,
    so the classes weigh equally and the loss scale does not depend on the luminosity."""
    y = np.asarray(y).astype(bool)
    w = np.clip(np.asarray(sample_weight, dtype=np.float64), 0.0, None)
    out = np.empty_like(w)
    for cls in (True, False):
        sel = y == cls
        total = w[sel].sum()
        if total <= 0:
            raise ValueError(f"no {'signal' if cls else 'background'} events with positive weight to train on")
        out[sel] = w[sel] * (len(w) / 2) / total
    return out


def balance_processes(y: np.ndarray, sample_weight: np.ndarray, process: np.ndarray) -> np.ndarray:
    """Weights with every background process scaled to the same total (their sum unchanged).

    A classification loss on yield weights sees almost only the background with the largest
    yield (W+jets after the SL selection: 96% of it), and the next one (ttbar, which dominates
    where the signal is) hardly at all; balancing processes lets the loss learn every background.
    Signal weights are unchanged. Negative weights keep their sign (they are zeroed later by
    :func:`training_weights`).
    """
    y = np.asarray(y).astype(bool)
    w = np.asarray(sample_weight, dtype=np.float64).copy()
    process = np.asarray(process)
    names = np.unique(process[~y])
    total = w[~y].sum()
    for name in names:
        sel = ~y & (process == name)
        if w[sel].sum() > 0:
            w[sel] *= total / len(names) / w[sel].sum()
    return w


def shuffled_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) index arrays: a random ``fraction`` of ``n`` rows for validation (seeded)."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(n * fraction)))
    return np.sort(order[n_val:]), np.sort(order[:n_val])
