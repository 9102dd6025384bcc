"""crema.stats: workspace construction and inference against closed forms and known templates."""

from __future__ import annotations

import numpy as np
import pyhf
import pytest

from crema.stats import inference
from crema.stats.workspace import ChannelTemplates, build_workspace


# pyhf's Minuit optimizer fails when a fit has no free parameter (the mu = 0 fit of q0): a 0.01%
# luminosity uncertainty keeps one, with no visible effect on the closed-form checks
NEGLIGIBLE = 1e-4


def _channel(name, signal, background, variations=None, data=None, variances=True):
    signal, background = np.asarray(signal, float), np.asarray(background, float)
    var = (lambda v: v / 4) if variances else (lambda v: np.zeros_like(v))
    return ChannelTemplates(name, np.arange(len(signal) + 1.0),
                            {"sig": (signal, var(signal)), "bkg": (background, var(background))},
                            variations or {}, data)


@pytest.mark.parametrize("s,b", [(10.0, 100.0), (5.0, 20.0), (30.0, 10.0)])
def test_single_bin_expected_significance_is_the_asimov_formula(s, b):
    built = build_workspace([_channel("c", [s], [b], variances=False)], ["sig"], lumi_uncertainty=NEGLIGIBLE)
    m = inference.Model.from_spec(built.spec)
    z = inference.significance(m, observed=False)["expected_significance"]
    closed = np.sqrt(2 * ((s + b) * np.log(1 + s / b) - s))
    assert z == pytest.approx(closed, rel=0.01)


def _realistic():
    """Two channels with staterror, lumi, a normalisation and a +-10% shape variation."""
    nom = np.array([50.0, 40.0, 30.0, 20.0])
    tilt = np.array([-0.1, -0.03, 0.03, 0.1])
    variations = {"bkg": {"shape": (nom * (1 + tilt), nom * (1 - tilt))}}
    return [_channel("a", [1.0, 3.0, 6.0, 4.0], nom, variations),
            _channel("b", [0.5, 2.0, 2.0, 1.0], nom * 2)]


def test_asimov_fit_gives_mu_one_and_is_deterministic():
    built = build_workspace(_realistic(), ["sig"], lumi_uncertainty=0.014, norm_uncertainties={"bkg": 0.05})
    first = inference.fit(inference.Model.from_spec(built.spec), observed=False)
    second = inference.fit(inference.Model.from_spec(built.spec), observed=False)
    poi = first.labels.index("mu")
    assert first.bestfit[poi] == pytest.approx(1.0, abs=1e-3)
    assert np.array_equal(first.bestfit, second.bestfit) and np.array_equal(first.uncertainty, second.uncertainty)
    assert 0 < first.uncertainty[poi] < 5


def test_four_times_the_luminosity_halves_the_expected_limit():
    b = np.array([400.0, 300.0, 200.0, 100.0])
    s = np.array([2.0, 4.0, 6.0, 4.0])  # background dominated: s/sqrt(b) << 1 per bin
    limits = []
    for factor in (1.0, 4.0):
        built = build_workspace([_channel("c", s * factor, b * factor, variances=False)], ["sig"],
                                lumi_uncertainty=NEGLIGIBLE)
        limits.append(inference.expected_limit(inference.Model.from_spec(built.spec))["median"])
    assert limits[1] / limits[0] == pytest.approx(0.5, rel=0.15)


def test_workspace_validates_and_a_10_percent_variation_moves_templates_as_given():
    built = build_workspace(_realistic(), ["sig"], lumi_uncertainty=0.014)
    pyhf.schema.validate(built.spec, "workspace.json")
    modifiers = {(m["name"], m["type"]): m["data"] for m in built.spec["channels"][0]["samples"][0]["modifiers"]}
    assert built.spec["channels"][0]["samples"][0]["name"] == "sig" and ("mu", "normfactor") in modifiers
    bkg = {(m["name"], m["type"]): m["data"] for m in built.spec["channels"][0]["samples"][1]["modifiers"]}
    nom = np.array([50.0, 40.0, 30.0, 20.0])
    up, down = nom * (1 + np.array([-0.1, -0.03, 0.03, 0.1])), nom * (1 - np.array([-0.1, -0.03, 0.03, 0.1]))
    assert bkg[("shape", "normsys")]["hi"] == pytest.approx(up.sum() / nom.sum())
    assert bkg[("shape", "normsys")]["lo"] == pytest.approx(down.sum() / nom.sum())
    np.testing.assert_allclose(bkg[("shape", "histosys")]["hi_data"], up * nom.sum() / up.sum())
    # the model at shape = +-1 (everything else nominal, mu = 0) is exactly the varied template
    model = built.workspace().model()
    for alpha, expected in ((1.0, up), (-1.0, down)):
        pars = model.config.suggested_init()
        pars[model.config.par_slice("shape")] = [alpha]
        pars[model.config.poi_index] = 0.0
        main = model.expected_actualdata(pars)[:4]
        np.testing.assert_allclose(main, expected, rtol=1e-9)


def test_bins_without_background_are_dropped_and_reported():
    ch = _channel("c", [1.0, 2.0, 3.0], [0.0, 5.0, 7.0])
    built = build_workspace([ch], ["sig"], lumi_uncertainty=0.014)
    assert list(built.kept_bins["c"]) == [1, 2]
    assert built.spec["observations"][0]["data"] == [5.0, 7.0]
    assert any("dropped 1 of 3 bins" in n and "signal yield lost: 1" in n for n in built.notes)


def test_one_sided_and_unfilled_variations():
    nom = np.array([10.0, 10.0])
    ch = _channel("c", [1.0, 1.0], nom, {"bkg": {"onesided": (nom * [1.2, 1.0], None),
                                                 "unfilled": (np.zeros(2), np.zeros(2))}})
    built = build_workspace([ch], ["sig"], lumi_uncertainty=0.0)
    bkg = {(m["name"], m["type"]): m["data"] for m in built.spec["channels"][0]["samples"][1]["modifiers"]}
    assert bkg[("onesided", "normsys")]["lo"] == pytest.approx(2 - 1.1)  # mirrored: 2 nominal - up
    assert not any(name == "unfilled" for name, _ in bkg)
    assert any("unfilled has no filled template" in n for n in built.notes)


def test_data_are_the_observations_when_every_channel_has_them():
    ch = _channel("c", [1.0, 2.0], [10.0, 10.0], data=np.array([12.0, 9.0]))
    built = build_workspace([ch], ["sig"], lumi_uncertainty=0.014)
    assert built.observed and built.spec["observations"][0]["data"] == [12.0, 9.0]
    with pytest.raises(ValueError, match="no signal yield"):
        build_workspace([_channel("c", [0.0, 0.0], [10.0, 10.0])], ["sig"], lumi_uncertainty=0.014)


def test_limit_scan_in_two_processes_gives_the_same_numbers():
    """The CLs scan's points tested by two worker processes (each rebuilding the model from the spec)
    give the one-process results exactly, observed and expected."""
    channels = _realistic()
    channels[0] = _channel("a", [1.0, 3.0, 6.0, 4.0], [50.0, 40.0, 30.0, 20.0], data=np.array([52.0, 41.0, 36.0, 22.0]))
    channels[1] = _channel("b", [0.5, 2.0, 2.0, 1.0], [100.0, 80.0, 60.0, 40.0], data=np.array([97.0, 85.0, 60.0, 45.0]))
    built = build_workspace(channels, ["sig"], lumi_uncertainty=0.014, norm_uncertainties={"bkg": 0.05})
    one, *_ = inference.analyse(built.spec, observed=True)
    two, *_ = inference.analyse(built.spec, observed=True, workers=2)
    assert one["expected_limit"] == two["expected_limit"] and one["observed_limit"] == two["observed_limit"]
    assert one["limit_scan"] == two["limit_scan"] and one["limit_scan"]["converged_points"] >= 12
    assert 0 < one["expected_limit"]["minus2"] < one["expected_limit"]["median"] < one["expected_limit"]["plus2"]


def test_crossings_interpolate_log_cls():
    """An exponentially falling CLs curve on a coarse grid gives its exact 5% crossing; a curve below
    alpha at the first point or above it at the last one gives -inf / +inf."""
    mus = [1.0, 3.0, 5.0, 7.0]
    by_mu = {mu: np.array([np.exp(-mu / 2.0), 0.5, 0.9]) for mu in mus}
    exact = -2.0 * np.log(0.05)
    crossings = inference._crossings(by_mu, 0.05)
    assert crossings[0] == pytest.approx(exact, rel=1e-12)
    assert crossings[1] == np.inf and crossings[2] == np.inf
    assert inference._crossings({1.0: np.array([0.01]), 2.0: np.array([0.001])}, 0.05) == [-np.inf]
