"""EFT: generator weights, per-event coefficients, EFTHist, the ttbar_eft processor, binned intervals."""

from __future__ import annotations

import json

import awkward as ak
import hist
import numpy as np
import pytest
import uproot
from coffea import processor

from crema.generate import eft as truth
from crema.generate import write_nanoaod
from crema.histograms.eft import EFTHist, EFTPoints, fit_coefficients, term_names, term_vector
from crema.schema import ConfigError


@pytest.fixture(scope="module")
def eft_file(tmp_path_factory):
    return write_nanoaod(tmp_path_factory.mktemp("eft") / "tt_eft.root", "tt_dl_eft", 3000, seed=5)


def _weights(path):
    with uproot.open(path) as f:
        points = EFTPoints.from_json(str(f["EFTReweightPoints"]), "test")
        w = ak.to_numpy(f["Events"]["LHEReweightingWeight"].array())
    return points, w


def test_reweight_points_and_closure(eft_file):
    points, w = _weights(eft_file)
    assert points.wc_names == ["ctGRe", "ctj8"] and len(points.points) == w.shape[1] == 10
    assert w[:, 0] == pytest.approx(1.0)  # the SM point
    coef = fit_coefficients(w, points, "tt")
    design = term_vector(np.asarray(points.points))
    assert np.max(np.abs(coef @ design.T - w) / np.abs(w)) <= 1e-6


def _partons(seed: int, n: int):
    """Random parton kinematics: q qbar flag, m_tt, cos theta, and the generator's RNG for more."""
    rng = np.random.default_rng(seed)
    return rng.uniform(size=n) < 0.3, 350 + rng.gamma(1.3, 150, n), rng.uniform(-1, 1, n), rng


def test_coefficients_match_analytic_truth():
    is_qq, m_tt, cos, _ = _partons(3, 5000)
    points = EFTPoints(list(truth.WC_NAMES), [list(p) for p in truth.REWEIGHT_POINTS])
    w = truth.reweight_weights({"is_qq": is_qq, "m_tt": m_tt, "cos_theta": cos})
    coef = fit_coefficients(w, points, "tt")
    np.testing.assert_allclose(coef, truth.truth_coefficients(is_qq, m_tt, cos), atol=1e-9)


def test_degenerate_points_name_the_dataset():
    w = np.ones((5, 3))
    with pytest.raises(ConfigError, match="dataset tt_bad.*3 reweight points"):
        fit_coefficients(w, EFTPoints(["a", "b"], [[0, 0], [1, 0], [0, 1]]), "tt_bad")
    pts = [[0, 0], [1, 0], [2, 0], [3, 0], [4, 0], [5, 0]]  # ctj8 never moves
    with pytest.raises(ConfigError, match="dataset tt_line: the reweight points are degenerate"):
        fit_coefficients(np.ones((5, 6)), EFTPoints(["a", "b"], pts), "tt_line")
    with pytest.raises(ConfigError, match="points\\[1\\]"):
        EFTPoints.from_json('{"wc_names": ["a", "b"], "points": [[0, 0], [1]]}', "x").validate()


def _axes():
    return (hist.axis.Regular(8, 300, 1100, name="m"), hist.axis.StrCategory(["a", "b"], name="cat"))


def test_eval_equals_direct_fill_with_truth_ratio():
    n = 20000
    is_qq, m_tt, cos, rng = _partons(4, n)
    w = rng.normal(1.0, 0.3, n)
    coef = truth.truth_coefficients(is_qq, m_tt, cos)
    h = EFTHist(*_axes(), wc_names=truth.WC_NAMES, benchmarks=[[0.5, -2.0]])
    h.fill(coef, weight=w, m=m_tt, cat="a")
    for c in ([0.37, -0.81], [0.5, -2.0]):  # not a reweight point / a benchmark
        r = truth.truth_ratio(is_qq, m_tt, cos, c)
        direct = hist.Hist(*_axes(), storage=hist.storage.Weight()).fill(m=m_tt, cat="a", weight=w * r)
        got = h.eval(c)
        np.testing.assert_allclose(got.values(flow=True), direct.values(flow=True), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(h.eval([0.5, -2.0]).variances(flow=True), direct.variances(flow=True), rtol=1e-9)


def test_merge_equals_single_fill_and_refuses_other_wcs():
    rng = np.random.default_rng(5)
    n = 3000
    coef = rng.integers(-8, 8, (n, 6)) / 8.0  # dyadic: every sum is exact
    w = rng.integers(1, 4, n) / 4.0
    m = rng.uniform(250, 1200, n)
    cat = np.where(rng.uniform(size=n) < 0.5, "a", "b")
    whole = EFTHist(*_axes(), wc_names=truth.WC_NAMES, benchmarks=[[1.0, 1.0]])
    whole.fill(coef, weight=w, m=m, cat=cat)
    parts = []
    for sl in (slice(0, 1000), slice(1000, 1700), slice(1700, n)):
        h = EFTHist(*_axes(), wc_names=truth.WC_NAMES, benchmarks=[[1.0, 1.0]])
        h.fill(coef[sl], weight=w[sl], m=m[sl], cat=cat[sl])
        parts.append({"h": h})
    merged = processor.accumulate(parts)["h"]
    assert merged == whole
    other = EFTHist(*_axes(), wc_names=["ctj8", "ctGRe"], benchmarks=[[1.0, 1.0]])
    with pytest.raises(ValueError, match="different Wilson coefficients"):
        whole + other
    arrays, meta = whole._crema_state()
    json.dumps(meta)
    assert EFTHist._crema_from_state(arrays, meta) == whole


def test_term_names_order():
    assert term_names(["a", "b", "c"]) == ["sm", "lin_a", "lin_b", "lin_c", "quad_a", "quad_b", "quad_c",
                                            "mixed_a_b", "mixed_a_c", "mixed_b_c"]
    assert term_vector([2.0, 3.0, 5.0]).tolist() == [1, 2, 3, 5, 4, 9, 25, 6, 10, 15]


def test_interval_matches_independent_scan(tmp_path):
    from crema.stats.eft import fit

    wc = ["ctGRe", "ctj8"]
    terms = term_names(wc)
    rng = np.random.default_rng(6)
    templates = {t: rng.uniform(0.1, 1.0, 5) * s for t, s in zip(terms, [100, 20, 5, 3, 1, 0.5])}
    edges = np.linspace(0, 5, 6)
    with uproot.recreate(tmp_path / "eft_templates.root") as f:
        for t, v in templates.items():
            f[f"emu_inclusive_x/ttbar_{t}"] = (v, edges)
    yields = {"tt": {"emu": {"all events": {t: 1.0 for t in terms}}}}
    (tmp_path / "eft_yields.json").write_text(json.dumps(yields))
    result = fit(tmp_path, ["x"], tmp_path / "fit", plots=False, span=20, points=161)
    # independent: brute-force Poisson scan of ctj8 with ctGRe at 0
    grid = np.linspace(-20, 20, 400001)
    nu = sum(np.outer(m, templates[t]) for m, t in zip([np.ones_like(grid), 0 * grid, grid, 0 * grid, grid**2,
                                                         0 * grid], terms))
    data = sum(templates[t] for t in terms[:1])
    nll = 2 * (nu.sum(1) - (data * np.log(nu)).sum(1))
    nll -= nll.min()
    inside = grid[nll <= 3.841458820694124]
    lo, hi = result["intervals"]["ctj8"]["fixed"]["95"]
    assert lo == pytest.approx(inside.min(), abs=2e-4) and hi == pytest.approx(inside.max(), abs=2e-4)
    assert result["intervals"]["ctj8"]["profiled"]["95"][1] - result["intervals"]["ctj8"]["profiled"]["95"][0] >= \
        hi - lo - 1e-6


@pytest.fixture(scope="module")
def run_config(eft_file, tmp_path_factory):
    from crema.workflows.config import load_config

    path = tmp_path_factory.mktemp("cfg") / "config.yaml"
    path.write_text(f"""
luminosity_fb: 7.98
processor: {{name: ttbar_eft, options: {{benchmarks: [[1.0, 1.0]]}}}}
executor: {{name: iterative, chunksize: 1500, progress: false}}
datasets:
  - {{name: TT_EFT, kind: background, process: ttbar, xsec_pb: 98.0, files: [{eft_file}]}}
""")
    return load_config(path)


@pytest.fixture(scope="module")
def iterative_output(run_config):
    from crema.workflows.run import run

    return run(run_config)[0]


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["futures", "dask"])
def test_executors_give_the_same_histograms(run_config, iterative_output, executor):
    from crema.workflows.run import run

    other, _ = run(run_config.with_executor(name=executor, workers=2))
    for name, h in iterative_output["eft_histograms"]["TT_EFT"].items():
        np.testing.assert_allclose(h.term_view(flow=True), other["eft_histograms"]["TT_EFT"][name].term_view(flow=True),
                                   rtol=1e-12, atol=1e-12)


def test_processor_outputs(run_config, iterative_output, tmp_path):
    from crema.processors.ttbar_eft import FEATURES
    from crema.workflows.eft_outputs import write_eft_outputs

    out = iterative_output
    assert out["eft_histograms"]["TT_EFT"]["m_ll"].axes["systematic"][0] == "nominal"
    assert set(FEATURES) | {"pt_ll_eta_l1"} == set(out["eft_histograms"]["TT_EFT"])
    paths = write_eft_outputs(out, run_config.samples, tmp_path)
    with uproot.open(paths["eft_templates"]) as f:
        h = f["emu_inclusive_m_ll/ttbar_lin_ctGRe"]
        assert h.values().sum() > 0
        assert "ttbar_mixed_ctGRe_ctj8" in [k.split(";")[0] for k in f["emu_inclusive_pt_ll_eta_l1"].keys()]
    yields = json.loads(paths["eft_yields"].read_text())
    assert list(yields["TT_EFT"]["emu"])[0] == "all events"
    scal = json.loads(paths["scalings"].read_text())
    entry = next(e for e in scal if e["channel"] == "emu_inclusive_m_ll")
    assert entry["parameters"] == ["1", "ctGRe", "ctj8"] and all(len(b) == 6 and b[0] == 1.0 for b in entry["scaling"])
    from crema.stats.eft import fit

    stat = fit(tmp_path, ["m_ll"], tmp_path / "stat", plots=False, points=21)
    syst = fit(tmp_path, ["m_ll"], tmp_path / "syst", systematics=True, plots=False, points=21)
    assert syst["systematics"] == ["electron_id", "muon_id", "muon_iso", "pileup"]
    for wc in ("ctGRe", "ctj8"):
        width = lambda r: np.diff(r["intervals"][wc]["profiled"]["95"])[0]  # noqa: E731
        assert width(syst) >= width(stat) - 1e-6
    import pandas as pd

    table = pd.read_parquet(paths["eft_features"])
    assert {*FEATURES, "coef_lin_ctGRe", "weight", "dataset", "event"} <= set(table.columns)
    assert len(table) == int(out["cutflow"]["TT_EFT"]["emu"][list(out["cutflow"]["TT_EFT"]["emu"])[-1]]
                             + out["cutflow"]["TT_EFT"]["ee"][list(out["cutflow"]["TT_EFT"]["ee"])[-1]]
                             + out["cutflow"]["TT_EFT"]["mumu"][list(out["cutflow"]["TT_EFT"]["mumu"])[-1]])


def test_bins_match_hist_at_edges_and_flow():
    axes = (hist.axis.Regular(5, -1.0, 1.5, name="x"), hist.axis.Variable([0, 1, 3, 7], name="y", underflow=False),
            hist.axis.StrCategory(["a", "b"], name="c"))
    x = np.array([-1.0, -0.5, 0.0, 1.5, 1.4999999, -1.0000001, np.nan, 0.3, 2.0, 0.0])
    y = np.array([0.0, 1.0, 3.0, 7.0, -1.0, 2.0, 2.0, 6.9, 0.5, 100.0])
    c = np.array(["a", "b", "a", "z", "b", "a", "b", "a", "b", "a"])
    coef = np.zeros((len(x), 6))
    coef[:, 0] = 1.0
    h = EFTHist(*axes, wc_names=truth.WC_NAMES)
    h.fill(coef, weight=np.arange(1.0, 11.0), x=x, y=y, c=c)
    direct = hist.Hist(*axes, storage=hist.storage.Weight()).fill(x=x, y=y, c=c, weight=np.arange(1.0, 11.0))
    np.testing.assert_array_equal(h.eval([0.0, 0.0]).values(flow=True), direct.values(flow=True))


def test_dataset_eft_points_are_validated(tmp_path):
    from crema.workflows.config import load_config

    path = tmp_path / "config.yaml"
    path.write_text("""
luminosity_fb: 1.0
processor: {name: ttbar_eft}
datasets:
  - name: TT_EFT
    kind: background
    process: ttbar
    xsec_pb: 98.0
    files: [x.root]
    eft_points: '{"wc_names": ["ctGRe", "ctj8"], "points": [[0, 0], [1]]}'
""")
    with pytest.raises(ConfigError, match=r"datasets\[0\]\.eft_points: .*points\[1\]: need 2 finite values"):
        load_config(path)
