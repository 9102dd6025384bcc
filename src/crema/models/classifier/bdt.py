"""Boosted decision trees (xgboost) and their ONNX export from the model's own JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from crema.models.classifier.base import Method, read_meta, shuffled_split, training_weights


class BDT(Method):
    """xgboost ``binary:logistic`` trees on yield weights (class-balanced, :func:`training_weights`).

    Early stopping watches the weighted log-loss of a shuffled ``validation_fraction`` of the
    training events (not the tail of the input, which is ordered by dataset). Missing features
    (NaN) follow xgboost's learned default branch, in the ONNX export too.
    """

    name = "bdt"

    def __init__(self, features: list[str], seed: int = 0, threads: int = 1, n_estimators: int = 500,
                 max_depth: int = 4, learning_rate: float = 0.3, early_stopping_rounds: int = 20,
                 validation_fraction: float = 0.2, subsample: float = 0.8) -> None:
        super().__init__(features, seed, threads)
        self.params = {"n_estimators": n_estimators, "max_depth": max_depth, "learning_rate": learning_rate,
                       "early_stopping_rounds": early_stopping_rounds, "validation_fraction": validation_fraction,
                       "subsample": subsample}
        self.booster = None
        self.best_iteration: int | None = None

    def _xgb_params(self) -> dict:
        p = self.params
        return {"objective": "binary:logistic", "eval_metric": "logloss", "tree_method": "hist",
                "max_depth": p["max_depth"], "eta": p["learning_rate"], "subsample": p["subsample"],
                "nthread": self.threads, "seed": self.seed}

    def fit(self, X, y, sample_weight) -> "BDT":
        import xgboost as xgb

        w = training_weights(y, sample_weight)
        train, val = shuffled_split(len(y), self.params["validation_fraction"], self.seed)
        dtrain = xgb.DMatrix(X[train], label=y[train], weight=w[train], feature_names=None, nthread=self.threads)
        dval = xgb.DMatrix(X[val], label=y[val], weight=w[val], nthread=self.threads)
        booster = xgb.train(self._xgb_params(), dtrain, num_boost_round=self.params["n_estimators"],
                            evals=[(dval, "validation")], early_stopping_rounds=self.params["early_stopping_rounds"],
                            verbose_eval=False)
        self.best_iteration = int(booster.best_iteration)
        self.booster = booster[: self.best_iteration + 1]  # keep only the trees up to the best validation loss
        return self

    def predict(self, X) -> np.ndarray:
        import xgboost as xgb

        return self.booster.predict(xgb.DMatrix(np.asarray(X, dtype=np.float32), nthread=self.threads)).astype(np.float64)

    def save(self, directory) -> None:
        directory = Path(directory)
        self._write_meta(directory, {"params": self.params, "best_iteration": self.best_iteration})
        self.booster.save_model(directory / "model.json")

    @classmethod
    def load(cls, directory) -> "BDT":
        import xgboost as xgb

        meta = read_meta(directory)
        bdt = cls(meta["features"], meta["seed"], **meta["params"])
        bdt.best_iteration = meta["best_iteration"]
        bdt.booster = xgb.Booster(model_file=str(Path(directory) / "model.json"))
        return bdt

    def to_onnx(self, path) -> Path:
        model = json.loads(bytes(self.booster.save_raw("json")))
        return write_onnx(tree_ensemble_onnx(model, len(self.features)), path)


def _base_margin(learner: dict) -> float:
    """The model's intercept as a margin: xgboost stores base_score as a probability
    (``"5E-1"``, or ``"[5E-1]"`` since 3.0) for ``binary:logistic``."""
    raw = learner["learner_model_param"]["base_score"].strip("[]").split(",")[0]
    p = float(raw)
    objective = learner["objective"]["name"]
    if objective != "binary:logistic":
        raise ValueError(f"ONNX export supports binary:logistic models, not {objective}")
    return math.log(p / (1 - p))


def tree_ensemble_onnx(model: dict, n_features: int):
    """An ONNX graph (``ai.onnx.ml`` TreeEnsembleRegressor + Sigmoid) equal to xgboost's prediction.

    xgboost sends a row left when ``x < split_condition`` (float32) and NaN along ``default_left``;
    a leaf's value is stored in ``split_conditions``. These map one to one onto the ONNX nodes
    (``BRANCH_LT``, true = left, ``missing_value_tracks_true`` = ``default_left``).
    """
    from onnx import TensorProto, helper

    learner = model["learner"]
    trees = learner["gradient_booster"]["model"]["trees"]
    nodes: dict[str, list] = {k: [] for k in ("treeids", "nodeids", "featureids", "values", "modes", "truenodeids",
                                               "falsenodeids", "missing")}
    targets: dict[str, list] = {"treeids": [], "nodeids": [], "weights": []}
    for t, tree in enumerate(trees):
        left, right = tree["left_children"], tree["right_children"]
        for i in range(len(left)):
            leaf = left[i] == -1
            nodes["treeids"].append(t)
            nodes["nodeids"].append(i)
            nodes["featureids"].append(0 if leaf else int(tree["split_indices"][i]))
            nodes["values"].append(0.0 if leaf else float(tree["split_conditions"][i]))
            nodes["modes"].append("LEAF" if leaf else "BRANCH_LT")
            nodes["truenodeids"].append(0 if leaf else int(left[i]))
            nodes["falsenodeids"].append(0 if leaf else int(right[i]))
            nodes["missing"].append(0 if leaf else int(tree["default_left"][i]))
            if leaf:
                targets["treeids"].append(t)
                targets["nodeids"].append(i)
                targets["weights"].append(float(tree["split_conditions"][i]))
    ensemble = helper.make_node(
        "TreeEnsembleRegressor", ["features"], ["margin"], domain="ai.onnx.ml", n_targets=1,
        nodes_treeids=nodes["treeids"], nodes_nodeids=nodes["nodeids"], nodes_featureids=nodes["featureids"],
        nodes_values=nodes["values"], nodes_modes=nodes["modes"], nodes_truenodeids=nodes["truenodeids"],
        nodes_falsenodeids=nodes["falsenodeids"], nodes_missing_value_tracks_true=nodes["missing"],
        target_treeids=targets["treeids"], target_nodeids=targets["nodeids"],
        target_ids=[0] * len(targets["weights"]), target_weights=targets["weights"],
        base_values=[_base_margin(learner)], aggregate_function="SUM", post_transform="NONE",
    )
    graph = helper.make_graph(
        [ensemble, helper.make_node("Sigmoid", ["margin"], ["probability"]),
         helper.make_node("Flatten", ["probability"], ["flat"], axis=0),
         helper.make_node("Squeeze", ["flat", "zero"], ["score"])],
        "crema_bdt",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", n_features])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"])],
        initializer=[helper.make_tensor("zero", TensorProto.INT64, [1], [0])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)],
                             producer_name="crema")


def write_onnx(model, path) -> Path:
    """Check and write an ONNX model."""
    import onnx

    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path
