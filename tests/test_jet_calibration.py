"""Jet calibration (Deep Sets, CMS ml-jec): dataset shards, transform, network properties, ONNX wrapper, CLI."""

from __future__ import annotations

import copy
import pickle

import awkward as ak
import numpy as np
import pytest
import uproot
import yaml
from coffea import processor
from coffea.nanoevents import NanoAODSchema, NanoEventsFactory
from conftest import PFNANO, REAL_NANO

from crema.models.jet_calibration import (
    FLAVOURS,
    ConfigError,
    FeatureArrays,
    Group,
    JetCalibration,
    config_path,
    feeds,
    fit_transform,
    load_dataset,
    load_features,
    load_transform,
    save_transform,
)
from crema.processors.jet_calib_dataset import JetCalibDataset, flavour_label, prepare_output

torch = pytest.importorskip("torch")
from crema.models import jet_calibration_train as jt

_SMALL_MODEL = {
    "embedding_dim": 2,
    "blocks": {"charged": {"type": "resnet", "units": [8, 8]}, "neutral": {"units": [8]}, "sv": {"units": [4], "dropout": 0.1}},
    "head": {"type": "resnet", "units": [16, 16]},
}


def _events(path):
    return NanoEventsFactory.from_root({str(path): "Events"}, schemaclass=NanoAODSchema, mode="virtual").events()


def _write(fileset: dict, config: str, out, executor=None, chunksize: int = 4, options: dict | None = None):
    proc = JetCalibDataset(config, options or config_path(config), prepare_output(out))
    runner = processor.Runner(executor=executor or processor.IterativeExecutor(status=False), schema=NanoAODSchema, chunksize=chunksize)
    return runner(fileset, proc, treename="Events")


def _small(name: str, **training) -> jt.CalibrationConfig:
    data = yaml.safe_load(config_path(name).read_text())
    if data["features"]["constituents"]:
        data["model"] = _SMALL_MODEL
    else:
        data["model"] = {"head": {"type": "mlp", "units": [16, 16]}}
    data["training"].update({"epochs": 2, "batch_size": 16, "threads": 1, "outlier": None, **training})
    return jt.load_config(data)


@pytest.fixture(scope="module")
def pf_data(tmp_path_factory):
    """The real PFNano file (10 events) as a deepsets dataset, in three chunks."""
    out = tmp_path_factory.mktemp("pf_data")
    result = _write({"pf": {"files": {str(PFNANO): "Events"}}}, "deepsets", out)
    return out, result


@pytest.fixture(scope="module")
def gen_data(tmp_path_factory):
    """Generated tt_sl NanoAODv12 as a jet-only dataset."""
    from crema.generate import write_nanoaod

    d = tmp_path_factory.mktemp("gen_data")
    write_nanoaod(d / "tt.root", "tt_sl", 300, seed=21)
    fileset = {"tt": {"files": {str(d / "tt.root"): "Events"}}, "real": {"files": {str(REAL_NANO): "Events"}}}
    return d / "data", fileset, _write(fileset, "jet_only", d / "data", chunksize=120)


@pytest.fixture(scope="module")
def pf_model(pf_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("pf_model")
    result = jt.train(_small("deepsets"), pf_data[0], out, log=lambda *a: None)
    return out, result


@pytest.fixture(scope="module")
def jet_model(gen_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("jet_model")
    return out, jt.train(_small("jet_only", batch_size=128), gen_data[0], out, log=lambda *a: None)


# -- dataset ------------------------------------------------------------------------------
def test_dataset_layout_and_truth(pf_data):
    out, result = pf_data
    manifest = yaml.safe_load((out / "data.yaml").read_text())
    assert manifest["constituent_types"] == ["charged", "neutral", "sv"]
    assert [s["path"] for s in manifest["shards"]] == [f"shards/{i:03d}.root" for i in range(1, len(manifest["shards"]) + 1)]
    assert sorted(p.name for p in (out / "shards").iterdir()) == [s["path"][7:] for s in manifest["shards"]]  # no leftovers
    entries = [uproot.open(out / s["path"])["Jets"].num_entries for s in manifest["shards"]]
    assert entries == [s["jets"] for s in manifest["shards"]] and sum(entries) == manifest["total"] == result["total"] > 30
    assert manifest["datasets"] == {"pf": {"jets": manifest["total"], "events": 10}}

    features = load_features("deepsets")
    tree = uproot.open(out / manifest["shards"][0]["path"])["Jets"]
    expected = set(features.jet.numerical) | {"target", "flavour", "pt_gen", "eta_gen", "phi_gen", "pt", "pt_raw", "eta", "phi",
                                              "hadronFlavour", "partonFlavour", "jet_index", "event", "run", "luminosityBlock", "entry"}
    for t, c in features.constituents.items():
        expected |= {f"n{t}"} | {f"{t}_{f}" for f in list(c.numerical) + list(c.categorical)}
    assert set(tree.keys()) == expected

    a = ak.concatenate([uproot.open(out / s["path"])["Jets"].arrays() for s in manifest["shards"]])
    for t, c in features.constituents.items():
        a[t] = ak.zip({f: a[f"{t}_{f}"] for f in list(c.numerical) + list(c.categorical)})
        assert ak.all(ak.num(a[t]) == a[f"n{t}"])
    # independent check against the file: the jets are the matched ones, in file order, with the right target
    ev = _events(PFNANO)
    flat_pt = ak.to_numpy(ak.flatten(ev.Jet.pt))
    start = np.cumsum(ak.to_numpy(ak.num(ev.Jet))) - ak.to_numpy(ak.num(ev.Jet))
    rows = start[a.entry.to_numpy()] + a.jet_index.to_numpy()
    raw = flat_pt * (1 - ak.to_numpy(ak.flatten(ev.Jet.rawFactor)))
    np.testing.assert_allclose(a.pt_raw.to_numpy(), raw[rows], rtol=1e-6)
    np.testing.assert_allclose(a.target.to_numpy(), np.log(a.pt_gen.to_numpy() / raw[rows]), atol=1e-6)
    dphi = (a.phi - a.phi_gen + np.pi) % (2 * np.pi) - np.pi
    assert ak.all(np.hypot(a.eta - a.eta_gen, dphi) < 0.2) and ak.all(a.pt_raw >= 10)
    assert np.all(np.diff(a.entry.to_numpy() * 100 + a.jet_index.to_numpy()) > 0)  # file order, no duplicates
    gen = ev.Jet.matched_gen  # coffea's own Jet_genJetIdx link
    dr = ak.to_numpy(ak.flatten(ak.fill_none(ev.Jet.delta_r(gen), 99.0)))
    expected_rows = np.flatnonzero((dr < 0.2) & (raw >= 10) & (abs(ak.to_numpy(ak.flatten(ev.Jet.eta))) <= 5.2))
    np.testing.assert_array_equal(rows, expected_rows)
    # constituents: pt order, charged/neutral split, d0 sentinel only for neutrals, sum of pt_rel ~ 1 for high-pt jets
    assert ak.all(a.charged.charge != 0) and ak.all(ak.num(a.charged) <= 64)
    assert np.isin(ak.to_numpy(ak.flatten(a.neutral["type"])), [1, 2, 22, 130]).all()
    assert ak.all(a.charged.pt_rel[:, :-1] >= a.charged.pt_rel[:, 1:])
    total = ak.sum(a.charged.pt_rel, axis=1) + ak.sum(a.neutral.pt_rel, axis=1)
    assert ak.all(abs(total[a.pt_raw > 50] - 1) < 0.35)
    assert ak.all(abs(a.charged.dphi) < 0.5) and ak.all(a.charged.dr >= abs(a.charged.deta))


def test_dataset_match_by_dr_agrees(pf_data, tmp_path):
    index_out = pf_data[0]
    dr_out = tmp_path / "dr"
    opts = {"match": "dr", "match_dr": 0.2, "pt_raw_min": 10.0}
    _write({"pf": {"files": {str(PFNANO): "Events"}}}, "deepsets", dr_out, options=opts, chunksize=10)
    feats = load_features("deepsets")
    a, b = load_dataset(index_out, feats, extra=("entry", "jet_index")), load_dataset(dr_out, feats, extra=("entry", "jet_index"))
    ka = set(zip(a.extra["entry"].tolist(), a.extra["jet_index"].tolist()))
    kb = set(zip(b.extra["entry"].tolist(), b.extra["jet_index"].tolist()))
    assert len(ka & kb) >= 0.9 * max(len(ka), len(kb))


def test_dataset_identical_across_executors_and_chunking(gen_data, tmp_path):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    out, fileset, result = gen_data
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as pool:
        other = _write(fileset, "jet_only", tmp_path / "futures", processor.FuturesExecutor(pool=pool, workers=2, status=False), chunksize=70)
    feats = load_features("jet_only")
    extra = ("target", "flavour", "entry", "jet_index", "event")
    a, b = load_dataset(out, feats, extra=extra), load_dataset(tmp_path / "futures", feats, extra=extra)
    assert other["total"] == result["total"] == len(a) == len(b) > 1000
    np.testing.assert_array_equal(a.jet.numerical, b.jet.numerical)
    for k in extra:
        np.testing.assert_array_equal(a.extra[k], b.extra[k], err_msg=k)
    m = yaml.safe_load((out / "data.yaml").read_text())
    assert [s["dataset"] for s in m["shards"]] == sorted(s["dataset"] for s in m["shards"])  # dataset, file, entry order
    assert m["constituent_types"] == []


def test_flavour_labels():
    hadron = np.array([5, 4, 0, 0, 0, 0, 5, 0])
    parton = np.array([5, -4, 1, -3, 21, 0, 21, 5])
    expect = ["b", "c", "uds", "uds", "g", "other", "b", "other"]
    assert [FLAVOURS[i] for i in flavour_label(hadron, parton)] == expect


def test_existing_dataset_is_not_overwritten(pf_data):
    with pytest.raises(ConfigError, match="already holds"):
        prepare_output(pf_data[0])


# -- transform -------------------------------------------------------------------------------
def test_transform_round_trip(pf_data, tmp_path):
    feats = load_features("deepsets")
    data = load_dataset(pf_data[0], feats)
    tr = fit_transform(feats, data)
    path = save_transform(tr, tmp_path / "transform.yaml")
    back = load_transform(path)
    assert back == tr  # floats are written exactly
    for name, arrays in [("jet", data.jet), *data.constituents.items()]:
        g, gb = tr.group(name), back.group(name)
        y = g.apply(arrays.numerical)
        np.testing.assert_array_equal(y, gb.apply(arrays.numerical))
        std = [i for i, t in enumerate(g.numerical) if feats.group(name).numerical[t.name] is None or
               feats.group(name).numerical[t.name].scale == "standard"]
        finite = np.isfinite(y[:, std]).all()
        assert finite and np.allclose(y[:, std].mean(0), 0, atol=1e-5) and np.allclose(y[:, std].std(0)[y[:, std].std(0) > 0], 1, atol=1e-4)
        # the stored parameters undo the transform (every step of the shipped config is invertible)
        x = arrays.numerical.astype(np.float64)
        ok = np.ones(x.shape, bool)
        for i, t in enumerate(g.numerical):
            if "log" in t.steps:
                ok[:, i] = x[:, i] > 1e-6
            if "log1p" in t.steps:
                ok[:, i] = x[:, i] >= 0
        np.testing.assert_allclose(np.where(ok, gb.inverse(y), 0), np.where(ok, x, 0), rtol=2e-5, atol=1e-5)
        if g.categorical:
            idx = gb.indices(arrays.categorical)
            known = idx > 0
            np.testing.assert_array_equal(gb.codes(idx)[known], arrays.categorical[known])
    tr.check(feats)
    changed = copy.deepcopy(yaml.safe_load(config_path("deepsets").read_text())["features"])
    changed["jet"]["numerical"]["eta"] = {"scale": "quantile"}
    with pytest.raises(ConfigError, match=r"transform\.jet\.numerical"):
        tr.check(load_features(changed))
    changed = copy.deepcopy(yaml.safe_load(config_path("deepsets").read_text())["features"])
    changed["constituents"]["charged"]["categorical"]["charge"]["values"] = [-1, 0, 1]
    with pytest.raises(ConfigError, match=r"transform\.charged\.categorical"):
        tr.check(load_features(changed))
    charged = tr.constituents["charged"]
    assert charged.categorical[0].values == [-1, 1]
    assert charged.indices(np.array([[-1, 211], [1, 13], [0, 999]])).tolist() == [[1, 3], [2, 2], [0, 0]]  # unknown -> 0


def test_transform_steps_by_hand():
    feats = load_features({"jet": {"numerical": {"a": {"steps": ["abs", "log"], "scale": "none"},
                                                 "b": {"steps": [{"arcsinh": 2.0}], "scale": "quantile"}}}})
    x = np.array([[-np.e, 0.0], [1.0, 2.0], [np.e**2, 4.0], [-1.0, -2.0]], dtype=np.float32)
    tr = fit_transform(feats, FeatureArrays(Group(x, np.zeros((4, 0), np.int64)), {}))
    a, b = tr.jet.numerical
    assert (a.center, a.scale) == (0.0, 1.0)
    z = np.arcsinh(x[:, 1].astype(np.float64) / 2)
    q16, q50, q84 = np.quantile(z, [0.16, 0.5, 0.84])
    assert b.center == pytest.approx(q50) and b.scale == pytest.approx((q84 - q16) / 2)
    y = tr.jet.apply(x)
    np.testing.assert_allclose(y[:, 0], [1, 0, 2, 0], atol=1e-6)
    np.testing.assert_allclose(y[:, 1], (z - q50) / ((q84 - q16) / 2), rtol=1e-6)


# -- network properties -------------------------------------------------------------------------
def _jets_with_constituents(arrays: FeatureArrays, k: int = 12) -> np.ndarray:
    counts = np.stack([g.counts for g in arrays.constituents.values()]).min(0)
    return np.flatnonzero(counts >= 1)[:k]


def test_deep_sets_permutation_and_padding_invariance(pf_model, pf_data):
    import onnxruntime as ort

    net = pf_model[1]["net"]
    feats = net.features
    arrays = load_dataset(pf_data[0], feats)
    rows = _jets_with_constituents(arrays)
    base = feeds(feats, arrays, rows)
    rng = np.random.default_rng(3)
    perm = dict(base)
    for t in feats.types():
        mask = base[f"{t}_mask"]
        order = np.argsort(np.where(mask, rng.random(mask.shape), 2.0), axis=1)  # shuffle the real slots
        for kind in ("data", "mask", "cat"):
            if f"{t}_{kind}" in base:
                perm[f"{t}_{kind}"] = np.take_along_axis(base[f"{t}_{kind}"], order[..., None] if kind != "mask" else order, axis=1)
    padded = dict(base)
    for t in feats.types():  # five more slots full of garbage, masked
        d, m = base[f"{t}_data"], base[f"{t}_mask"]
        padded[f"{t}_data"] = np.concatenate([d, rng.normal(0, 1e3, (d.shape[0], 5, d.shape[2])).astype(np.float32)], axis=1)
        padded[f"{t}_data"][:, :: 2][~np.concatenate([m, np.zeros((len(m), 5), bool)], 1)[:, ::2]] = np.nan
        padded[f"{t}_mask"] = np.concatenate([m, np.zeros((len(m), 5), bool)], axis=1)
        if f"{t}_cat" in base:
            c = base[f"{t}_cat"]
            padded[f"{t}_cat"] = np.concatenate([c, rng.integers(-300, 300, (c.shape[0], 5, c.shape[2]))], axis=1)
    sess = ort.InferenceSession(str(pf_model[0] / "model.onnx"), providers=["CPUExecutionProvider"])

    def both(f):
        with torch.no_grad():
            t = net(*[torch.from_numpy(np.ascontiguousarray(f[k])) for k in net.input_names])[0].numpy()
        return t, sess.run(["log_correction"], f)[0]

    (t0, o0), (t1, o1), (t2, o2) = both(base), both(perm), both(padded)
    assert np.all(np.isfinite(t0)) and np.ptp(t0) > 0
    for t, o in ((t1, o1), (t2, o2)):
        np.testing.assert_allclose(t, t0, atol=2e-6)
        np.testing.assert_allclose(o, o0, atol=2e-6)


def test_torch_onnx_and_flat_paths_agree(pf_model, pf_data):
    import onnxruntime as ort

    net = pf_model[1]["net"]
    arrays = load_dataset(pf_data[0], net.features)
    torch_pred = jt.predict(net, arrays)
    sess = ort.InferenceSession(str(pf_model[0] / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_log, onnx_corr = sess.run(["log_correction", "correction"], feeds(net.features, arrays))
    assert np.abs(onnx_log - torch_pred).max() < 1e-5
    np.testing.assert_allclose(onnx_corr, np.exp(onnx_log), rtol=1e-6)
    tensors = jt._prepare(net, arrays)
    with torch.no_grad():
        flat = net.core_flat(*tensors.batch(torch.arange(len(arrays)))).numpy()
    assert np.abs(flat - torch_pred).max() < 1e-5
    # the checkpoint gives back the same network
    again, _, transform = jt.load_checkpoint(pf_model[0] / "checkpoint.pt")
    np.testing.assert_array_equal(jt.predict(again, arrays), torch_pred)
    assert transform == load_transform(pf_model[0] / "transform.yaml")


def test_training_reproducible_from_seed(pf_data):
    cfg = _small("deepsets", seed=7)
    runs = [jt.train(cfg, pf_data[0], None, log=lambda *a: None)["net"].state_dict() for _ in range(2)]
    other = jt.train(_small("deepsets", seed=8), pf_data[0], None, log=lambda *a: None)["net"].state_dict()
    assert runs[0].keys() == runs[1].keys()
    for k in runs[0]:
        assert torch.equal(runs[0][k], runs[1][k]), k
    assert any(not torch.equal(runs[0][k], other[k]) for k in runs[0] if runs[0][k].is_floating_point())


def test_jet_only_training_learns(jet_model):
    history = jet_model[1]["history"]
    assert len(history) == 2 and all(np.isfinite(h["val_loss"]) for h in history)
    assert history[-1]["val_rms"] < 0.5


# -- wrapper --------------------------------------------------------------------------------------
def test_wrapper_on_real_pfnano(pf_model):
    model = JetCalibration(pf_model[0])
    events = _events(PFNANO)
    factor = model(events.Jet, events)
    assert factor.type.content == ak.types.ListType(ak.types.NumpyType("float32"))
    assert ak.all(ak.num(factor) == ak.num(events.Jet)) and np.all(np.isfinite(ak.to_numpy(ak.flatten(factor))))
    # a selection that keeps each jet's original position gives the same factors
    jets = ak.with_field(events.Jet, ak.local_index(events.Jet, axis=1), "jet_index")
    sel = jets[jets.pt > 30][:, ::-1]
    assert ak.all(model(sel, events) == factor[events.Jet.pt > 30][:, ::-1])
    with pytest.raises(ValueError, match="jet_index"):
        model(events.Jet[events.Jet.pt > 30], events)
    pt = model.calibrated_pt(events.Jet, events)
    assert ak.all(abs(pt - events.Jet.pt * (1 - events.Jet.rawFactor) * factor) < 1e-3 * pt)


def test_wrapper_matches_network_on_dataset_jets(pf_model, pf_data):
    model = JetCalibration(pf_model[0])
    feats = model.features
    arrays = load_dataset(pf_data[0], feats, extra=("entry", "jet_index"))
    events = _events(PFNANO)
    factor = model(events.Jet, events)
    picked = np.array([factor[e][j] for e, j in zip(arrays.extra["entry"], arrays.extra["jet_index"])])
    expect = np.exp(jt.predict(pf_model[1]["net"], arrays))
    np.testing.assert_allclose(picked, expect, rtol=1e-5)


def test_wrapper_jet_only_on_real_v12(jet_model):
    model = JetCalibration(jet_model[0])
    events = _events(REAL_NANO)
    factor = model(events.Jet, events)
    assert ak.all(ak.num(factor) == ak.num(events.Jet))
    f = ak.to_numpy(ak.flatten(factor))
    assert np.all(np.isfinite(f)) and np.all((f > 0.3) & (f < 3))
    sel = events.Jet[events.Jet.pt > 25]  # no constituents: any selection works without an index
    assert ak.all(model(sel, events) == factor[events.Jet.pt > 25])


def test_wrapper_zero_length_and_pickle(pf_model, jet_model):
    events = _events(PFNANO)
    for directory in (pf_model[0], jet_model[0]):
        model = JetCalibration(directory)
        empty = model(events.Jet[:0], events[:0])
        assert len(empty) == 0 and str(empty.type.content) == "var * float32"
        no_jets = model(events.Jet[:, :0], events)
        assert ak.all(ak.num(no_jets) == 0) and len(no_jets) == len(events)
        fresh = pickle.loads(pickle.dumps(model))
        first = model(events.Jet, events)
        used = pickle.loads(pickle.dumps(model))  # after its session exists
        assert ak.all(fresh(events.Jet, events) == first) and ak.all(used(events.Jet, events) == first)


def test_wrapper_batching_does_not_change_results(pf_model):
    events = _events(PFNANO)
    big = JetCalibration(pf_model[0])(events.Jet, events)
    small = JetCalibration(pf_model[0], batch_size=1, row_block=1)(events.Jet, events)
    np.testing.assert_allclose(ak.to_numpy(ak.flatten(small)), ak.to_numpy(ak.flatten(big)), rtol=2e-6)


def test_wrapper_rejects_mismatched_model(pf_model, tmp_path):
    import shutil

    shutil.copy(pf_model[0] / "model.onnx", tmp_path / "model.onnx")
    shutil.copy(config_path("jet_only"), tmp_path / "config.yaml")
    with pytest.raises(ValueError, match="inputs"):
        JetCalibration(tmp_path)


def test_models_do_not_import_processors_or_workflows():
    import subprocess
    import sys

    code = ("import sys, crema.models.jet_calibration; "
            "bad = [m for m in sys.modules if m.startswith(('crema.processors', 'crema.workflows', 'crema.models.jet_calibration_train'))]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_generated_pfnano(pf_model, tmp_path):
    """Constituents are found from the branch names alone, so the generator's PFNano output works too."""
    import inspect

    from crema.generate import write_nanoaod

    if "pfnano" not in inspect.signature(write_nanoaod).parameters:
        pytest.skip("the generator does not write PFNano tables yet")
    write_nanoaod(tmp_path / "tt.root", "tt_sl", 150, seed=9, pfnano=True)
    result = _write({"tt": {"files": {str(tmp_path / "tt.root"): "Events"}}}, "deepsets", tmp_path / "data", chunksize=100)
    assert yaml.safe_load((tmp_path / "data" / "data.yaml").read_text())["constituent_types"] == ["charged", "neutral", "sv"]
    data = load_dataset(tmp_path / "data", load_features("deepsets"))
    assert len(data) == result["total"] > 300 and data.constituents["charged"].counts.mean() > 3
    events = _events(tmp_path / "tt.root")
    factor = JetCalibration(pf_model[0])(events.Jet, events)
    assert ak.all(ak.num(factor) == ak.num(events.Jet)) and np.all(np.isfinite(ak.to_numpy(ak.flatten(factor))))


# -- configuration --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda d: d["features"]["jet"]["numerical"]["pt_raw"].update(steps=["sqrt"]), "features.jet.numerical.pt_raw.steps[0]"),
        (lambda d: d["features"]["jet"]["numerical"]["eta"].update(scale="minmax"), "features.jet.numerical.eta.scale"),
        (lambda d: d["features"]["constituents"]["sv"]["numerical"]["dxy"].update(steps=[{"arcsinh": -1}]), "features.constituents.sv.numerical.dxy.steps[0]"),
        (lambda d: d["features"]["constituents"]["sv"].update(select="charged"), "features.constituents.sv.select"),
        (lambda d: d["features"]["constituents"]["charged"].update(source="tracks"), "features.constituents.charged.source"),
        (lambda d: d["features"]["constituents"]["charged"]["categorical"]["charge"].update(values=[1, 1]), "features.constituents.charged.categorical.charge.values"),
        (lambda d: d["model"]["blocks"].update(photons={"units": [4]}), "model.blocks.photons"),
        (lambda d: d["model"]["blocks"]["charged"].update(type="transformer"), "model.blocks.charged.type"),
        (lambda d: d["model"]["head"].update(units=[]), "model.head.units"),
        (lambda d: d["training"].update(validation_fraction=1.5), "training.validation_fraction"),
        (lambda d: d["training"].update(learnig_rate=1e-3), "training.learnig_rate"),
        (lambda d: d["training"]["schedule"].update(type="linear"), "training.schedule.type"),
        (lambda d: d.pop("features"), "features"),
    ],
)
def test_config_errors_name_the_key(edit, key):
    data = yaml.safe_load(config_path("deepsets").read_text())
    edit(data)
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        jt.load_config(copy.deepcopy(data))


def test_dataset_config_errors_name_the_key(tmp_path):
    from crema.processors.jet_calib_dataset import load_options

    data = yaml.safe_load(config_path("deepsets").read_text())
    data["dataset"]["match_dr"] = -1
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="dataset.match_dr"):
        load_options(tmp_path / "c.yaml")
    data["dataset"] = {"matching": "dr"}
    with pytest.raises(ConfigError, match="dataset.matching"):
        load_options(data)
    with pytest.raises(KeyError, match="features.constituents.charged.nosuch"):
        feats = load_features({"jet": {"numerical": {"eta": None}},
                               "constituents": {"charged": {"source": "pf", "numerical": {"nosuch": None}}}})
        from crema.models.jet_calibration import extract

        events = _events(PFNANO)
        extract(feats, events.Jet, events)


def test_training_needs_the_dataset_types(gen_data):
    with pytest.raises(ConfigError, match="features.constituents.charged: the dataset .* has no constituents"):
        jt.train(_small("deepsets"), gen_data[0], None, log=lambda *a: None)


def test_shipped_configs_load():
    for name in ("deepsets", "jet_only"):
        cfg = jt.load_config(name)
        assert cfg.features.jet.numerical and cfg.dataset["match_dr"] == 0.2
    assert jt.load_config("jet_only").features.constituents == {}
    with pytest.raises(ConfigError, match="shipped: deepsets, jet_only"):
        config_path("nosuch")


# -- command line ---------------------------------------------------------------------------------
def test_cli_dataset_transform_train(tmp_path):
    from crema.workflows.cli import main

    run = {"datasets": [{"name": "tt", "kind": "background", "process": "tt", "xsec_pb": 1.0, "files": [str(REAL_NANO)]},
                        {"name": "obs", "kind": "data", "process": "data", "files": [str(REAL_NANO)]}],
           "luminosity_fb": 1.0, "executor": {"chunksize": 100, "progress": False}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run))
    master = yaml.safe_load(config_path("jet_only").read_text())
    master["model"] = {"head": {"type": "mlp", "units": [8]}}
    master["training"].update(epochs=1, batch_size=64, threads=1, data="data")
    (tmp_path / "calib.yaml").write_text(yaml.safe_dump(master, sort_keys=False))
    d = str(tmp_path / "data")
    assert main(["calib-dataset", str(tmp_path / "run.yaml"), "-o", d, "--calibration", str(tmp_path / "calib.yaml")]) == 0
    assert main(["calib-dataset", str(tmp_path / "run.yaml"), "-o", d]) == 2  # refuses to overwrite
    assert main(["calib-transform", d]) == 0
    transform = load_transform(tmp_path / "data" / "transform.yaml")
    assert [t.name for t in transform.jet.numerical] == list(master["features"]["jet"]["numerical"])
    assert main(["calib-train", str(tmp_path / "calib.yaml"), "-o", str(tmp_path / "model")]) == 0
    assert load_transform(tmp_path / "model" / "transform.yaml") == transform  # the dataset's transform was used
    assert {p.name for p in (tmp_path / "model").iterdir()} >= {"model.onnx", "checkpoint.pt", "config.yaml", "transform.yaml", "history.yaml"}
    events = _events(REAL_NANO)
    assert np.all(np.isfinite(ak.to_numpy(ak.flatten(JetCalibration(tmp_path / "model")(events.Jet, events)))))


# -- training weights (training.reweight) -----------------------------------------------------------
@pytest.mark.parametrize("target", ["flat", "inclusive"])
def test_reweight_gives_every_flavour_the_same_spectrum(target):
    rng = np.random.default_rng(3)
    flavour = np.repeat([0, 2, 3], [4000, 2000, 3000])
    pt_gen = np.concatenate([rng.exponential(40, 4000) + 10, rng.normal(80, 20, 2000).clip(11), rng.exponential(20, 3000) + 10])
    cfg = jt.ReweightConfig(target=target, bins=4, pt_min=10, pt_max=160, max_weight=1e6)
    w = jt.training_weights(pt_gen, flavour, cfg)
    assert w.mean() == pytest.approx(1.0)
    edges = np.geomspace(10, 160, 5)
    spectra = []
    for f, n in ((0, 4000), (2, 2000), (3, 3000)):
        sel = flavour == f
        assert w[sel].sum() == pytest.approx(n, rel=1e-9)  # each flavour keeps its number of jets
        h, _ = np.histogram(np.clip(pt_gen[sel], 10, 159.9), edges, weights=w[sel])
        spectra.append(h / h.sum())
    for s in spectra[1:]:
        np.testing.assert_allclose(s, spectra[0], rtol=1e-9)
    if target == "flat":
        np.testing.assert_allclose(spectra[0], 0.25, rtol=1e-9)
    capped = jt.training_weights(pt_gen, flavour, jt.ReweightConfig(target=target, bins=4, pt_min=10, pt_max=160, max_weight=2.0))
    assert capped.max() == pytest.approx(2.0) and np.array_equal(capped, np.minimum(w, 2.0))


def test_reweighted_training_runs_and_needs_truth(pf_data):
    result = jt.train(_small("deepsets", reweight={"target": "flat", "bins": 4}), pf_data[0], None, log=lambda *a: None)
    assert np.isfinite(result["history"][-1]["val_loss"])
    arrays = load_dataset(pf_data[0], load_features("deepsets"), extra=("target",))
    with pytest.raises(ConfigError, match="training.reweight"):
        jt.train(_small("deepsets", reweight={"target": "flat"}), arrays, None, log=lambda *a: None)
