"""The observable language: every function and object on hand-built events, and its errors."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest
from coffea.nanoevents.methods import vector

from crema.observables import COLLECTIONS, FUNCTIONS, Observables, parse
from crema.schema import ConfigError

ak.behavior.update(vector.behavior)


def p4(rows):
    """Jagged PtEtaPhiM candidates from per-event lists of (pt, eta, phi, mass[, pdgId])."""
    fields = {"pt": [], "eta": [], "phi": [], "mass": [], "pdgId": []}
    for event in rows:
        for name, i in (("pt", 0), ("eta", 1), ("phi", 2), ("mass", 3)):
            fields[name].append([o[i] for o in event])
        fields["pdgId"].append([o[4] if len(o) > 4 else 0 for o in event])
    return ak.zip({k: ak.Array(v) for k, v in fields.items()}, with_name="PtEtaPhiMLorentzVector")


@pytest.fixture(scope="module")
def events():
    jets = p4([[(120.0, 0.5, 0.1, 10.0), (80.0, -1.2, 2.9, 8.0), (40.0, 2.0, -2.8, 5.0)],
               [(60.0, 0.0, 1.0, 4.0)],
               []])
    leptons = p4([[(50.0, 0.3, -1.0, 0.105, 13), (30.0, -0.7, 2.0, 0.000511, -11)],
                  [(45.0, 1.1, 0.5, 0.000511, 11)],
                  [(25.0, -2.0, 3.0, 0.105, -13)]])
    fatjets = p4([[(300.0, 0.2, 0.0, 125.0)], [], []])
    met = ak.zip({"pt": [40.0, 70.0, 10.0], "phi": [2.0, -2.5, 0.0]}, with_name="PolarTwoVector")
    collections = {"Jet": jets, "BJet": jets[:, :1], "HbbJet": jets[:, ::-1], "FatJet": fatjets, "Lepton": leptons,
                   "Muon": lambda: leptons[abs(leptons.pdgId) == 13], "Electron": lambda: leptons[abs(leptons.pdgId) == 11],
                   "MET": met}
    outputs = {"HME": {"mass": np.array([800.0, 650.0, 410.0]), "mass_error": np.array([50.0, 60.0, 70.0])}}
    return collections, outputs


def value(events, text):
    collections, outputs = events
    obs = Observables(collections, outputs)
    return obs.evaluate(parse(text, "test", outputs={"HME": ["mass", "mass_error"]}))


def expected(collection, index, what):
    """The same quantity from coffea's vector behaviour (NaN where the object is missing)."""
    out = []
    for event in collection:
        out.append(float(getattr(event[index], what)) if len(event) > index else np.nan)
    return np.array(out)


@pytest.mark.parametrize("name", ["Jet", "BJet", "HbbJet", "FatJet", "Lepton", "Muon", "Electron"])
@pytest.mark.parametrize("func,field", [("Pt", "pt"), ("Eta", "eta"), ("Phi", "phi"), ("M", "mass"), ("E", "energy")])
def test_single_object_functions_on_every_collection(events, name, func, field):
    coll = events[0][name]
    coll = coll() if callable(coll) else coll
    for index in (0, 1):
        got = value(events, f"{func}({name}{index + 1})")
        np.testing.assert_allclose(got, expected(coll, index, field), rtol=1e-12, equal_nan=True)


def test_sums_and_pairs_against_vector_behaviour(events):
    jets, leptons = events[0]["Jet"], events[0]["Lepton"]
    j1j2 = jets[:1, 0] + jets[:1, 1]  # only the first event has two jets
    got = value(events, "M(Jet1+Jet2)")
    assert got[0] == pytest.approx(float(j1j2.mass[0]), rel=1e-12)
    assert np.isnan(got[1:]).all()
    three = jets[0, 0] + jets[0, 1] + leptons[0, 0]
    assert value(events, "Pt(Jet1+Jet2+Lepton1)")[0] == pytest.approx(float(three.pt), rel=1e-12)
    assert value(events, "Eta(Jet1+Jet2+Lepton1)")[0] == pytest.approx(float(three.eta), rel=1e-12)
    assert value(events, "Phi(Jet1+Jet2+Lepton1)")[0] == pytest.approx(float(three.phi), rel=1e-12)
    assert value(events, "E(Jet1+Jet2+Lepton1)")[0] == pytest.approx(float(three.energy), rel=1e-12)
    lj = value(events, "DeltaR(Lepton1,Jet1)")
    np.testing.assert_allclose(lj[:2], [float(leptons[i, 0].delta_r(jets[i, 0])) for i in range(2)], rtol=1e-12)
    assert np.isnan(lj[2])
    # DeltaPhi is wrapped into [-pi, pi): 0.1 - 2.9 + 2 pi... here phi_j1 - phi_j2 = 0.1 - 2.9 = -2.8
    assert value(events, "DeltaPhi(Jet1,Jet2)")[0] == pytest.approx(-2.8)
    assert value(events, "DeltaPhi(Jet2,Jet3)")[0] == pytest.approx(2.9 + 2.8 - 2 * np.pi)
    assert value(events, "DeltaEta(Jet1,Jet2)")[0] == pytest.approx(0.5 + 1.2)


def test_met_and_counts(events):
    np.testing.assert_allclose(value(events, "Pt(MET)"), [40.0, 70.0, 10.0])
    np.testing.assert_allclose(value(events, "Phi(MET)"), [2.0, -2.5, 0.0])
    dphi = value(events, "DeltaPhi(Lepton1,MET)")
    np.testing.assert_allclose(dphi, [-3.0, 3.0, 3.0])  # -1 - 2, 0.5 + 2.5, 3 - 0: all inside [-pi, pi)
    assert value(events, "DeltaPhi(MET,Lepton1)")[1] == pytest.approx(-3.0)
    # transverse sum: |pT(lepton) + pT(MET)|
    lep = events[0]["Lepton"][:, 0]
    px = lep.pt * np.cos(lep.phi) + np.array([40.0, 70.0, 10.0]) * np.cos([2.0, -2.5, 0.0])
    py = lep.pt * np.sin(lep.phi) + np.array([40.0, 70.0, 10.0]) * np.sin([2.0, -2.5, 0.0])
    np.testing.assert_allclose(value(events, "Pt(Lepton1+MET)"), np.hypot(px, py), rtol=1e-12)
    for name, counts in [("Jet", [3, 1, 0]), ("FatJet", [1, 0, 0]), ("Muon", [1, 0, 1]), ("Electron", [1, 1, 0])]:
        np.testing.assert_array_equal(value(events, f"N({name})"), counts)


def test_model_outputs_and_missing_model_is_nan(events):
    np.testing.assert_array_equal(value(events, "HME.mass"), [800.0, 650.0, 410.0])
    obs = Observables(events[0], {})
    assert np.isnan(obs.evaluate(parse("HME.mass", "k", outputs={"HME": ["mass"]}))).all()


def test_matrix_pads_each_collection_once(events):
    obs = Observables(*events)
    X = obs.matrix([parse(t, "k") for t in ("Pt(Jet1)", "Pt(Jet3)", "N(Jet)")])
    assert X.dtype == np.float32 and X.shape == (3, 3)
    np.testing.assert_array_equal(X[:, 1], np.array([40.0, np.nan, np.nan], np.float32))


@pytest.mark.parametrize("text,fragment", [
    ("Mass(Jet1)", "unknown function 'Mass'"),
    ("Pt(Jat1)", "unknown object 'Jat1'"),
    ("Pt(Jet)", "needs an index"),
    ("Pt(Jet0)", "unknown object 'Jet0'"),
    ("DeltaR(Jet1)", "DeltaR takes 2 arguments"),
    ("M(Lepton1+MET)", "M needs a longitudinal component"),
    ("N(Jet1)", "N takes a collection name"),
    ("HME.mas", "model 'HME' has no output 'mas'"),
    ("DNN.score", "unknown model 'DNN'"),
    ("Pt Jet1", "expected Func(Object[,Object])"),
])
def test_unknown_names_fail_naming_the_key(text, fragment):
    with pytest.raises(ConfigError) as err:
        parse(text, "histograms.my_obs.expr", outputs={"HME": ["mass", "mass_error"]})
    message = str(err.value)
    assert message.startswith("histograms.my_obs.expr: ") and fragment in message
    if "unknown object" in fragment:
        assert all(f"{c}1.." in message for c in COLLECTIONS) and "MET" in message
    if "unknown function" in fragment:
        assert all(f in message for f in FUNCTIONS)
