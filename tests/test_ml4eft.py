"""ML4EFT: losses, positivity, backwards stopping, replica filter, ONNX export and wrapper, a toy training,
unbinned intervals against an analytic one, the learned observables in the ttbar_eft processor."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from crema.models import ml4eft_train as mt  # noqa: E402
from crema.models.ml4eft import ML4EFTModel, TrainConfig, load_train_config, select_replicas  # noqa: E402
from crema.schema import ConfigError  # noqa: E402
from crema.stats.eft import THRESHOLDS, UnbinnedModel, intervals  # noqa: E402


def test_losses_against_hand_computed_values():
    r = torch.tensor([2.0, 0.5])
    w_sm, w_eft = torch.tensor([1.0, 3.0]), torch.tensor([3.0, 1.0])
    ce = (3 * np.log(3 / 2) + np.log(3) + 1 * np.log(1.5 / 0.5) + 3 * np.log(1.5)) / 4
    qc = (3 * (1 / 3) ** 2 + (2 / 3) ** 2 + 1 * (1 / 1.5) ** 2 + 3 * (0.5 / 1.5) ** 2) / 4
    assert float(mt.ce_loss(r, w_sm, w_eft)) == pytest.approx(ce, rel=1e-6)
    assert float(mt.qc_loss(r, w_sm, w_eft)) == pytest.approx(qc, rel=1e-6)
    # both are minimised per event by r = w_eft / w_sm (the likelihood ratio)
    for loss in (mt.ce_loss, mt.qc_loss):
        best = torch.tensor([3.0, 1 / 3], requires_grad=True)
        loss(best, w_sm, w_eft).backward()
        assert torch.max(torch.abs(best.grad)) < 1e-6
        off = torch.tensor([2.0, 0.5], requires_grad=True)
        loss(off, w_sm, w_eft).backward()
        assert torch.max(torch.abs(off.grad)) > 1e-3


def test_positivity_constraint_at_c_train():
    torch.manual_seed(0)
    net = mt.TermNet(3, [8], scale=0.5)
    with torch.no_grad():
        net.net[-1].bias.fill_(-8.0)  # a network pushed hard towards negative ratios
        x = torch.randn(100, 3) * 10
        r = 1.0 + 0.5 * net(x)
        assert torch.all(mt.ratio_from_output(net.raw(x)) > 0)
    assert torch.all(r > 0) and torch.all(net(x) < -1.9)
    with pytest.raises(ConfigError, match="non-positive weight for quad_a"):
        mt.eft_weights(np.ones(3), np.array([0.1, -4.0, 1.0]), 0.5, "quad_a")


def _toy_tensors(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (n, 1)).astype(np.float32)
    w = np.ones(n)
    return torch.as_tensor(x), torch.as_tensor(w, dtype=torch.float32), \
        torch.as_tensor(w * (1 + 0.5 * x[:, 0] + rng.normal(0, 0.3, n)).clip(0.05), dtype=torch.float32)


def test_backwards_stopping_restores_the_minimum():
    x, w_sm, w_eft = _toy_tensors(600, 1)
    cfg = TrainConfig(features=["x"], wc_names=["a"], c_train={"a": 1.0}, hidden=[32, 32], learning_rate=0.02,
                      batch_size=16, max_epochs=60, patience=4)
    net, info = mt.train_network(x, w_sm, w_eft, np.arange(40), np.arange(40, 600), 1.0, cfg, seed=3)
    hist = info["history"]
    assert info["val_loss"] == min(hist) and info["best_epoch"] == int(np.argmin(hist))
    assert len(hist) == info["best_epoch"] + cfg.patience + 1 < cfg.max_epochs  # went on past the minimum
    assert hist[-1] > info["val_loss"]
    with torch.no_grad():  # the restored network is the one at the minimum, not the last one
        val = float(mt.ce_loss(mt.ratio_from_output(net.raw(x[40:])), w_sm[40:], w_eft[40:]))
    assert val == pytest.approx(info["val_loss"], rel=1e-6)


def test_outlier_filter_on_planted_bad_replicas():
    rng = np.random.default_rng(2)
    good = 1.0 + rng.normal(0, 1e-3, 10)
    assert select_replicas(good, gain=0.05).all()
    planted = np.concatenate([good, [1.2, 1.3]])
    keep = select_replicas(planted, gain=0.05)
    assert keep[:10].all() and not keep[10:].any()
    # a single replica far below the others: no minority high group, the median +- 4 sigma fallback rejects it
    low = np.concatenate([[0.5], good])
    keep = select_replicas(low, gain=0.05)
    assert not keep[0] and keep[1:].all()
    assert not select_replicas([1.0, 1.0, np.nan, 1.0, 1.0, 1.0])[2]
    assert select_replicas([1.0, 1.0, 1.5]).all()  # too few replicas to tell an outlier


def _ensemble(n_in, reps, seed=0):
    torch.manual_seed(seed)
    replicas = [[mt.TermNet(n_in, [16, 16], k) for _ in range(n)] for k, n in zip((0.5, 0.25), reps)]
    return mt.Ensemble(np.full(n_in, 0.2), np.full(n_in, 1.5), replicas).eval()


def _model_dir(tmp_path, ensemble, features, wc_names):
    mt.export_onnx(ensemble, tmp_path / "ml4eft.onnx", len(features))
    meta = {"wc_names": wc_names, "features": features, "terms": ["lin_a", "quad_a"],
            "quantile_edges": {"a": [-1.0, 0.0, 1.0]}, "training": {"fold": "even"}}
    (tmp_path / "ml4eft.json").write_text(json.dumps(meta))
    return tmp_path


@pytest.mark.parametrize("reps", [(3, 1), (2, 4)])
def test_torch_and_onnx_agree_and_wrapper(tmp_path, reps):
    ens = _ensemble(4, reps)
    model = ML4EFTModel(_model_dir(tmp_path, ens, ["f0", "f1", "f2", "f3"], ["a"]))
    x = np.random.default_rng(1).normal(0, 2, (1000, 4)).astype(np.float32)
    with torch.no_grad():
        ref = ens(torch.as_tensor(x)).numpy()
    got = model(x)
    assert got.shape == (1000, 2)
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-5)
    r = model.ratio(x, [0.7])
    np.testing.assert_allclose(r, 1 + 0.7 * ref[:, 0] + 0.49 * ref[:, 1], rtol=1e-5, atol=1e-5)
    assert model.ratio(x, [[0.7], [0.0]]).shape == (1000, 2)
    # empty chunk, and a copy through pickle (the session is not pickled) gives the same numbers
    assert model(np.zeros((0, 4), np.float32)).shape == (0, 2)
    assert model.ratio(np.zeros((0, 4), np.float32), [1.0]).shape == (0,)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(model))(x), got)


def _toy_table(n, seed):
    """One WC ``a``: r(x, a) = 1 + a x exactly (linear, no quadratic term), x uniform in [0, 2]."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 2, n)
    return pd.DataFrame({"x": x, "weight": np.ones(n), "event": np.arange(n), "dataset": "toy",
                         "coef_sm": 1.0, "coef_lin_a": x, "coef_quad_a": np.zeros(n)})


def test_tiny_training_recovers_a_linear_ratio(tmp_path):
    path = tmp_path / "toy.parquet"
    _toy_table(4000, 4).to_parquet(path)
    cfg = TrainConfig(features=["x"], wc_names=["a"], c_train={"a": 1.0}, hidden=[16, 16], learning_rate=0.01,
                      batch_size=256, max_epochs=40, patience=5, replicas=3, seed=7)
    with pytest.raises(ConfigError, match="c_train: no value for b"):
        mt.train(path, tmp_path / "bad", TrainConfig(features=["x"], wc_names=["a", "b"], c_train={"a": 1.0}))
    meta = mt.train(path, tmp_path / "model", cfg)
    assert meta["training"]["events"] == 2000 and meta["training"]["fold"] == "even"
    model = ML4EFTModel(tmp_path / "model")
    grid = np.linspace(0.1, 1.9, 50)[:, None]
    terms = model(grid.astype(np.float32))
    np.testing.assert_allclose(terms[:, 0], grid[:, 0], atol=0.12)  # NN_lin = x
    assert np.max(np.abs(terms[:, 1])) < 0.12  # no quadratic dependence
    again = mt.train(path, tmp_path / "model2", cfg)
    assert again["replicas"]["lin_a"]["val_loss"] == meta["replicas"]["lin_a"]["val_loss"]  # seeded


def test_unbinned_interval_matches_the_analytic_one():
    from scipy.special import lambertw

    a, total = 0.3, 5000.0
    model = UnbinnedModel(["a"], np.full((50, 2), [a, 0.0]), np.full(50, total / 50), np.array([total, total * a, 0.0]))
    grid = np.linspace(-1, 1, 41)
    got = intervals(model, None, 0, False, grid)
    for level, thr in THRESHOLDS.items():
        # Delta(-2 ln L) = 2 W (u - ln(1 + u)), u = a c: 1 + u = -W_k(-exp(-1 - thr / 2W))
        z = -np.exp(-1 - thr / (2 * total))
        lo, hi = (-lambertw(z, 0).real - 1) / a, (-lambertw(z, -1).real - 1) / a
        assert got[level] == pytest.approx([lo, hi], abs=1e-5)


def test_default_config_is_valid():
    cfg = load_train_config()
    assert len(cfg.features) == 18 and cfg.term_scales()["mixed_ctGRe_ctj8"] == 4.0
    assert load_train_config(None, replicas=2).replicas == 2
    with pytest.raises(ConfigError, match="loss: expected"):
        load_train_config(None, loss="MSE")


@pytest.fixture(scope="module")
def eft_run(tmp_path_factory):
    from crema.generate import write_nanoaod
    from crema.workflows.config import load_config
    from crema.workflows.eft_outputs import write_eft_outputs
    from crema.workflows.run import run

    tmp = tmp_path_factory.mktemp("ml4eft")
    path = write_nanoaod(tmp / "tt_eft.root", "tt_dl_eft", 2000, seed=8)

    def run_with(options: str, outdir):
        cfg = tmp / f"{outdir}.yaml"
        cfg.write_text(f"""
luminosity_fb: 7.98
processor: {{name: ttbar_eft, options: {{systematics: false{options}}}}}
executor: {{name: iterative, chunksize: 2000, progress: false}}
datasets:
  - {{name: TT_EFT, kind: background, process: ttbar, xsec_pb: 98.0, files: [{path}]}}
""")
        config = load_config(cfg)
        out = run(config)[0]
        write_eft_outputs(out, config.samples, tmp / outdir)
        return out

    plain = run_with("", "plain")
    cfg = load_train_config(None, hidden=[8], max_epochs=3, patience=1, replicas=1, quantile_bins=5)
    mt.train(tmp / "plain" / "eft_features.parquet", tmp / "model", cfg)
    learned = run_with(f", eft_model: {tmp / 'model'}", "learned")
    return tmp, plain, learned


def test_processor_fills_the_learned_observables(eft_run):
    tmp, plain, learned = eft_run
    table = pd.read_parquet(tmp / "plain" / "eft_features.parquet")
    assert {"m_tt", "y_tt", "cos_theta_star"} <= set(table.columns)
    assert table["m_tt"].min() > 300 and table["cos_theta_star"].abs().max() <= 1
    hists = learned["eft_histograms"]["TT_EFT"]
    edges = json.loads((tmp / "model" / "ml4eft.json").read_text())["quantile_edges"]
    for wc in ("ctGRe", "ctj8"):
        h = hists[f"nn_{wc}"]
        np.testing.assert_allclose(h.axes[f"nn_{wc}"].edges, edges[wc])
        # every selected event is in the learned observable (flow included), with the same SM and EFT yields
        np.testing.assert_allclose(h.term_view(flow=True).sum(axis=tuple(range(1, 5))),
                                   hists["m_ll"].term_view(flow=True).sum(axis=tuple(range(1, 5))), rtol=1e-10)
        # quantile bins: the SM training distribution is spread over the bins, not piled up in one
        sm = h.eval([0.0, 0.0]).values().sum(axis=(0, 1, 2))
        assert sm.max() < 0.6 * sm.sum()
    import uproot

    with uproot.open(tmp / "learned" / "eft_templates.root") as f:
        assert f["emu_inclusive_nn_ctGRe/ttbar_lin_ctGRe"].values().sum() > 0
    assert "nn_ctGRe" not in plain["eft_histograms"]["TT_EFT"]


def test_unbinned_fit_on_held_out_events(eft_run):
    from crema.workflows.ml4eft import fit_unbinned, held_out_events

    tmp, _, _ = eft_run
    held = held_out_events(tmp / "learned", tmp / "model")
    assert (held["event"] % 2 == 1).all() and len(held) > 100  # trained on even events, fitted on odd ones
    result = fit_unbinned(tmp / "learned", tmp / "model", tmp / "fit", points=21, plots=False)
    saved = json.loads((tmp / "fit" / "eft_fit.json").read_text())
    for wc in ("ctGRe", "ctj8"):
        lo, hi = saved["intervals"][wc]["fixed"]["95"]
        assert lo < 0 < hi and saved["intervals"][wc]["profiled"]["68"][1] < saved["intervals"][wc]["profiled"]["95"][1]
    assert set(result["contour"]) >= {"x", "y", "delta_nll2"}


def test_train_command_without_torch_exits_2(monkeypatch, capsys, tmp_path):
    import sys

    from crema.workflows.cli import main

    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    assert main(["eft-train", str(tmp_path / "f.parquet"), "-o", str(tmp_path / "m")]) == 2
    assert "install crema[train]" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_cli_unbinned_fit_and_report(eft_run, capsys):
    from crema.workflows.cli import main

    tmp, _, _ = eft_run
    assert main(["eft-fit", str(tmp / "learned"), "-o", str(tmp / "nofit")]) == 2  # neither --observable nor --unbinned
    assert "--unbinned MODEL_DIR" in capsys.readouterr().err
    assert main(["eft-fit", str(tmp / "learned"), "--unbinned", str(tmp / "plain"), "-o", str(tmp / "x")]) == 2
    assert "not an ML4EFT model folder" in capsys.readouterr().err
    cfg = load_train_config(None, features=["m_tt", "y_tt", "cos_theta_star"], hidden=[8], max_epochs=2, patience=1,
                            replicas=2, quantile_bins=4)
    mt.train(tmp / "plain" / "eft_features.parquet", tmp / "parton", cfg)
    assert main(["eft-report", str(tmp / "model"), "--parton", str(tmp / "parton"), "-o", str(tmp / "report"),
                 "--events", "2000", "--no-plots"]) == 0
    report = json.loads((tmp / "report" / "eft_report.json").read_text())
    assert set(report["parton"]["intervals"]) == {"truth", "nn", "binned"}
    assert set(report["reco"]["intervals"]) == {"nn", "nn_binned", "binned_2d"}
    for section in ("parton", "reco"):
        for ivs in report[section]["intervals"].values():
            for wc in ("ctGRe", "ctj8"):
                assert ivs[wc]["95"][0] < ivs[wc]["68"][0] < 0 < ivs[wc]["68"][1] < ivs[wc]["95"][1]
    assert report["replicas"]["trained"]["lin_ctGRe"] == 1 and report["replicas"]["relative_width_spread"]["ctGRe"] is None
    assert -1 <= report["parton"]["correlation"]["ctGRe"] <= 1 and "parton_correlation_ctGRe" in report["comparisons"]
