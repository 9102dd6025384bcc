"""Cut-and-count, BDT and MLP under one protocol: ONNX == native, save/load, weights, k folds."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest

from crema.models.classifier import load_method, method_class, metrics
from crema.models.classifier.base import balance_processes, shuffled_split
from crema.models.classifier.folds import train_folds

FEATURES = ["a", "b", "c", "d"]
FAST = {"bdt": {"n_estimators": 60}, "mlp": {"epochs": 8, "hidden": [16, 16]}, "cut": {"n_candidates": 12}}


def toy(n=3000, seed=3):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(int)
    X = rng.normal(size=(n, 4)).astype(np.float32)
    X[:, 0] += 1.2 * y
    X[:, 1] -= 0.8 * y
    X[rng.random((n, 4)) < 0.05] = np.nan  # missing objects
    w = rng.uniform(0.5, 1.5, n) * np.where(y == 1, 0.05, 1.0)
    return X, y, w


@pytest.fixture(scope="module")
def data():
    return toy()


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    X, y, w = data
    out = {}
    for name in ("cut", "bdt", "mlp"):
        model = method_class(name)(FEATURES, seed=1, **FAST[name]).fit(X, y, w)
        directory = tmp_path_factory.mktemp(name)
        model.save(directory)
        model.to_onnx(directory / "model.onnx")
        out[name] = (model, directory)
    return out


@pytest.mark.parametrize("name,tolerance", [("bdt", 1e-6), ("mlp", 1e-5), ("cut", 1e-6)])
def test_onnx_equals_native(trained, data, name, tolerance):
    model, directory = trained[name]
    X = data[0]
    onnx_score = ort.InferenceSession(str(directory / "model.onnx")).run(["score"], {"features": X})[0]
    assert onnx_score.shape == (len(X),)
    np.testing.assert_allclose(onnx_score, model.predict(X), rtol=0, atol=tolerance)


@pytest.mark.parametrize("name", ["cut", "bdt", "mlp"])
def test_save_load_round_trip_without_pickle(trained, data, name):
    model, directory = trained[name]
    files = {p.name for p in directory.iterdir()}
    assert not any(f.endswith((".pkl", ".pickle")) for f in files)
    np.testing.assert_array_equal(load_method(directory).predict(data[0]), model.predict(data[0]))


@pytest.mark.parametrize("name", ["cut", "bdt", "mlp"])
def test_every_method_separates_and_evaluates(trained, data, name):
    model, _ = trained[name]
    m = model.evaluate(*data)
    assert {"accuracy", "auc", "asimov_significance", "max_significance", "r50", "r99"} <= set(m)
    assert m["auc"] > (0.6 if name == "cut" else 0.8)  # a cut-and-count score is a step function


def test_cut_and_count_maximises_significance_with_its_guard(data):
    X, y, w = data
    w = w * 50  # yields where the guard bites
    cut = method_class("cut")(FEATURES, min_background=20.0, min_background_events=30,
                              validation_fraction=0.0).fit(X, y, w)
    selected = cut.predict(X) > cut.threshold
    s, b = w[selected & (y == 1)].sum(), w[selected & (y == 0)].sum()
    assert b >= 20.0 and (selected & (y == 0)).sum() >= 30
    assert metrics.asimov_significance(s, b) == pytest.approx(cut.significance)
    # no single threshold on the best feature alone does better than the found window
    x = X[:, 0]
    single = [metrics.asimov_significance(w[(x > t) & (y == 1)].sum(), w[(x > t) & (y == 0)].sum())
              for t in np.nanquantile(x[y == 1], np.linspace(0.02, 0.98, 49))
              if w[(x > t) & (y == 0)].sum() >= 20.0 and ((x > t) & (y == 0)).sum() >= 30]
    assert cut.significance >= max(single) - 1e-9
    assert all(set(v) == {"min", "max"} for v in cut.cuts().values())


def test_cut_and_count_without_cuts_selects_everything(tmp_path):
    cut = method_class("cut")(FEATURES)  # no cut found (e.g. none beats the validation part)
    X = np.array([[1.0, np.nan, 2.0, 3.0], [0.0, 0.0, 0.0, 0.0]], np.float32)
    onnx_score = ort.InferenceSession(str(cut.to_onnx(tmp_path / "m.onnx"))).run(["score"], {"features": X})[0]
    np.testing.assert_array_equal(onnx_score, [1.0, 1.0])
    np.testing.assert_array_equal(cut.predict(X), [1.0, 1.0])


def test_cut_and_count_keeps_the_cuts_best_on_validation(data):
    X, y, w = data
    cut = method_class("cut")(FEATURES, seed=4, validation_fraction=0.3).fit(X, y, w * 50)
    assert cut.validation_significance > 0 and len(cut.active) >= 1
    search, val = shuffled_split(len(y), 0.3, 4)
    sel = cut.predict(X[val]) > cut.threshold
    wv = w[val] * 50 / 0.3
    assert metrics.asimov_significance(wv[sel & (y[val] == 1)].sum(), wv[sel & (y[val] == 0)].sum()) == \
        pytest.approx(cut.validation_significance, rel=1e-6)


def test_bdt_honours_weights(data):
    X, y, w = data
    region = X[:, 2] > 0.5
    tilted = np.where(region & (y == 0), 0.0, w)  # background in the region weighs nothing
    plain = method_class("bdt")(FEATURES, seed=2, **FAST["bdt"]).fit(X, y, w)
    skewed = method_class("bdt")(FEATURES, seed=2, **FAST["bdt"]).fit(X, y, tilted)
    gain = skewed.predict(X[region]).mean() - plain.predict(X[region]).mean()
    assert gain > 0.1


def test_process_balance_gives_every_background_the_same_total():
    y = np.array([1, 1, 0, 0, 0, 0])
    w = np.array([0.5, 0.5, 60.0, 30.0, 9.0, 1.0])
    process = np.array(["X", "X", "W", "W", "tt", "tt"])
    b = balance_processes(y, w, process)
    np.testing.assert_allclose(b[:2], w[:2])
    assert b[2:4].sum() == pytest.approx(50.0) and b[4:].sum() == pytest.approx(50.0)
    np.testing.assert_allclose(b[2] / b[3], 2.0)  # shapes within a process unchanged


def test_validation_split_is_shuffled_and_seeded():
    train, val = shuffled_split(1000, 0.2, seed=5)
    assert len(val) == 200 and not set(train) & set(val)
    assert (val < 500).any() and (val >= 500).any()  # not the tail of the input
    np.testing.assert_array_equal(val, shuffled_split(1000, 0.2, seed=5)[1])


def test_folds_score_every_event_with_a_model_that_never_saw_it(tmp_path):
    # feature u points to signal upwards in odd events and downwards in even ones: a model trained
    # on one parity and scoring the other must get it backwards (AUC near 0); a model that saw the
    # events it scores would get it right (AUC near 1)
    rng = np.random.default_rng(11)
    n = 2000
    event = rng.permutation(n) + 1000
    y = rng.integers(0, 2, n)
    u = np.where(event % 2 == 1, y, 1 - y) + 0.3 * rng.normal(size=n)
    table = pd.DataFrame({"label": y, "weight": np.ones(n), "dataset": "toy", "channel": "sl", "event": event,
                          "u": u, "v": rng.random(n)})
    scores = train_folds(table, ["u", "v"], ["bdt"], tmp_path, k=2, seed=0, options=FAST)
    assert not scores["score_bdt"].isna().any()
    np.testing.assert_array_equal(scores["fold"], table["event"] % 2)
    assert metrics.auc(y, scores["score_bdt"]) < 0.1
    X = table[["u", "v"]].to_numpy(np.float32)
    for f in (0, 1):
        model = load_method(tmp_path / "bdt" / f"fold{f}")
        trained_on = (event % 2 != f)
        assert metrics.auc(y[trained_on], model.predict(X[trained_on])) > 0.9
        np.testing.assert_allclose(model.predict(X[~trained_on]), scores["score_bdt"][~trained_on], atol=1e-7)
    again = train_folds(table, ["u", "v"], ["bdt"], tmp_path / "again", k=2, seed=0, options=FAST)
    np.testing.assert_array_equal(again["score_bdt"], scores["score_bdt"])  # seeded, reproducible


def test_base_install_imports_without_torch():
    # torch made unimportable, as in an install without the [train] extra
    code = ("import sys, importlib.abc\n"
            "class NoTorch(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path, target=None):\n"
            "        if name.split('.')[0] == 'torch': raise ModuleNotFoundError(name)\n"
            "sys.meta_path.insert(0, NoTorch())\n"
            "import crema.models.classifier.bdt, crema.models.classifier.cut, crema.models.classifier.folds\n"
            "import crema.models.classifier.inference, crema.processors.hhbbww, crema.workflows.classifier\n"
            "print('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "ok", result.stderr
