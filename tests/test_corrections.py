"""Corrections: JEC/JER/MET on real NanoAODv12 and on test-built jets, event weights, b-tag method, era checks.

References are computed here directly with correctionlib (not through crema's helpers) so that a
wrong input order, a missing rawFactor or a mis-applied formula in crema shows up as a mismatch.
"""

from __future__ import annotations

import pickle
import warnings

import awkward as ak
import correctionlib
import correctionlib.schemav2 as cs
import numpy as np
import pytest
import uproot
import yaml
from coffea.analysis_tools import Weights
from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

from conftest import REAL_NANO
from crema.corrections.btag import (
    efficiency_histogram,
    fill_efficiency,
    fixed_wp_weight,
    working_point,
    write_efficiency_map,
)
from crema.corrections.era import CORRECTIONS_DIR, EraConfig, load_era
from crema.corrections.jets import JetCorrector, standard_normal
from crema.corrections.weights import EventWeights
from crema.schema import ConfigError, to_dict

JERC = CORRECTIONS_DIR / "jet_jerc_Summer22_V3.json.gz"
JEC_MC = "Summer22_22Sep2023_V3_MC_L1L2L3Res_AK4PFPuppi"
JEC_DATA = "Summer22_22Sep2023_RunCD_V3_DATA_L1L2L3Res_AK4PFPuppi"
RESOLUTION = "Summer22_22Sep2023_JRV1_MC_PtResolution_AK4PFPuppi"
SCALE_FACTOR = "Summer22_22Sep2023_JRV1_MC_ScaleFactor_AK4PFPuppi"


def _events(path):
    # virtual: branches are read when first used (eager would read all ~1700 branches of the file)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NanoAODSchema warns about cross-references it cannot build
        return NanoEventsFactory.from_root({str(path): "Events"}, schemaclass=NanoAODSchema, mode="virtual").events()


def _flat(a) -> np.ndarray:
    return np.asarray(ak.to_numpy(ak.flatten(a, axis=1)), dtype=np.float64)


def _by_raw(jets) -> ak.Array:
    """Jets in a variation-independent order (raw pt does not change), to compare jet by jet."""
    return jets[ak.argsort(jets.pt_raw, axis=1)]


@pytest.fixture(scope="module")
def era():
    return load_era("2022")


@pytest.fixture(scope="module")
def events():
    return _events(REAL_NANO)


@pytest.fixture(scope="module")
def corrector(era):
    return JetCorrector(era)


@pytest.fixture(scope="module")
def cset():
    return correctionlib.CorrectionSet.from_file(str(JERC))


# --------------------------------------------------------------------------- JEC on real NanoAOD
def test_jec_equals_direct_correctionlib(events, corrector, cset):
    jets = corrector.correct(events)
    j = events.Jet
    counts = ak.num(j, axis=1)
    raw = _flat(j.pt) * (1 - _flat(j.rawFactor))
    rho = np.repeat(ak.to_numpy(events.Rho.fixedGridRhoFastjetAll), ak.to_numpy(counts))
    expected = raw * cset.compound[JEC_MC].evaluate(_flat(j.area), _flat(j.eta), raw, rho)
    got = _by_raw(jets)
    order = ak.argsort(ak.unflatten(raw, counts), axis=1)
    np.testing.assert_allclose(_flat(got.pt_jec), _flat(ak.unflatten(expected, counts)[order]), rtol=1e-9)
    np.testing.assert_allclose(_flat(got.pt_raw), _flat(ak.unflatten(raw, counts)[order]), rtol=1e-9)
    assert ak.all(jets.pt[:, :-1] >= jets.pt[:, 1:])  # re-sorted by corrected pt
    assert not np.allclose(_flat(jets.pt), _flat(jets.pt_jec))  # and smeared on top


def test_data_gets_data_jec_only(events, corrector, cset):
    data = ak.without_field(events, "genWeight")
    jets = _by_raw(corrector.correct(data, "JES_Absolute_up"))  # a variation gives nominal for data
    raw, area, eta = _flat(jets.pt_raw), _flat(jets.area), _flat(jets.eta)
    rho = np.repeat(ak.to_numpy(data.Rho.fixedGridRhoFastjetAll), ak.to_numpy(ak.num(jets, axis=1)))
    np.testing.assert_allclose(_flat(jets.pt), raw * cset.compound[JEC_DATA].evaluate(area, eta, raw, rho), rtol=1e-9)


def test_jec_closure_with_nanoaod(events, corrector):
    """Re-applying L1L2L3Res to the raw pt gives back NanoAOD's Jet_pt up to the JEC version difference.

    Measured on nano_tt_v12.root (1504 jets): |eta| < 2.5 median ratio 1.0015, half-width of the
    central 68% 0.48%; forward jets (|eta| > 3) differ by ~9% (other JEC version in the HF).
    """
    jets = corrector.correct(events)
    ratio, eta = _flat(jets.pt_jec / jets.pt_orig), np.abs(_flat(jets.eta))
    central = ratio[eta < 2.5]
    lo, med, hi = np.percentile(central, [16, 50, 84])
    assert abs(med - 1) < 0.004
    assert (hi - lo) / 2 < 0.008
    assert abs(np.median(ratio) - 1) < 0.004


def test_corrected_jets_keep_behaviour(events, corrector):
    jets = corrector.correct(events)
    pair = jets[ak.num(jets, axis=1) >= 2]
    mass = (pair[:, 0] + pair[:, 1]).mass
    assert ak.all(mass > 0)
    assert ak.all(jets.delta_r(jets) == 0)
    gen = jets.matched_gen  # cross-references still resolve after the re-sort
    m = ~ak.is_none(gen, axis=1)
    assert ak.sum(m) > 500
    assert np.median(_flat(jets.pt[m] / gen.pt[m])) == pytest.approx(1.0, abs=0.05)


def test_matched_jets_follow_hybrid_formula(events, corrector, cset):
    """Matched jets: pt = pt_gen + SF (pt_jec - pt_gen), SF and resolution evaluated directly here."""
    jets = corrector.correct(events)
    gen = jets.matched_gen
    has_gen = ~ak.is_none(gen, axis=1)
    jets, gen = jets[has_gen], gen[has_gen]
    pt_jec, eta, rho = _flat(jets.pt_jec), _flat(jets.eta), np.repeat(
        ak.to_numpy(events.Rho.fixedGridRhoFastjetAll), ak.to_numpy(ak.num(jets, axis=1)))
    sigma = cset[RESOLUTION].evaluate(eta, pt_jec, rho)
    sf = cset[SCALE_FACTOR].evaluate(eta, pt_jec, "nom")
    gpt = _flat(gen.pt)
    matched = (_flat(jets.delta_r(gen)) < 0.2) & (np.abs(pt_jec - gpt) < 3 * sigma * pt_jec)
    assert matched.sum() > 500
    np.testing.assert_allclose(_flat(jets.pt)[matched], (gpt + sf * (pt_jec - gpt))[matched], rtol=1e-6)


# --------------------------------------------------------------------------- variations
def test_jes_variations_bracket_every_jet(events, corrector):
    out = corrector.correct_all(events)
    assert set(out) == {"nominal", *corrector.variations}
    assert len(corrector.variations) == 2 * 11 + 2  # regrouped sources + JER
    nominal = _flat(_by_raw(out["nominal"]).pt)
    for source in corrector.config.sources():
        up = _flat(_by_raw(out[f"JES_{source}_up"]).pt)
        down = _flat(_by_raw(out[f"JES_{source}_down"]).pt)
        # the regrouped sources are signed (EC2 is negative near |eta| = 3): up and down sit on
        # opposite sides of nominal, symmetrically, for every jet
        assert np.all(np.minimum(up, down) <= nominal) and np.all(nominal <= np.maximum(up, down)), source
        np.testing.assert_allclose(up - nominal, nominal - down, atol=1e-9)
        assert np.any(up != nominal), source  # each source moves some jet
    quadrature = np.sqrt(sum((_flat(_by_raw(out[f"JES_{s}_up"]).pt) / nominal - 1) ** 2 for s in corrector.config.sources()))
    assert np.all(quadrature > 0.003) and np.all(quadrature < 0.2)  # every jet has a JES uncertainty


def test_unknown_variation_is_rejected(events, corrector):
    with pytest.raises(ValueError, match="JES_Absolute_up"):
        corrector.correct(events, "JES_Nonsense_up")


# --------------------------------------------------------------------------- MET
def test_met_propagation(events, corrector):
    jets = corrector.correct(events)
    met = corrector.corrected_met(events, jets)
    sel = jets.pt > 15
    dpt = ak.where(sel, jets.pt - jets.pt_orig, 0)
    px = events.PuppiMET.pt * np.cos(events.PuppiMET.phi) - ak.sum(dpt * np.cos(jets.phi), axis=1)
    py = events.PuppiMET.pt * np.sin(events.PuppiMET.phi) - ak.sum(dpt * np.sin(jets.phi), axis=1)
    np.testing.assert_allclose(ak.to_numpy(met.px), ak.to_numpy(px), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ak.to_numpy(met.py), ak.to_numpy(py), rtol=1e-6, atol=1e-6)
    # jets unchanged w.r.t. NanoAOD leave MET unchanged
    same = ak.with_field(jets, jets.pt_orig, "pt")
    np.testing.assert_allclose(ak.to_numpy(corrector.corrected_met(events, same).pt), ak.to_numpy(events.PuppiMET.pt), rtol=1e-6)
    assert not np.allclose(ak.to_numpy(met.pt), ak.to_numpy(events.PuppiMET.pt))


# --------------------------------------------------------------------------- determinism and pickling
def test_smearing_is_deterministic_across_calls_and_chunks(events, corrector):
    whole = corrector.correct(events)
    again = corrector.correct(events)
    halves = ak.concatenate([corrector.correct(events[:77]), corrector.correct(events[77:])])
    np.testing.assert_array_equal(_flat(whole.pt), _flat(again.pt))
    np.testing.assert_array_equal(_flat(whole.pt), _flat(halves.pt))
    # the random numbers are a function of (run, lumi, event, index) only
    z = standard_normal(np.array([1, 1]), np.array([2, 2]), np.array([3, 4]), np.array([0, 0]))
    assert z[0] != z[1] and standard_normal(np.array([1]), np.array([2]), np.array([4]), np.array([0]))[0] == z[1]


def test_pickle_after_use(events, corrector):
    before = corrector.correct(events)
    assert corrector._cset is not None
    clone = pickle.loads(pickle.dumps(corrector))
    assert clone._cset is None  # compiled correctionlib objects are not shipped
    np.testing.assert_array_equal(_flat(clone.correct(events).pt), _flat(before.pt))


def test_empty_chunk(events, corrector):
    jets = corrector.correct(events[:0])
    assert len(jets) == 0 and len(corrector.corrected_met(events[:0], jets)) == 0


# --------------------------------------------------------------------------- JER on test-built jets
def _invert_jec(cset, target, area, eta, rho):
    """Raw pt whose corrected pt is ``target`` (fixed-point iteration on raw * C(raw) = target)."""
    raw = target.copy()
    for _ in range(30):
        raw = target / cset.compound[JEC_MC].evaluate(area, eta, raw, rho)
    assert np.allclose(raw * cset.compound[JEC_MC].evaluate(area, eta, raw, rho), target, rtol=1e-7)
    return raw


@pytest.fixture(scope="module")
def built_jets(tmp_path_factory, cset):
    """50k one-jet events in one (eta, rho) bin, reco pt drawn with the MC resolution around pt_gen.

    Jets 0, 4, 8, ... point at their GenJet (hybrid scaling); jets 2, 6, ... point at a GenJet
    0.3 away in phi (beyond R/2 = 0.2: stochastic); odd jets have genJetIdx = -1 (stochastic).
    """
    n = 50_000
    rng = np.random.default_rng(7)
    gen_pt = np.full(n, 80.0)
    eta = rng.uniform(0.30, 0.50, n)  # one resolution bin and one SF bin (0.261 - 0.522)
    phi = rng.uniform(-np.pi, np.pi, n)
    rho = np.full(n, 18.0)
    area = np.full(n, 0.5)
    sigma_mc = cset[RESOLUTION].evaluate(eta, gen_pt, rho)
    target = gen_pt * (1 + sigma_mc * rng.standard_normal(n))
    raw = _invert_jec(cset, target, area, eta, rho)
    stored = target * 1.02  # what NanoAOD stored (another JEC): only used through rawFactor
    one = lambda a: ak.unflatten(a, np.ones(n, dtype=np.int64))  # noqa: E731
    path = tmp_path_factory.mktemp("jer") / "built.root"
    with uproot.recreate(path) as f:
        f["Events"] = {
            "run": np.ones(n, dtype=np.uint32), "luminosityBlock": np.full(n, 3, dtype=np.uint32),
            "event": np.arange(n, dtype=np.uint64) + 1000, "genWeight": np.ones(n, dtype=np.float32),
            "Rho_fixedGridRhoFastjetAll": rho.astype(np.float32),
            "PuppiMET_pt": np.full(n, 30.0, dtype=np.float32), "PuppiMET_phi": np.zeros(n, dtype=np.float32),
            "Jet": ak.zip({"pt": one(stored), "eta": one(eta), "phi": one(phi), "mass": one(np.full(n, 8.0)),
                           "rawFactor": one(1 - raw / stored), "area": one(area),
                           "genJetIdx": one(np.where(np.arange(n) % 2 == 0, 0, -1).astype(np.int16))}),
            "GenJet": ak.zip({"pt": one(gen_pt), "eta": one(eta), "phi": one(phi + np.where(np.arange(n) % 4 == 2, 0.3, 0.0)),
                              "mass": one(np.full(n, 8.0))}),
        }
    events = _events(path)
    sf = {s: float(cset[SCALE_FACTOR].evaluate(0.4, 80.0, s)) for s in ("nom", "up", "down")}
    return events, float(np.median(sigma_mc)), sf, target


def _width(x: np.ndarray) -> float:
    lo, hi = np.percentile(x, [16, 84])
    return (hi - lo) / 2


def test_jer_resolution_matches_resolution_times_sf(built_jets, era):
    events, sigma, sf, pt_jec = built_jets
    out = JetCorrector(era).correct_all(events, ["nominal", "JER_up", "JER_down"])
    matched = np.arange(len(events)) % 4 == 0
    far = np.arange(len(events)) % 4 == 2
    hybrid = 80.0 + sf["nom"] * (pt_jec - 80.0)
    pt = _flat(out["nominal"].pt)
    inside = np.abs(pt_jec - 80) < 2.5 * sigma * pt_jec  # well inside the 3 sigma window
    np.testing.assert_allclose(pt[matched & inside], hybrid[matched & inside], rtol=1e-6)
    assert np.mean(np.isclose(pt[far], hybrid[far], rtol=1e-6)) < 0.01  # dR 0.3 > R/2: not used
    widths = {}
    for v in out:
        response = _flat(out[v].pt) / 80.0
        widths[v] = (_width(response[matched]), _width(response[~matched]))
    for v, s in (("nominal", "nom"), ("JER_up", "up"), ("JER_down", "down")):
        expected = sigma * sf[s]
        assert widths[v][0] == pytest.approx(expected, rel=0.03), (v, "hybrid")
        assert widths[v][1] == pytest.approx(expected, rel=0.03), (v, "stochastic")
    for k in (0, 1):  # JER up/down bracket the nominal spread
        assert widths["JER_down"][k] < widths["nominal"][k] < widths["JER_up"][k]
    # smearing keeps the scale: median response stays at 1
    assert np.median(_flat(out["nominal"].pt)) / 80.0 == pytest.approx(1.0, abs=0.003)


# --------------------------------------------------------------------------- event weights
@pytest.fixture(scope="module")
def selected(events, era):
    from crema.selections import hhbbww as sel
    from crema.selections.config import load_selection

    cfg = load_selection("hhbbww_run3")
    threshold = working_point(era.path("btag_file"), cfg.btag.tagger, cfg.btag.working_point)
    return cfg, sel.select_objects(events, cfg, threshold)


def test_weights_positive_finite_and_varied(events, era, selected, caplog):
    cfg, obj = selected
    with caplog.at_level("WARNING"):
        ew = EventWeights(era, cfg.btag)
    assert "no b-tag weight" in caplog.text  # the 2022 era has no b-tag SF file
    assert ew.variations == ["pileupUp", "pileupDown", "muon_idUp", "muon_idDown", "muon_isoUp",
                             "muon_isoDown", "electron_idUp", "electron_idDown"]
    weights = Weights(len(events), storeIndividual=True)
    ew.add(weights, events, obj.leptons, obj.jets)
    assert set(weights.variations) == set(ew.variations)
    nominal = weights.weight()
    assert np.all(np.isfinite(nominal)) and np.all(nominal > 0)
    # the EGM file gives the EB-EE gap (1.444 < |eta| < 1.566) SF 1 +- 1: sfdown is 0 there, and the
    # selection does not veto gap electrons; every other weight is strictly positive
    leps = obj.leptons
    gap = ak.to_numpy(ak.any((abs(leps.pdgId) == 11) & (abs(leps.eta) > 1.444) & (abs(leps.eta) < 1.566), axis=1))
    for v in ew.variations:
        w = weights.weight(v)
        assert np.all(np.isfinite(w)) and np.all(w >= 0), v
        assert np.all(w[~gap] > 0), v
        assert np.any(w != nominal), v  # every variation moves some event
    assert np.all(weights.weight("electron_idDown")[gap] == 0)
    up, down = weights.weight("pileupUp"), weights.weight("pileupDown")
    assert np.any(up > nominal) and np.any(down > nominal)  # pileup shifts the profile, not a scale
    pickle.loads(pickle.dumps(ew))


def test_weights_equal_direct_evaluation(events, era, selected):
    cfg, obj = selected
    factors = EventWeights(era, cfg.btag).factors(events, obj.leptons, obj.jets)
    pu = correctionlib.CorrectionSet.from_file(str(CORRECTIONS_DIR / "puWeights_2018_UL.json.gz"))
    ntrue = ak.to_numpy(events.Pileup.nTrueInt).astype(np.float64)
    np.testing.assert_allclose(factors["pileup"][0], pu["Collisions18_UltraLegacy_goldenJSON"].evaluate(ntrue, "nominal"))
    mu = correctionlib.CorrectionSet.from_file(str(CORRECTIONS_DIR / "muon_Z_2018_UL.json.gz"))["NUM_TightID_DEN_TrackerMuons"]
    leps = obj.leptons
    muons = leps[(abs(leps.pdgId) == 13) & (leps.pt >= 15)]  # inside the SF range: no clipping needed
    only = ak.num(muons, axis=1) == ak.num(leps, axis=1)
    counts = ak.num(muons[only], axis=1)
    sf = mu.evaluate("2018_UL", np.abs(_flat(muons[only].eta)), _flat(muons[only].pt), "systup")
    expected = ak.to_numpy(ak.prod(ak.unflatten(sf, counts), axis=1))
    assert ak.sum(counts) > 20
    np.testing.assert_allclose(factors["muon_id"][1][ak.to_numpy(only)], expected, rtol=1e-9)


def test_lepton_sf_clips_out_of_range_inputs(era):
    leptons = ak.Array([[{"pt": 5.0, "eta": 2.45, "pdgId": 13}, {"pt": 8.0, "eta": -3.0, "pdgId": -11}],
                        [{"pt": 18.0, "eta": 2.3, "pdgId": -13}]])
    events = ak.Array({"genWeight": [1.0, 1.0], "Pileup": [{"nTrueInt": 150.0}, {"nTrueInt": -1.0}]})
    f = EventWeights(era).factors(events, leptons, None)  # no b-tag SF in this era: jets unused
    # the 5 GeV, |eta| 2.45 muon gets the SF of the (15-20 GeV, 2.1-2.4) bin, as the 18 GeV one does
    assert f["muon_id"][0][0] == pytest.approx(f["muon_id"][0][1])
    for name, values in f.items():
        assert all(np.all(np.isfinite(v)) and np.all(v > 0) for v in values), name


def test_data_get_unit_weights(events, era, selected):
    cfg, obj = selected
    data = ak.without_field(events, "genWeight")
    weights = Weights(len(data), storeIndividual=True)
    ew = EventWeights(era, cfg.btag)
    ew.add(weights, data, obj.leptons, obj.jets)
    assert set(weights.variations) == set(ew.variations)
    assert np.all(weights.weight() == 1.0) and np.all(weights.weight("pileupUp") == 1.0)


# --------------------------------------------------------------------------- b-tagging method
TRUE_EFF = {5: 0.7, 4: 0.3, 0: 0.05}
SFS = {"heavy": {"central": 0.95, "up": 1.0, "down": 0.9}, "light": {"central": 1.1, "up": 1.2, "down": 1.0}}


def _sf_correction(name: str, flavours: list[int], values: dict[str, float]) -> cs.Correction:
    """A BTV-like fixed-WP SF: inputs systematic, working_point, flavor, abseta, pt; flat in pt/eta."""
    flat = lambda v: cs.MultiBinning(nodetype="multibinning", inputs=["abseta", "pt"],  # noqa: E731
                                     edges=[[0.0, 2.5], [20.0, 1000.0]], content=[v], flow="error")
    return cs.Correction(
        name=name, version=1,
        inputs=[cs.Variable(name="systematic", type="string"), cs.Variable(name="working_point", type="string"),
                cs.Variable(name="flavor", type="int"), cs.Variable(name="abseta", type="real"),
                cs.Variable(name="pt", type="real")],
        output=cs.Variable(name="sf", type="real"),
        data=cs.Category(nodetype="category", input="systematic", content=[
            cs.CategoryItem(key=s, value=cs.Category(nodetype="category", input="working_point", content=[
                cs.CategoryItem(key="M", value=cs.Category(nodetype="category", input="flavor", content=[
                    cs.CategoryItem(key=f, value=flat(v)) for f in flavours]))]))
            for s, v in values.items()]),
    )


@pytest.fixture(scope="module")
def btag_era(tmp_path_factory, era):
    """The 2022 era plus a test-written b-tag SF file and an efficiency map built from toy jets."""
    tmp = tmp_path_factory.mktemp("btag")
    sf_path = tmp / "btag_sf.json"
    sf_set = cs.CorrectionSet(schema_version=2, corrections=[
        _sf_correction("toy_comb", [4, 5], SFS["heavy"]), _sf_correction("toy_light", [0], SFS["light"])])
    sf_path.write_text(sf_set.model_dump_json(exclude_unset=True))

    rng = np.random.default_rng(3)
    n = 150_000
    flavour = rng.choice([0, 4, 5], n)
    eff = np.vectorize(TRUE_EFF.get)(flavour)
    jets = ak.unflatten(ak.zip({"pt": rng.uniform(25, 400, n), "eta": rng.uniform(-2.4, 2.4, n),
                                "hadronFlavour": flavour, "btagPNetB": np.where(rng.random(n) < eff, 0.9, 0.1)}),
                        np.full(n // 3, 3))
    h = fill_efficiency(efficiency_histogram(), jets, "btagPNetB", threshold=0.5)
    eff_path = write_efficiency_map(h, tmp / "eff.json.gz")

    data = to_dict(era)
    data["btag_sf"] = {"file": str(sf_path), "heavy": "toy_comb", "light": "toy_light", "efficiency_file": str(eff_path)}
    path = tmp / "era.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_era(path), eff_path


def test_efficiency_map_round_trip(btag_era):
    _, eff_path = btag_era
    eff = correctionlib.CorrectionSet.from_file(str(eff_path))["btag_efficiency"]
    for flavour, true in TRUE_EFF.items():
        # bins (|eta|, pt) with ~500-3000 toy jets each; the last point clamps into the empty
        # 600-1000 GeV bin, which falls back to the flavour's inclusive efficiency
        values = eff.evaluate(np.full(4, flavour), np.array([0.2, 1.2, 2.2, 3.0]), np.array([60.0, 120.0, 350.0, 5000.0]))
        np.testing.assert_allclose(values, true, atol=0.07)


def test_btag_weight_fixed_wp_method(btag_era):
    era, eff_path = btag_era
    ew = EventWeights(era)
    assert ew.variations[-4:] == ["btag_bcUp", "btag_bcDown", "btag_lightUp", "btag_lightDown"]
    jets = ak.Array([
        [{"pt": 50.0, "eta": 0.3, "hadronFlavour": 5, "btagPNetB": 0.99}],  # tagged b
        [{"pt": 50.0, "eta": 0.3, "hadronFlavour": 0, "btagPNetB": 0.01}],  # untagged light
        [{"pt": 50.0, "eta": 0.3, "hadronFlavour": 5, "btagPNetB": 0.99},
         {"pt": 80.0, "eta": -1.1, "hadronFlavour": 0, "btagPNetB": 0.01}],
        [],
    ])
    events = ak.Array({"genWeight": np.ones(4), "Pileup": [{"nTrueInt": 30.0}] * 4})
    leptons = ak.Array([[{"pt": 30.0, "eta": 0.1, "pdgId": 13}], [], [], []])
    f = ew.factors(events, leptons, jets)
    e = correctionlib.CorrectionSet.from_file(str(eff_path))["btag_efficiency"]
    e_light_1, e_light_2 = e.evaluate(0, 0.3, 50.0), e.evaluate(0, 1.1, 80.0)
    untagged = lambda sf, eff: (1 - sf * eff) / (1 - eff)  # noqa: E731
    bc, light = f["btag_bc"], f["btag_light"]
    np.testing.assert_allclose(bc[0], [0.95, 1.0, 0.95, 1.0])
    np.testing.assert_allclose(bc[1], [1.0, 1.0, 1.0, 1.0])
    np.testing.assert_allclose(light[0], [1.0, untagged(1.1, e_light_1), untagged(1.1, e_light_2), 1.0])
    np.testing.assert_allclose(light[1][1], untagged(1.2, e_light_1))
    # the product over groups is the one-shot P(data)/P(MC)
    total = fixed_wp_weight(jets.btagPNetB > 0.5, ak.Array([[0.7], [e_light_1], [0.7, e_light_2], []]),
                            ak.Array([[0.95], [1.1], [0.95, 1.1], []]))
    np.testing.assert_allclose(bc[0] * light[0], total, rtol=1e-3)  # 0.7: the toy map's b efficiency


# --------------------------------------------------------------------------- era validation
def _era_with(tmp_path, era, change):
    data = to_dict(era)
    change(data)
    path = tmp_path / "era.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("change, key, listed", [
    (lambda d: d["jets"].update(jec="Nope_L1L2L3Res"), "jets.jec", JEC_MC),
    (lambda d: d["jets"].update(jer_resolution="Nope_PtResolution"), "jets.jer_resolution", RESOLUTION),
    (lambda d: d["jets"].update(uncertainty_sources=["Absolute", "Bogus"]), "jets.uncertainty_sources[1]",
     "Summer22_22Sep2023_V3_MC_Regrouped_Absolute_AK4PFPuppi"),
    (lambda d: d["jets"]["jer_values"].update(up="UP"), "jets.jer_values.up", "up"),
    (lambda d: d["muon"]["corrections"].update(iso="NUM_Iso_DEN_Nothing"), "muon.corrections.iso", "NUM_TightRelIso_DEN_MediumID"),
    (lambda d: d["muon"]["values"].update(up="sfup"), "muon.values.up", "systup"),
    (lambda d: d["muon"].update(year="2022"), "muon.year", "2018_UL"),
    (lambda d: d["electron"].update(working_point="wp85iso"), "electron.working_point", "wp90iso"),
    (lambda d: d["pileup"].update(correction="Collisions22"), "pileup.correction", "Collisions18_UltraLegacy_goldenJSON"),
])
def test_era_validation_names_key_and_lists_contents(tmp_path, era, change, key, listed):
    with pytest.raises(ConfigError) as err:
        load_era(_era_with(tmp_path, era, change))
    message = str(err.value)
    assert key + ":" in message and listed in message


def test_era_validation_missing_file(tmp_path, era):
    path = _era_with(tmp_path, era, lambda d: d["pileup"].update(file="puWeights_2099.json.gz"))
    with pytest.raises(ConfigError, match=r"pileup.file: correction file .*puWeights_2099.json.gz does not exist"):
        load_era(path)


def test_ak8_not_available_is_explained(era):
    assert era.fatjets is None
    with pytest.raises(ConfigError, match="AK8 .*not available.*only has AK4PFPuppi"):
        JetCorrector(era, "fatjets")
    assert isinstance(era, EraConfig)


# --------------------------------------------------------------------------- generated events
def test_generated_jets_close_and_smear_by_sf(tmp_path, era, cset):
    """crema's generator stores Jet_pt = raw x the real compound JEC: our JEC closes exactly, and for
    matched jets in one SF bin the width of pt/pt_gen grows by exactly the SF (hybrid scaling)."""
    generate = pytest.importorskip("crema.generate")
    path = tmp_path / "tt.root"
    generate.write_nanoaod(path, "tt_sl", 1500, seed=11)
    events = _events(path)
    out = JetCorrector(era).correct_all(events, ["nominal", "JER_up"])
    jets = out["nominal"]
    np.testing.assert_allclose(_flat(jets.pt_jec), _flat(jets.pt_orig), rtol=1e-6)
    for v, s in (("nominal", "nom"), ("JER_up", "up")):
        jets = _by_raw(out[v])
        gen = jets.matched_gen
        keep = ~ak.is_none(gen, axis=1)
        jets, gen = jets[keep], gen[keep]
        eta, gpt, pt_jec = _flat(jets.eta), _flat(gen.pt), _flat(jets.pt_jec)
        sigma = cset[RESOLUTION].evaluate(eta, pt_jec, np.repeat(
            ak.to_numpy(events.Rho.fixedGridRhoFastjetAll), ak.to_numpy(ak.num(jets, axis=1))))
        sel = ((np.abs(eta) < 0.261) & (pt_jec > 40) & (pt_jec < 121) & (_flat(jets.delta_r(gen)) < 0.2)
               & (np.abs(pt_jec - gpt) < 3 * sigma * pt_jec))  # one SF bin, inside the hybrid window
        assert sel.sum() > 150
        ratio = _width(_flat(jets.pt)[sel] / gpt[sel]) / _width(pt_jec[sel] / gpt[sel])
        assert ratio == pytest.approx(cset[SCALE_FACTOR].evaluate(0.1, 60.0, s), rel=0.01), v


def test_corrector_validates_an_era_built_in_code(era):
    from dataclasses import replace

    bad = replace(era, jets=replace(era.jets, jer_scale_factor="Summer22_JRV1_MC_SF"))  # no from_dict check
    with pytest.raises(ConfigError, match=r"jets\.jer_scale_factor: no correction 'Summer22_JRV1_MC_SF'.*ScaleFactor_AK4PFPuppi"):
        JetCorrector(bad)
    bad = replace(era, electron=replace(era.electron, working_point="wp99"))
    with pytest.raises(ConfigError, match=r"electron\.working_point: .*wp90iso"):
        EventWeights(bad)


# --------------------------------------------------------------------------- binned tables
def test_bin_finder_is_searchsorted():
    from crema.corrections.files import BinFinder

    rng = np.random.default_rng(5)
    edge_sets = [np.linspace(-5.191, 5.191, 83), np.array([0.0, 1e-9, 1.0, 1000.0]), np.array([-1.0, 1.0])]
    edge_sets += [np.unique(rng.uniform(-10, 10, rng.integers(2, 100))) for _ in range(50)]
    for edges in edge_sets:
        x = np.concatenate([rng.uniform(edges[0], edges[-1], 5000), edges[:-1], np.nextafter(edges[1:], -np.inf),
                            np.nextafter(edges[1:-1], np.inf)])
        x = np.clip(x, edges[0], np.nextafter(edges[-1], -np.inf))
        np.testing.assert_array_equal(BinFinder(edges).bins(x), np.searchsorted(edges, x, side="right") - 1)
    with pytest.raises(ValueError, match="strictly increasing"):
        BinFinder(np.array([0.0, 1.0, 1.0]))


def test_binned_table_gives_correctionlibs_values():
    from crema.corrections import files

    path = CORRECTIONS_DIR / "jetvetomaps_2022_Winter22.json.gz"
    name = "Winter22Run3_RunCD_V1"
    corr = files.correction_set(path)[name]
    rng = np.random.default_rng(7)
    for kind in ("jetvetomap", "jetvetomap_hot", "jetvetomap_eep"):
        table = files.binned_table(path, name, {"type": kind})
        eta_edges, phi_edges = table.edges
        # every bin edge and its neighbours on both axes, values beyond the map, and non-finite positions
        eta = np.concatenate([rng.uniform(-6, 6, 20000), np.repeat(eta_edges, 3), np.nextafter(eta_edges, 9),
                              np.nextafter(eta_edges, -9), [np.nan, np.inf, -np.inf, 0.0, 0.0]])
        phi = np.concatenate([rng.uniform(-3.5, 3.5, 20000),
                              rng.choice(np.concatenate([phi_edges, np.nextafter(phi_edges, 9),
                                                         np.nextafter(phi_edges, -9)]), eta.size - 20005),
                              [0.0, 0.0, 0.0, np.nan, -np.inf]])
        ranges = files.input_ranges(files.summary(path).require(name, "c"), {"type": kind})
        expected = files.evaluate(corr, [kind, eta, phi], [None, ranges["eta"], ranges["phi"]])
        got = table.evaluate({"eta": eta, "phi": phi})
        np.testing.assert_array_equal(got, expected)
        assert np.isnan(got[-5:-2]).all() and np.isnan(got[-2:]).all()
        assert (got[:-5] != 0).any() or kind == "jetvetomap_eep"
    # a branch that is not one binning of numbers is left to correctionlib
    assert files.binned_table(path, name, {}) is None
    assert files.binned_table(JERC, JEC_MC, {}) is None  # compound
    assert files.binned_table(JERC, RESOLUTION, {}) is None  # formulas
