"""The observable language in the HH->bbWW processor, the classifier dataset and the classifier in the processor."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from crema.models.classifier.inference import ClassifierModel, read_features, read_training
from crema.schema import ConfigError
from crema.workflows.classifier import make_dataset, report, train
from crema.workflows.cli import main as cli
from crema.workflows.config import load_config
from crema.workflows.run import run

from conftest import DATA


# the samples of tests/data/hhbbww_histograms_reference.json: the histograms the processor's
# hand-written observable table filled before the observables became expressions
SAMPLES = [("HH_SL", "hh_sl", "signal", 11), ("HH_DL", "hh_dl", "signal", 12), ("TT_SL", "tt_sl", "background", 13)]


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    from crema.generate import write_nanoaod

    tmp = tmp_path_factory.mktemp("clf")
    datasets = []
    for name, process, kind, seed in SAMPLES:
        path = write_nanoaod(tmp / f"{name}.root", process, 1000, seed=seed)
        datasets.append({"name": name, "kind": kind, "process": process, "xsec_pb": 1.0, "files": [str(path)]})
    return tmp, datasets


def write_config(tmp: Path, datasets, name: str, options=None, **extra) -> Path:
    # event-level steps off: the reference predates them (and the generated files hold no HLT menu)
    options = {"event_selection": False, **(options or {})}
    config = {"luminosity_fb": 1.0, "datasets": datasets, "processor": {"name": "hhbbww", "options": options},
              "executor": {"name": "iterative", "chunksize": 500, "progress": False}, **extra}
    path = tmp / name
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def plain(samples):
    tmp, datasets = samples
    return run(load_config(write_config(tmp, datasets, "plain.yaml")))[0]


def test_histograms_identical_to_the_hand_written_table(plain):
    out = plain
    reference = json.loads((DATA / "hhbbww_histograms_reference.json").read_text())
    assert set(reference) == set(out["histograms"])  # model observables are booked only with their model
    for name, values in reference.items():
        got = out["histograms"][name][{"systematic": "nominal"}].values(flow=True)
        np.testing.assert_array_equal(got, np.array(values), err_msg=name)


def test_histogram_expression_errors_name_the_key(samples, tmp_path):
    tmp, datasets = samples
    bad = tmp_path / "hist.yaml"
    bad.write_text(yaml.safe_dump({"lep1_pt": {"bins": 4, "start": 0, "stop": 100, "expr": "Pt(Lepton1)"},
                                   "my_obs": {"bins": 4, "start": 0, "stop": 1, "expr": "DeltaR(Jet1,Photon1)"}}))
    with pytest.raises(ConfigError, match=r"my_obs\.expr: unknown object 'Photon1' \(known: .*BJet1\.\..*MET"):
        run(load_config(write_config(tmp_path, datasets, "c.yaml", {"histograms": str(bad)})))
    # an entry without expr takes the builtin definition of its name; an unknown name says so
    bad.write_text(yaml.safe_dump({"jet1_pt": {"bins": 4, "start": 0, "stop": 100}, "foo": {"bins": 1, "start": 0, "stop": 1}}))
    with pytest.raises(ConfigError, match=r"foo\.expr: no expression and no builtin observable"):
        run(load_config(write_config(tmp_path, datasets, "c.yaml", {"histograms": str(bad)})))


@pytest.fixture(scope="module")
def dataset(samples):
    tmp, datasets = samples
    config = write_config(tmp, datasets, "dataset.yaml", classifier={"features": "hhbbww_sl", "channels": ["sl"]})
    table = make_dataset(config, tmp / "data")
    return tmp, table


def test_dataset_rows_weights_and_definitions(dataset, plain):
    tmp, table = dataset
    assert table.equals(pd.read_parquet(tmp / "data" / "features.parquet"))
    features = read_features(tmp / "data" / "features.yaml")
    assert "hme_mass" not in features and features["m_bb"] == "M(HbbJet1+HbbJet2)"  # no DeepHME in this run
    assert list(table.columns[:6]) == ["label", "weight", "dataset", "process", "channel", "event"]
    assert set(table["channel"]) == {"sl"}
    assert (table.loc[table["dataset"] == "TT_SL", "label"] == 0).all() and (table.loc[table["dataset"] != "TT_SL", "label"] == 1).all()
    # the rows are the SL-selected events with their yields: equal to the processor's cutflow at this luminosity
    out = plain
    for ds in ("HH_SL", "TT_SL"):
        rows = table[table["dataset"] == ds]
        assert len(rows) == out["cutflow"][ds]["sl"]["jets"]
        assert rows["weight"].sum() == pytest.approx(out["cutflow_yield"][ds]["sl"]["jets"], rel=1e-9)
    assert not table.duplicated(["dataset", "event"]).any()


@pytest.fixture(scope="module")
def model(dataset):
    tmp, _ = dataset
    train(tmp / "data", tmp / "model", ["bdt", "cut"], folds=2, seed=0)
    return tmp / "model"


def test_processor_scores_each_event_with_the_fold_that_did_not_see_it(model, dataset):
    tmp, table = dataset
    training = read_training(model)
    features = read_features(model / "features.yaml")
    paths = {f"fold{f}": model / "bdt" / f"fold{f}" / "model.onnx" for f in range(training["folds"])}
    wrapper = ClassifierModel(paths, [], training["folds"])
    onnx_scores = wrapper.numpy_call(table[list(features)].to_numpy(np.float32), table["event"].to_numpy())
    oof = pd.read_parquet(model / "scores.parquet")
    np.testing.assert_allclose(onnx_scores, oof["score_bdt"], rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def with_classifier(model, samples):
    tmp, datasets = samples
    sl = [d for d in datasets if d["name"] in ("HH_SL", "TT_SL")]
    path = write_config(tmp, sl, "clf.yaml", {"classifier": {"model": str(model), "method": "bdt"}})
    return path, run(load_config(path))[0]


def test_classifier_score_is_filled_like_any_observable(with_classifier, model):
    _, out = with_classifier
    h = out["histograms"]["classifier_score"]
    sl = h[{"channel": "sl", "region": "inclusive", "systematic": "nominal"}]
    oof = pd.read_parquet(model / "scores.parquet")
    for ds in ("HH_SL", "TT_SL"):
        rows = oof[oof["dataset"] == ds]
        expected = np.histogram(rows["score_bdt"], bins=20, range=(0, 1), weights=rows["weight"])[0]
        np.testing.assert_allclose(sl[{"dataset": ds}].values(), expected, rtol=1e-6, atol=1e-9)
    assert h[{"channel": "dl"}].sum(flow=True).value == 0  # trained on SL events only


@pytest.mark.slow  # two spawned worker processes or a dask LocalCluster: ~50 s each on a loaded machine
@pytest.mark.parametrize("executor", ["futures", "dask"])
def test_classifier_iterative_equals_other_executors(with_classifier, executor):
    """With the classifier on, futures and dask fill the same histograms and cutflows as iterative."""
    path, iterative = with_classifier
    other, report = run(load_config(path).with_executor(name=executor, workers=2))
    assert sum(report.processed.values()) == 2000
    assert other["cutflow"] == iterative["cutflow"]
    assert other["histograms"].keys() == iterative["histograms"].keys()
    assert other["histograms"]["classifier_score"].sum(flow=True).value > 0
    for name, h in iterative["histograms"].items():
        # chunk outputs merge in completion order: equal up to float summation order
        np.testing.assert_allclose(other["histograms"][name].values(flow=True), h.values(flow=True), rtol=1e-12,
                                   atol=0, err_msg=name)
        np.testing.assert_allclose(other["histograms"][name].variances(flow=True), h.variances(flow=True),
                                   rtol=1e-12, atol=0, err_msg=name)


def test_classifier_option_errors_name_the_key(model, samples, tmp_path):
    _, datasets = samples
    with pytest.raises(ConfigError, match=r"processor\.options\.classifier\.method: 'mlp' was not trained"):
        run(load_config(write_config(tmp_path, datasets, "a.yaml", {"classifier": {"model": str(model), "method": "mlp"}})))
    needs_hme = tmp_path / "needs_hme"
    shutil.copytree(model, needs_hme)
    definitions = yaml.safe_load((needs_hme / "features.yaml").read_text())
    definitions["features"]["hme_mass"] = "HME.mass"
    (needs_hme / "features.yaml").write_text(yaml.safe_dump(definitions))
    with pytest.raises(ConfigError, match=r"features\.hme_mass: unknown model 'HME'"):
        run(load_config(write_config(tmp_path, datasets, "b.yaml", {"classifier": {"model": str(needs_hme)}})))


def test_report_command(model, tmp_path, capsys):
    assert cli(["classifier-report", str(model), "-o", str(tmp_path), "--no-plots"]) == 0
    result = json.loads((tmp_path / "classifier_report.json").read_text())
    assert set(result["methods"]) == {"bdt", "cut"}
    for m in result["methods"].values():
        assert {"accuracy", "auc", "asimov_significance", "max_significance", "r50", "r99"} <= set(m)
    assert "max_sig" in capsys.readouterr().out
    assert cli(["classifier-train", str(tmp_path / "nothing"), "-o", str(tmp_path / "m")]) == 2
