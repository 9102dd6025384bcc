"""A trained classifier inside a processor: k-fold ONNX models, each event scored by the fold that never saw it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import awkward as ak
import numpy as np

from crema.models.onnx import OnnxModel
from crema.observables import Expression, Observables, parse
from crema.schema import ConfigError, load_yaml


def read_channels(path: str | Path) -> list[str] | None:
    """The channels a ``features.yaml`` was made from (None: not recorded)."""
    data = load_yaml(path)
    return list(data["channels"]) if isinstance(data, dict) and data.get("channels") else None


def read_features(path: str | Path) -> dict[str, str]:
    """``name -> expression`` of a ``features.yaml`` (written by ``crema classifier-dataset``)."""
    data = load_yaml(path)
    features = data.get("features") if isinstance(data, dict) else None
    if not isinstance(features, dict) or not features:
        raise ConfigError(f"{path}: features: expected a mapping of feature name -> observable expression")
    return {str(name): (spec["expr"] if isinstance(spec, dict) else spec) for name, spec in features.items()}


def read_training(directory: str | Path) -> dict:
    """The ``training.json`` of a model directory (``crema classifier-train``)."""
    path = Path(directory) / "training.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not a model directory of crema classifier-train")
    return json.loads(path.read_text())


@dataclass(frozen=True)
class ClassifierOptions:
    """``processor.options.classifier``: a model directory of ``crema classifier-train``, the method
    to run (``cut``, ``bdt``, ``mlp``) and onnxruntime threads."""

    model: str
    method: str = "bdt"
    threads: int = 1

    def build(self, where: str, outputs: Mapping[str, tuple[str, ...]]) -> "ClassifierModel":
        """The wrapper, built now: a missing model, method or a feature the run cannot compute
        (a model output of a model that is off) fails at start-up naming the key."""
        directory = Path(self.model).expanduser()
        try:
            training = read_training(directory)
        except FileNotFoundError as err:
            raise ConfigError(f"{where}.model: {err}") from None
        if self.method not in training["methods"]:
            raise ConfigError(f"{where}.method: {self.method!r} was not trained in {directory} "
                              f"(trained: {', '.join(training['methods'])})")
        features = read_features(directory / "features.yaml")
        expressions = [parse(text, f"{where}.model ({directory / 'features.yaml'}).features.{name}", outputs=outputs)
                       for name, text in features.items()]
        k = int(training["folds"])
        paths = {f"fold{f}": directory / self.method / f"fold{f}" / "model.onnx" for f in range(k)}
        try:
            return ClassifierModel(paths, expressions, k, threads=self.threads,
                                   channels=read_channels(directory / "features.yaml"))
        except FileNotFoundError as err:
            raise ConfigError(f"{where}.model: {err}") from None


class ClassifierModel(OnnxModel):
    """k ONNX models; an event with ``event % k == f`` is scored by fold model ``f``, which was
    trained on the other folds only (the split ``crema classifier-train`` used). Events of a
    channel the model was not trained on (``channels``) get NaN (not filled)."""

    def __init__(self, model_paths: Mapping[str, str | Path], expressions: list[Expression], folds: int,
                 threads: int = 1, channels: list[str] | None = None) -> None:
        # trees and cuts need no padding to a row block; an MLP keeps it for chunk-independent results
        super().__init__(dict(model_paths), threads=threads, batch_size=1 << 16)
        self.expressions = list(expressions)
        self.folds = int(folds)
        self.channels = channels

    def score(self, observables: Observables, event: np.ndarray, channel: str | None = None) -> np.ndarray:
        """float64 score per event of the features read from ``observables`` (NaN outside the trained channels)."""
        if channel is not None and self.channels is not None and channel not in self.channels:
            return np.full(len(event), np.nan)
        return self.numpy_call(observables.matrix(self.expressions), np.asarray(event))

    def numpy_call(self, features: np.ndarray, event: np.ndarray) -> np.ndarray:
        fold = np.asarray(event, dtype=np.int64) % self.folds
        out = np.empty(len(features), dtype=np.float64)
        for f in range(self.folds):
            sel = fold == f
            if sel.any():
                out[sel] = self.run(features[sel], model=f"fold{f}")["score"]
        return out

    def prepare_awkward(self, features, event):
        return (ak.to_numpy(features), ak.to_numpy(event)), {}
