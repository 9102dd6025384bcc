"""k-fold training by event number: every event is scored by a model that never saw it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from crema.models.classifier import method_class
from crema.models.classifier.base import balance_processes

#: columns of ``scores.parquet`` besides ``score_<method>``
ID_COLUMNS = ["label", "weight", "dataset", "process", "channel", "event", "fold"]


def fold_of(event, k: int) -> np.ndarray:
    """The fold of each event: ``event % k`` (k = 2: even/odd). The processor uses the same rule."""
    return np.asarray(event, dtype=np.int64) % k


def train_folds(table: pd.DataFrame, features: list[str], methods: list[str], outdir: str | Path, *, k: int = 2,
                seed: int = 0, threads: int = 1, options: dict[str, dict] | None = None,
                features_file: str | Path | None = None, balance: str = "process", log=None) -> pd.DataFrame:
    """Train each method k times, fold f on the events of the other folds, and score fold f with it.

    Training weights are the yield weights x k/(k-1), so a model trained on (k-1)/k of the events
    sees the yields of the whole sample (this matters for the cut-and-count's significance and
    its minimum-background guard). With ``balance="process"`` the methods with a classification
    loss (BDT, MLP) train on weights with every background process scaled to the same total
    (:func:`~crema.models.classifier.base.balance_processes`); ``"class"`` keeps the yield
    weights (each method then balances signal against background only). The cut-and-count
    always sees the yields. Writes ``outdir/<method>/fold<f>/`` (the saved method and its
    ``model.onnx``), ``outdir/scores.parquet`` (out-of-fold scores), ``outdir/training.json`` and a
    copy of ``features_file``. Returns the scores table.
    """
    if k < 2:
        raise ValueError("k-fold training needs k >= 2")
    if balance not in ("process", "class"):
        raise ValueError(f"balance: expected 'process' or 'class', got {balance!r}")
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    X = table[features].to_numpy(dtype=np.float32)
    y = table["label"].to_numpy(dtype=np.int64)
    w = table["weight"].to_numpy(dtype=np.float64)
    w_balanced = (balance_processes(y, w, table["process"] if "process" in table else table["dataset"])
                  if balance == "process" else w)
    folds = fold_of(table["event"], k)
    scores = table[[c for c in ID_COLUMNS if c in table.columns]].copy()
    scores["fold"] = folds
    info = {"folds": k, "fold_rule": "event % folds", "seed": seed, "methods": list(methods), "features": features,
            "balance": balance, "fits": {}}
    for method in methods:
        cls = method_class(method)
        score = np.full(len(table), np.nan)
        for f in range(k):
            train, test = folds != f, folds == f
            model = cls(features, seed=seed + f, threads=threads, **(options or {}).get(method, {}))
            weights = w if method == "cut" else w_balanced
            model.fit(X[train], y[train], weights[train] * k / (k - 1))
            where = outdir / method / f"fold{f}"
            model.save(where)
            model.to_onnx(where / "model.onnx")
            score[test] = model.predict(X[test])
            info["fits"][f"{method}/fold{f}"] = {"train_events": int(train.sum()), "scored_events": int(test.sum())}
            if log is not None:
                log(f"{method} fold {f}: trained on {int(train.sum())} events, scored {int(test.sum())}")
        scores[f"score_{method}"] = score
    scores.to_parquet(outdir / "scores.parquet", index=False)
    (outdir / "training.json").write_text(json.dumps(info, indent=1))
    if features_file is not None:
        shutil.copyfile(features_file, outdir / "features.yaml")
    return scores
