"""Generator-level filters and biased sampling: unbiased weighted distributions, right normalisation."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest
import uproot

from crema.generate import write_nanoaod
from crema.generate.enrich import Enrichment, GeneratorBias, GeneratorFilter, hard_quantities
from crema.generate.processes import MAX_ISR, PROCESS_SPECS, generate_hard, isr_count_pmf
from crema.schema import ConfigError, from_dict
from crema.workflows.config import GenerateSpec

LEPTON_MIN = 35.0
ENRICH = Enrichment(GeneratorFilter(lepton_pt=LEPTON_MIN, partons=1),
                    GeneratorBias(reference=200.0, variable="ht", power=2.0, min_keep=0.02, light_keep=0.5))


def _chi2(a, var_a, b, var_b):
    """chi2 and number of compared bins of two weighted histograms (bins with content in either)."""
    var = var_a + var_b
    used = var > 0
    return float(np.sum((a[used] - b[used]) ** 2 / var[used])), int(used.sum())


def _hist(x, w, edges):
    return np.histogram(x, edges, weights=w)[0], np.histogram(x, edges, weights=w * w)[0]


@pytest.fixture(scope="module")
def hard_samples():
    """Hard W+jets events: 200k unbiased, and the kept part of 200k others with their weight factors."""
    spec = PROCESS_SPECS["wjets"]
    plain = hard_quantities(generate_hard(spec, np.random.default_rng(11), 200_000, 800.0))
    attempted = hard_quantities(generate_hard(spec, np.random.default_rng(12), 200_000, 800.0))
    kept, factor = ENRICH.keep(attempted, np.random.default_rng(13).uniform(size=200_000))
    return plain, {k: v[kept] for k, v in attempted.items()}, factor[kept]


def test_biased_ht_spectrum_is_unbiased_above_the_filter(hard_samples):
    plain, biased, factor = hard_samples
    assert 0.005 < factor.size / 200_000 < 0.2  # the bias keeps a minority of events
    assert np.all(np.isfinite(factor)) and np.all(factor >= 1.0)
    assert factor.max() <= 1.0 / (0.02 * 0.5) + 1e-9
    above = (plain["lepton_pt"] >= LEPTON_MIN) & (plain["partons"] >= 1)
    edges = np.array([20, 40, 60, 80, 100, 130, 160, 200, 250, 300, 400, 600])
    a, var_a = _hist(plain["ht"][above], np.ones(above.sum()), edges)
    b, var_b = _hist(biased["ht"], factor, edges)
    chi2, ndf = _chi2(a, var_a, b, var_b)
    assert ndf == len(edges) - 1
    assert chi2 < ndf + 5 * np.sqrt(2 * ndf), (chi2, ndf)
    # the biased sample is much more precise in the tail than the unbiased one of the same size
    tail = biased["ht"] > 250
    n_eff = factor[tail].sum() ** 2 / (factor[tail] ** 2).sum()
    assert n_eff > 3 * np.count_nonzero(plain["ht"][above] > 250) * factor.size / 200_000
    # total yield above threshold (per attempted event)
    yield_plain, yield_biased = above.sum() / 200_000, factor.sum() / 200_000
    sigma = np.hypot(np.sqrt(above.sum()), np.sqrt((factor**2).sum())) / 200_000
    assert abs(yield_biased - yield_plain) < 4 * sigma


def test_dropping_the_bias_weight_is_detected(hard_samples):
    """The chi2 of the comparison above can fail: without the 1/keep factor the HT spectrum is harder."""
    plain, biased, factor = hard_samples
    above = (plain["lepton_pt"] >= LEPTON_MIN) & (plain["partons"] >= 1)
    edges = np.array([20, 40, 60, 80, 100, 130, 160, 200, 250, 300, 400, 600])
    a, var_a = _hist(plain["ht"][above], np.ones(above.sum()), edges)
    unweighted = np.full(factor.size, factor.sum() / factor.size)
    b, var_b = _hist(biased["ht"], unweighted, edges)
    chi2, ndf = _chi2(a, var_a, b, var_b)
    assert chi2 > 10 * ndf


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("enrich")
    plain = write_nanoaod(d / "plain.root", "wjets", 4000, seed=5)
    enriched = write_nanoaod(d / "enriched.root", "wjets", 1500, seed=6, enrich=ENRICH)
    return plain, enriched


def _read(path):
    with uproot.open(path) as f:
        runs = f["Runs"].arrays(library="np")
        ev = f["Events"].arrays(["genWeight", "Muon_pt", "Electron_pt"])
    lep = ak.concatenate([ev.Muon_pt, ev.Electron_pt], axis=1)
    lead = ak.to_numpy(ak.fill_none(ak.max(lep, axis=1), 0.0))
    return runs, np.asarray(ev.genWeight, dtype=np.float64), lead


def test_written_sample_normalisation_and_weights(files):
    plain, enriched = files
    runs0, w0, lead0 = _read(plain)
    runs, w, lead = _read(enriched)
    assert w.size == 1500
    assert int(runs["genEventCount"][0]) > 1500 == int(runs["GenFilter_numEventsPassed"][0])
    assert runs["GenFilter_numEventsTotal"][0] == runs["genEventCount"][0]
    assert runs["GenFilter_filterEfficiency"][0] == pytest.approx(w.sum() / runs["genEventSumw"][0], rel=1e-6)
    assert "GenFilter_filterEfficiency" not in runs0
    nominal = PROCESS_SPECS["wjets"].weight
    assert np.all(np.isfinite(w)) and np.all(np.abs(w) >= nominal * (1 - 1e-6))
    # genEventSumw counts attempted events with their nominal weights (20% negative)
    expected = nominal * runs["genEventCount"][0] * (1 - 2 * PROCESS_SPECS["wjets"].negative_fraction)
    assert runs["genEventSumw"][0] == pytest.approx(expected, rel=0.02)
    # normalised yield of reconstructed leptons above the filter threshold (+ resolution margin)
    cut = LEPTON_MIN + 10.0
    y0 = w0[lead0 > cut].sum() / runs0["genEventSumw"][0]
    y = w[lead > cut].sum() / runs["genEventSumw"][0]
    s0 = np.sqrt((w0[lead0 > cut] ** 2).sum()) / runs0["genEventSumw"][0]
    s = np.sqrt((w[lead > cut] ** 2).sum()) / runs["genEventSumw"][0]
    assert abs(y - y0) < 4 * np.hypot(s, s0), (y, y0, s, s0)
    edges = np.array([cut, 55, 70, 90, 120, 200])
    a, va = _hist(lead0[lead0 > cut], w0[lead0 > cut] / runs0["genEventSumw"][0], edges)
    b, vb = _hist(lead[lead > cut], w[lead > cut] / runs["genEventSumw"][0], edges)
    chi2, ndf = _chi2(a, va, b, vb)
    assert chi2 < ndf + 5 * np.sqrt(2 * ndf), (chi2, ndf)


def test_generate_spec_validation_names_the_key():
    where = "datasets.WtoLNu.generate"
    spec = from_dict(GenerateSpec, {"process": "wjets", "events": 10, "filter": {"lepton_pt": 25},
                                    "bias": {"reference": 150}}, where)
    assert spec.enrichment and spec.enrichment.bias.variable == "ht"
    assert not from_dict(GenerateSpec, {"process": "wjets", "events": 10}, where).enrichment
    bad = [({"bias": {"reference": 0}}, "bias.reference"), ({"bias": {"reference": 9, "variable": "mjj"}}, "bias.variable"),
           ({"bias": {"reference": 9, "min_keep": 0}}, "bias.min_keep"), ({"filter": {"ht": -1}}, "filter.ht"),
           ({"filter": {"njets": 2}}, "filter.njets")]
    for extra, key in bad:
        with pytest.raises(ConfigError, match=rf"{where}\.{key}"):
            from_dict(GenerateSpec, {"process": "wjets", "events": 10, **extra}, where)


def test_unpassable_filter_and_data_are_errors(tmp_path):
    # stops after 10 / MIN_EFFICIENCY attempts whatever the number of events asked for (not after 1e9)
    with pytest.raises(ValueError, match="0 of 100000 attempted events passed"):
        write_nanoaod(tmp_path / "x.root", "dy", 100_000, seed=1, enrich=Enrichment(GeneratorFilter(ht=1e6)))
    with pytest.raises(ValueError, match="simulation only"):
        write_nanoaod(tmp_path / "y.root", "dy", 1, seed=1, data=True, enrich=ENRICH)


@pytest.fixture(scope="module")
def isr_samples():
    """Hard W+jets events: 100k with the process's ISR multiplicity, 100k drawn with a harder one."""
    spec = PROCESS_SPECS["wjets"]
    plain = generate_hard(spec, np.random.default_rng(21), 100_000, 800.0)
    biased = generate_hard(spec, np.random.default_rng(22), 100_000, 800.0, isr_mean=2.5)
    return hard_quantities(plain), hard_quantities(biased), biased.isr_weight


def test_isr_count_pmf_is_the_capped_poisson_law():
    pmf = isr_count_pmf(1, 2.0)
    assert pmf.size == MAX_ISR + 1 and pmf[0] == 0 and pmf.sum() == pytest.approx(1.0)
    assert pmf[1] == pytest.approx(np.exp(-2.0)) and pmf[3] == pytest.approx(np.exp(-2.0) * 2.0)
    assert pmf[MAX_ISR] == pytest.approx(1.0 - pmf[:MAX_ISR].sum())  # the cap holds the tail


def test_isr_multiplicity_bias_is_an_exact_reweighting(isr_samples):
    plain, biased, w = isr_samples
    assert np.all(w > 0) and w.mean() == pytest.approx(1.0, abs=0.02)
    one = np.ones(plain["ht"].size)
    for name, edges in (("partons", np.arange(-0.5, 6.5)), ("ht", np.array([0, 20, 40, 60, 80, 100, 130, 160, 200,
                                                                             250, 300, 400, 600]))):
        a, va = _hist(plain[name], one, edges)
        b, vb = _hist(biased[name], w, edges)
        chi2, ndf = _chi2(a, va, b, vb)
        assert chi2 < ndf + 5 * np.sqrt(2 * ndf), (name, chi2, ndf)
        # without the weight the harder multiplicity shows
        b1, vb1 = _hist(biased[name], one, edges)
        assert _chi2(a, va, b1, vb1)[0] > 10 * ndf, name
    # more effective events with >= 3 partons in the jet acceptance than the unbiased sample has
    many = biased["partons"] >= 3
    assert w[many].sum() ** 2 / (w[many] ** 2).sum() > 1.5 * np.count_nonzero(plain["partons"] >= 3)


def test_isr_bias_and_positive_weights_in_written_files(tmp_path):
    enrich = Enrichment(isr_mean=2.0, negative_weights=False)
    path = write_nanoaod(tmp_path / "w.root", "wjets", 600, seed=8, enrich=enrich)
    runs, w, _ = _read(path)
    nominal = PROCESS_SPECS["wjets"].weight
    assert w.size == 600 == int(runs["genEventCount"][0])  # no event is rejected
    assert np.all(w > 0)  # no negative weights
    ratio = w / nominal
    assert len(np.unique(np.round(ratio, 9))) > 1  # the ISR factor per count
    assert runs["genEventSumw"][0] == pytest.approx(w.sum(), rel=1e-6)
    assert runs["genEventSumw2"][0] == pytest.approx((w**2).sum(), rel=1e-6)
    where = "datasets.WtoLNu.generate"
    spec = from_dict(GenerateSpec, {"process": "wjets", "events": 10, "isr_mean": 2.0, "negative_weights": False}, where)
    assert spec.enrichment == enrich
    for bad in (0, -1, 11):
        with pytest.raises(ConfigError, match=rf"{where}.*isr_mean"):
            from_dict(GenerateSpec, {"process": "wjets", "events": 10, "isr_mean": bad}, where)


def test_tag_bias_is_an_exact_reweighting_of_the_btag_scores():
    """Mistag enrichment: per jet class the weighted b-tag scores follow the unbiased law (PNet and the
    DeepJet score derived from it), mistags are many times more frequent in the sample, b jets untouched."""
    from crema.generate.enrich import TagBias
    from crema.generate.reco_jets import _flavour_tagging
    from crema.generate.response import BOTTOM, UDS

    rng = np.random.default_rng(5)
    m = 200_000
    cls, eta, pt, z = rng.integers(0, 6, m), rng.uniform(-3, 3, m), rng.uniform(10, 100, m), rng.normal(size=m)
    bias = TagBias(score_min=0.245, share=0.1, pt_min=20.0)
    plain, none = _flavour_tagging(np.random.default_rng(6), cls, eta, pt, z)
    biased, factor = _flavour_tagging(np.random.default_rng(7), cls, eta, pt, z, bias)
    assert none is None and factor.mean() == pytest.approx(1.0, abs=0.01)
    eligible = (np.abs(eta) < 2.5) & (cls != BOTTOM) & (pt >= 20.0)
    assert np.all(factor[~eligible] == 1.0) and np.all(factor[eligible] != 1.0)
    edges = np.array([-1.01, -0.5, 0, 0.01, 0.05, 0.1, 0.2, 0.245, 0.3, 0.5, 0.8, 0.95, 1.0])
    for key in ("btagPNetB", "btagDeepFlavB", "btagPNetCvL"):
        for c in range(6):
            sel = cls == c
            a, va = _hist(plain[key][sel], np.ones(sel.sum()), edges)
            b, vb = _hist(biased[key][sel], factor[sel], edges)
            # Poisson variance of the plain counts from their expectation (the biased estimate): the
            # plain sample has bins with 0-2 mistags that the biased one measures precisely
            chi2, ndf = _chi2(a, b, b, vb)
            assert chi2 < ndf + 5 * np.sqrt(2 * ndf), (key, c, chi2, ndf)
    light = eligible & (cls == UDS)
    rate_plain = np.mean(plain["btagPNetB"][light] > 0.245)
    rate_sampled = np.mean(biased["btagPNetB"][light] > 0.245)
    assert rate_sampled > 5 * rate_plain  # ~ share + (1 - share) x the mistag rate
    # without the weight the mistag rate is wrong by that factor: the test above would fail
    a, va = _hist(plain["btagPNetB"][light], np.ones(light.sum()), edges)
    b, vb = _hist(biased["btagPNetB"][light], np.ones(light.sum()), edges)
    assert _chi2(a, va, b, vb)[0] > 100


def test_tag_bias_in_written_files_keeps_the_normalisation(tmp_path):
    from crema.generate.enrich import TagBias

    enrich = Enrichment(negative_weights=False, tag_bias=TagBias(score_min=0.245, share=0.2))
    path = write_nanoaod(tmp_path / "w.root", "wjets", 3000, seed=9, enrich=enrich)
    runs, w, _ = _read(path)
    assert w.size == 3000 == int(runs["genEventCount"][0])  # no event is rejected
    nominal = PROCESS_SPECS["wjets"].weight
    assert runs["genEventSumw"][0] == pytest.approx(3000 * nominal)  # attempted events, nominal weight
    assert np.all(w > 0) and w.sum() / (3000 * nominal) == pytest.approx(1.0, abs=0.03)  # E[factor] = 1
    with uproot.open(path) as f:
        jets = f["Events"].arrays(["Jet_pt", "Jet_eta", "Jet_btagPNetB"])
    tags = ak.sum((jets.Jet_pt > 20) & (np.abs(jets.Jet_eta) < 2.5) & (jets.Jet_btagPNetB > 0.245), axis=1)
    assert np.count_nonzero(tags >= 2) > 50  # ~0.2% of unbiased W+jets events
    where = "datasets.WtoLNu.generate"
    spec = from_dict(GenerateSpec, {"process": "wjets", "events": 10, "negative_weights": False,
                                    "tag_bias": {"score_min": 0.245, "share": 0.2}}, where)
    assert spec.enrichment == enrich
    for bad in ({"score_min": 1.5}, {"score_min": 0.245, "share": 1.0}):
        with pytest.raises(ConfigError, match=rf"{where}.*tag_bias"):
            from_dict(GenerateSpec, {"process": "wjets", "events": 10, "tag_bias": bad}, where)


def test_adjacent_slices_add_up_to_the_process(tmp_path):
    """Boson-pT slices of W+jets (as the pT-binned samples): on the same hard events the two slices
    keep complementary events; written as files, each slice's yield per attempted event adds up to the
    inclusive one (within statistics) and the high slice holds the high-pT part."""
    spec = PROCESS_SPECS["wjets"]
    quantities = hard_quantities(generate_hard(spec, np.random.default_rng(21), 50_000, 800.0))
    u = np.random.default_rng(22).uniform(size=50_000)
    low, _ = Enrichment(GeneratorFilter(system_pt_max=150.0)).keep(quantities, u)
    high, _ = Enrichment(GeneratorFilter(system_pt=150.0)).keep(quantities, u)
    assert not np.any(low & high) and np.all(low | high)
    assert 0.001 < high.mean() < 0.2
    fractions = []
    for name, f in (("low", GeneratorFilter(system_pt_max=150.0)), ("high", GeneratorFilter(system_pt=150.0))):
        path = write_nanoaod(tmp_path / f"{name}.root", "wjets", 300, seed=23, enrich=Enrichment(f, negative_weights=False))
        runs, w, _ = _read(path)
        fractions.append(w.sum() / runs["genEventSumw"][0])
        with uproot.open(path) as file:  # event numbers unique, also across blocks of different sizes
            event = file["Events"]["event"].array(library="np")
        assert np.all(np.diff(event.astype(np.int64)) > 0)
    assert fractions[0] == pytest.approx(1.0 - high.mean(), abs=0.02)
    assert fractions[1] == pytest.approx(high.mean(), rel=0.3)
    with pytest.raises(ConfigError, match="system_pt_max: must be above system_pt"):
        from_dict(GenerateSpec, {"process": "wjets", "events": 10, "filter": {"system_pt": 150, "system_pt_max": 100}},
                  "datasets.W.generate")
