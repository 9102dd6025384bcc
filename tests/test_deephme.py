"""Tests of the DeepHME wrapper (crema.models.deephme).

* parity with DeepHME 1.2.0's own ``predict`` on real NanoAODv12 events;
* one test per 1.2.0 bug showing crema does not have it;
* runtime properties (pickling, dask, batching);
* physics on crema-generated X(800)->HH->bbWW events (needs crema.generate).
"""

from __future__ import annotations

import pickle
import shutil
import warnings
from pathlib import Path

import awkward as ak
import numpy as np
import pytest

from crema.models import deephme as dh
from crema.models.deephme import DEFAULT_MODELS, DeepHME, cvnotb_from_v12, predict, propagate_mass_error

DATA = Path(__file__).parent / "data" / "nano_tt_v12.root"
KIN = ["pt", "eta", "phi", "mass"]
JET_IN = KIN + ["btagPNetB", "btagPNetCvB", "btagPNetCvL", "btagPNetQvG", "btagPNetTauVJet", "PNetRegPtRawCorr", "PNetRegPtRawCorrNeutrino", "PNetRegPtRawRes"]
FATJET_IN = KIN + list(dh.FATJET_FIELDS)
NLEP = {"DL": 2, "SL": 1}

pytestmark = pytest.mark.filterwarnings("ignore:jets have no btagPNetCvNotB")


# ---------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------
def read_events(path):
    from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return NanoEventsFactory.from_root({str(path): "Events"}, schemaclass=NanoAODSchema, mode="eager").events()


def select(events):
    """Simple inline object selection -> (event_id, leptons, jets, fatjets, met) as plain records."""
    mu = events.Muon[(events.Muon.pt > 5) & (abs(events.Muon.eta) < 2.4) & events.Muon.looseId]
    el = events.Electron[(events.Electron.pt > 5) & (abs(events.Electron.eta) < 2.5) & (events.Electron.cutBased >= 1)]
    leptons = ak.concatenate([ak.zip({k: mu[k] for k in KIN}), ak.zip({k: el[k] for k in KIN})], axis=1)
    leptons = leptons[ak.argsort(leptons.pt, axis=1, ascending=False)]
    jets = events.Jet[(events.Jet.pt > 20) & (abs(events.Jet.eta) < 2.5) & (events.Jet.jetId >= 2)]
    fatjets = events.FatJet[events.FatJet.pt > 200]
    return {
        "event_id": events.event,
        "leptons": leptons,
        "jets": ak.zip({k: jets[k] for k in JET_IN}),
        "fatjets": ak.zip({k: fatjets[k] for k in FATJET_IN}),
        "met": ak.zip({k: events.PuppiMET[k] for k in ("pt", "phi")}),
    }


def take(objs, mask):
    return {k: v[mask] for k, v in objs.items()}


def call(hme, objs):
    return hme(objs["event_id"], objs["leptons"], objs["jets"], objs["fatjets"], objs["met"])


def with_cvnotb(objs):
    """Jets with an explicit btagPNetCvNotB (the documented v12 substitute), as fed to DeepHME 1.2.0."""
    jets = objs["jets"]
    jets = ak.with_field(jets, cvnotb_from_v12(jets.btagPNetB, jets.btagPNetCvL, jets.btagPNetTauVJet), "btagPNetCvNotB")
    return {**objs, "jets": jets}


def predict_kwargs(objs, channel):
    """DeepHME.predict keyword arguments: jets sorted by btagPNetB, fat jets by pt (1.2.0 does not sort)."""
    jets = objs["jets"][ak.argsort(objs["jets"].btagPNetB, axis=1, ascending=False)]
    fatjets = objs["fatjets"][ak.argsort(objs["fatjets"].pt, axis=1, ascending=False)]
    lep = objs["leptons"]
    kw = {"event_id": objs["event_id"], "met_pt": objs["met"].pt, "met_phi": objs["met"].phi}
    for i in range(1, 3):
        j = min(i, NLEP[channel]) - 1  # SL: 1.2.0 validates lep2 although unused -> pass lep1 again
        kw.update({f"lep{i}_{k}": lep[k][:, j] for k in KIN})
    kw.update({f"jet_{k}": jets[k] for k in KIN + list(dh.JET_FIELDS)})
    kw.update({f"fatjet_{k}": fatjets[k] for k in FATJET_IN})
    return kw


def crema_kwargs(kw, channel):
    return {k: v for k, v in kw.items() if channel == "DL" or not k.startswith("lep2_")}


@pytest.fixture(scope="module")
def real():
    return select(read_events(DATA))


@pytest.fixture(scope="module")
def chunks(real):
    """Per channel: the events with enough leptons (with the CvNotB substitute attached)."""
    out = {}
    for ch, n in NLEP.items():
        objs = with_cvnotb(take(real, ak.num(real["leptons"]) >= n))
        # 1.2.0 pads to the chunk maximum: it needs >= 10 jets and >= 3 fat jets somewhere
        assert ak.max(ak.num(objs["jets"])) >= 10 and ak.max(ak.num(objs["fatjets"])) >= 3
        out[ch] = objs
    return out


@pytest.fixture(scope="module")
def hme():
    return {ch: DeepHME(ch) for ch in NLEP}


def fields_np(arr, prefix=""):
    return {prefix + f: ak.to_numpy(arr[f]) for f in ("mass", "mass_error")} | {
        f"{prefix}{h}_{c}": ak.to_numpy(arr[h][c]) for h in ("hvv", "hbb", "hvv_error", "hbb_error") for c in ("px", "py", "pz", "E")
    }


def assert_same(a, b):
    fa, fb = fields_np(a), fields_np(b)
    for k in fa:
        np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


# ---------------------------------------------------------------------------
# parity with DeepHME 1.2.0
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("channel", ["DL", "SL"])
def test_parity_with_deephme_1_2_0(chunks, channel):
    pd = pytest.importorskip("pandas")
    if int(pd.__version__.split(".")[0]) >= 3:
        pytest.skip("DeepHME 1.2.0 predict needs pandas < 3")
    from DeepHME import DeepHME as DeepHME120

    objs = chunks[channel]
    kw = predict_kwargs(objs, channel)
    name = DEFAULT_MODELS[channel]
    # a fresh 1.2.0 object per call (its second call raises)
    ref_p4 = DeepHME120(model_name=name, channel=channel).predict(**kw, output_format="p4")
    ref_mass = DeepHME120(model_name=name, channel=channel).predict(**kw, output_format="mass")

    ckw = crema_kwargs(kw, channel)
    p4 = predict(**ckw, output_format="p4", channel=channel, reference=True)
    mass = predict(**ckw, channel=channel, reference=True)
    assert p4.shape == ref_p4.shape == (len(objs["event_id"]), 8)
    # 1e-4 relative, per component; components near zero are compared relative to their Higgs' energy
    scale = np.maximum(np.abs(ref_p4), np.repeat(ref_p4[:, [3, 7]], 4, axis=1))
    assert np.all(np.abs(p4 - ref_p4) <= 1e-4 * scale)
    # 1.2.0 truncates masses to integers
    assert ref_mass.dtype.kind == "i"
    assert np.all(np.abs(mass - ref_mass) < 1.0)
    assert np.all((mass - ref_mass >= -1e-3) & (mass - ref_mass < 1.0))

    # the wrapper (unsorted jets and fat jets, sorted internally) agrees with predict
    out = call(DeepHME(channel, standardisation="reference"), objs)
    np.testing.assert_allclose(ak.to_numpy(out.mass), mass, rtol=1e-9)
    np.testing.assert_allclose(ak.to_numpy(out.hbb.px), p4[:, 4], rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------------------
# the 1.2.0 bugs, one by one
# ---------------------------------------------------------------------------
def test_second_call_works(chunks, hme):
    objs = chunks["DL"]
    assert_same(call(hme["DL"], objs), call(hme["DL"], objs))
    kw = crema_kwargs(predict_kwargs(objs, "DL"), "DL")
    first = predict(**kw, output_format="p4", return_errors=True)
    for _ in range(2):
        again = predict(**kw, output_format="p4", return_errors=True)
        np.testing.assert_array_equal(first[0], again[0])
        np.testing.assert_array_equal(first[1], again[1])


@pytest.mark.parametrize("channel", ["DL", "SL"])
def test_small_chunk_with_few_jets(chunks, hme, channel):
    objs = chunks[channel]
    few = ak.to_numpy((ak.num(objs["jets"]) < 6) & (ak.num(objs["fatjets"]) < 2))
    idx = np.flatnonzero(few)[:5]
    assert len(idx) >= 2
    small = take(objs, idx)
    assert ak.max(ak.num(small["jets"])) < 10 and ak.max(ak.num(small["fatjets"])) < 3
    out_small = call(hme[channel], small)
    out_full = call(hme[channel], objs)[idx]
    assert_same(out_small, out_full)  # bit-identical, whatever the chunking
    m = predict(**crema_kwargs(predict_kwargs(small, channel), channel), channel=channel)
    np.testing.assert_array_equal(m, ak.to_numpy(out_small.mass))


def test_masses_are_float_not_truncated(chunks, hme):
    out = call(hme["DL"], chunks["DL"])
    assert out.mass.type.content.primitive == "float64"
    assert out.mass_error.type.content.primitive == "float64"
    mass = ak.to_numpy(out.mass)
    assert np.any(np.abs(mass - np.round(mass)) > 1e-3)
    m, err = predict(**crema_kwargs(predict_kwargs(chunks["DL"], "DL"), "DL"), return_errors=True)
    assert m.dtype == np.float64 and err.dtype == np.float64


@pytest.mark.parametrize("channel", ["DL", "SL"])
def test_p4_with_errors(chunks, channel):
    kw = crema_kwargs(predict_kwargs(chunks[channel], channel), channel)
    p4, err = predict(**kw, output_format="p4", return_errors=True, channel=channel)
    n = len(chunks[channel]["event_id"])
    assert p4.shape == err.shape == (n, 8)
    assert np.all(np.isfinite(err)) and np.all(err > 0)
    # energy error propagated from the momentum errors: E = sqrt(mH^2 + p^2) => sigma_E <= sum |p_i|/E sigma_i
    for h in (0, 4):
        bound = np.sum(np.abs(p4[:, h : h + 3]) / p4[:, [h + 3]] * err[:, h : h + 3], axis=1)
        assert np.all(err[:, h + 3] <= bound * (1 + 1e-9))


def test_readonly_inputs(chunks):
    """pandas>=3 made 1.2.0 write into read-only arrays; crema never writes into its inputs."""
    kw = crema_kwargs(predict_kwargs(chunks["DL"], "DL"), "DL")
    ro = {}
    for k, v in kw.items():
        if isinstance(v, ak.Array) and v.ndim == 1:
            v = ak.to_numpy(v).copy()
            v.flags.writeable = False
        ro[k] = v
    np.testing.assert_array_equal(predict(**ro), predict(**kw))


def test_fold_consistent_standardisation(chunks):
    """Each network has its own training's target statistics embedded in its energy layer
    (E = sqrt(mH^2 + p^2) in physical units). De-standardising with the same statistics gives
    on-shell Higgs bosons; 1.2.0's mixed statistics do not."""
    objs = chunks["DL"]
    odd = ak.to_numpy(objs["event_id"] % 2 == 1)

    def offshell(out):
        dev = {}
        for h in ("hvv", "hbb"):
            p2 = sum(ak.to_numpy(out[h][c]) ** 2 for c in ("px", "py", "pz"))
            e = ak.to_numpy(out[h].E)
            dev[h] = np.abs(e - np.sqrt(dh.HIGGS_MASS**2 + p2)) / e
        return np.maximum(dev["hvv"], dev["hbb"])

    fold = offshell(call(DeepHME("DL", standardisation="fold"), objs))
    ref = offshell(call(DeepHME("DL", standardisation="reference"), objs))
    assert fold.max() < 1e-5
    assert np.median(ref[odd]) > 1e-3 and np.median(ref[~odd]) > 1e-3


def test_fold_routing(chunks):
    """As in 1.2.0: the network trained on even events evaluates odd events and vice versa."""
    objs = chunks["DL"]
    hme = DeepHME("DL")
    calls = []
    run = hme.run

    def spy(x, model=None, output_names=None):
        calls.append((model, len(x)))
        return run(x, model=model, output_names=output_names)

    hme.run = spy
    call(hme, objs)
    n_odd = int(ak.sum(objs["event_id"] % 2 == 1))
    assert sorted(calls) == sorted([("even", n_odd), ("odd", len(objs["event_id"]) - n_odd)])


def test_mass_error_propagation_pairs_halves_consistently():
    rng = np.random.default_rng(3)
    n = 200
    hvv, hbb = rng.normal(0, 300, (n, 3)), rng.normal(0, 300, (n, 3))
    widths = rng.uniform(5, 80, (n, 6))
    a = rng.uniform(-0.3, 0.3, (6, 6))
    corr = np.eye(6) + (a + a.T) / 2 * (1 - np.eye(6)) * 0.5
    got = propagate_mass_error(hvv, hbb, widths, corr)

    def mass(p):
        e1 = np.sqrt(dh.HIGGS_MASS**2 + np.sum(p[:, :3] ** 2, axis=1))
        e2 = np.sqrt(dh.HIGGS_MASS**2 + np.sum(p[:, 3:] ** 2, axis=1))
        return np.sqrt((e1 + e2) ** 2 - np.sum((p[:, :3] + p[:, 3:]) ** 2, axis=1))

    p = np.concatenate([hvv, hbb], axis=1)
    jac = np.stack([(mass(p + h) - mass(p - h)) / 2e-3 for h in np.eye(6) * 1e-3], axis=1)
    cov = widths[:, :, None] * corr[None] * widths[:, None, :]
    expected = np.sqrt(np.einsum("ni,nij,nj->n", jac, cov, jac))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # 1.2.0 paired the H->bb half of the Jacobian with the H->VV errors: a different answer
    swapped = np.sqrt(np.einsum("ni,nij,nj->n", np.concatenate([jac[:, 3:], jac[:, :3]], axis=1), cov, np.concatenate([jac[:, 3:], jac[:, :3]], axis=1)))
    assert np.median(np.abs(swapped / expected - 1)) > 0.05


def test_zero_length_chunk(chunks, hme):
    for ch in NLEP:
        out = call(hme[ch], take(chunks[ch], slice(0, 0)))
        assert len(out) == 0
        assert set(out.fields) == {"mass", "mass_error", "hvv", "hbb", "hvv_error", "hbb_error"}
        assert out.mass.type.content.primitive == "float64"
    kw = crema_kwargs(predict_kwargs(take(chunks["DL"], slice(0, 0)), "DL"), "DL")
    assert predict(**kw).shape == (0,)
    p4, err = predict(**kw, output_format="p4", return_errors=True)
    assert p4.shape == err.shape == (0, 8)


def test_nan_and_inf_inputs(chunks, hme):
    objs = chunks["DL"]
    clean = fields_np(call(hme["DL"], objs))
    jets = objs["jets"]
    counts = ak.to_numpy(ak.num(jets))
    pt = ak.to_numpy(ak.flatten(jets.pt)).copy()
    bad_jet = 3  # first jet of event 3 gets pt = NaN
    pt[np.cumsum(counts)[bad_jet - 1]] = np.nan
    met_pt = ak.to_numpy(objs["met"].pt).copy()
    bad_met = 7
    met_pt[bad_met] = np.inf
    dirty = dict(objs)
    dirty["jets"] = ak.with_field(jets, ak.unflatten(pt, counts), "pt")
    dirty["met"] = ak.with_field(objs["met"], met_pt, "pt")
    out = fields_np(call(hme["DL"], dirty))
    bad = np.zeros(len(counts), bool)
    bad[[bad_jet, bad_met]] = True
    for k, v in out.items():
        assert np.all(np.isnan(v[bad])), k
        np.testing.assert_array_equal(v[~bad], clean[k][~bad], err_msg=k)


def test_missing_leptons_give_nan(real, hme):
    objs = with_cvnotb(real)
    out = call(hme["DL"], objs)
    n = ak.to_numpy(ak.num(objs["leptons"]))
    mass = ak.to_numpy(out.mass)
    assert len(mass) == len(n)
    assert np.all(np.isnan(mass[n < 2])) and np.all(np.isfinite(mass[n >= 2]))
    m = predict(**crema_kwargs(predict_kwargs(take(objs, n >= 1), "SL"), "SL"), channel="SL")
    assert np.all(np.isfinite(m))


# ---------------------------------------------------------------------------
# configuration errors and the CvNotB substitute
# ---------------------------------------------------------------------------
def test_unknown_model_lists_available():
    with pytest.raises(ValueError, match="available models: .*predict_quantiles3D_DL_v8"):
        DeepHME("DL", model_name="predict_quantiles3D_DL_v99")
    with pytest.raises(ValueError, match="not a SL model"):
        DeepHME("SL", model_name="predict_quantiles3D_DL_v8")
    with pytest.raises(ValueError, match="channel"):
        DeepHME("XL")
    with pytest.raises(ValueError, match="standardisation"):
        DeepHME("DL", standardisation="mixed")


def test_missing_model_file_fails_at_construction(tmp_path, monkeypatch):
    name = DEFAULT_MODELS["DL"]
    (tmp_path / name).mkdir()
    for f in (dh.models_dir() / name).glob("*.yaml"):
        shutil.copy(f, tmp_path / name)
    monkeypatch.setattr(dh, "models_dir", lambda: tmp_path)
    with pytest.raises(FileNotFoundError, match=f"{name}_even.onnx"):
        DeepHME("DL")


def test_cvnotb_substitute_exact_without_lepton_classes():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(5), size=1000)  # b, c, uds, g, tau (electron/muon classes zero)
    b, c, uds, g, tau = probs.T
    j = b + c + uds + g
    B, CvL, TauVJet = b / j, c / (c + uds + g), tau / (j + tau)
    np.testing.assert_allclose(cvnotb_from_v12(B, CvL, TauVJet), c / (1 - b), rtol=1e-10)
    np.testing.assert_allclose(cvnotb_from_v12(B, CvL), CvL)  # no tau information: CvNotB ~ CvL
    assert cvnotb_from_v12(np.array([-1.0]), np.array([0.3]))[0] == -1.0  # NanoAOD sentinel kept
    # works on awkward arrays too
    jag = ak.unflatten(B[:10], [3, 0, 7])
    assert ak.all(cvnotb_from_v12(jag, ak.unflatten(CvL[:10], [3, 0, 7])) == ak.unflatten(CvL[:10], [3, 0, 7]))


def test_explicit_cvnotb_used_and_missing_field_warns(chunks, hme):
    objs = chunks["DL"]
    with_field = call(hme["DL"], objs)
    plain = dict(objs)
    plain["jets"] = objs["jets"][[f for f in objs["jets"].fields if f != "btagPNetCvNotB"]]
    with pytest.warns(UserWarning, match="btagPNetCvNotB"):
        fallback = call(hme["DL"], plain)
    # same substitute, computed in float64 instead of float32: equal to float precision
    np.testing.assert_allclose(ak.to_numpy(fallback.mass), ak.to_numpy(with_field.mass), rtol=1e-5)


# ---------------------------------------------------------------------------
# runtime properties
# ---------------------------------------------------------------------------
def test_pickle_after_run(chunks):
    objs = chunks["SL"]
    hme = DeepHME("SL")
    first = call(hme, objs)
    blob = pickle.dumps(hme)
    assert b"InferenceSession" not in blob and len(blob) < 200_000
    clone = pickle.loads(blob)
    assert clone._sessions is None
    assert_same(call(clone, objs), first)


def test_batching_identical(chunks):
    objs = chunks["SL"]
    assert_same(call(DeepHME("SL", batch_size=48), objs), call(DeepHME("SL", batch_size=None), objs))


def test_nanoevents_collections_virtual_and_eager(hme):
    """NanoEvents collections can be passed as they are, in virtual (lazy) and eager mode."""
    from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

    masses = {}
    for mode in ("virtual", "eager"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ev = NanoEventsFactory.from_root({str(DATA): "Events"}, schemaclass=NanoAODSchema, mode=mode).events()
        muons = ev.Muon[(ev.Muon.pt > 5) & ev.Muon.looseId]
        jets = ev.Jet[(ev.Jet.pt > 20) & (abs(ev.Jet.eta) < 2.5) & (ev.Jet.jetId >= 2)]
        out = hme["SL"](ev.event, muons, jets, ev.FatJet[ev.FatJet.pt > 200], ev.PuppiMET)
        masses[mode] = ak.to_numpy(out.mass)
    assert len(masses["virtual"]) == 200 and np.isfinite(masses["virtual"]).sum() > 50
    np.testing.assert_array_equal(masses["virtual"], masses["eager"])


def test_dask_awkward_matches_eager(chunks, hme):
    dak = pytest.importorskip("dask_awkward", reason="dask_awkward not installed: its release needs an older dask "
                                                     "than coffea's executor (docs/troubleshooting.md)")
    import dask

    objs = chunks["SL"]
    eager = call(hme["SL"], objs)
    lazy = call(hme["SL"], {k: dak.from_awkward(v, npartitions=3) for k, v in objs.items()})
    assert isinstance(lazy, dak.Array)
    with dask.config.set({"awkward.optimization.enabled": False}):
        assert_same(lazy.compute(), eager)


# ---------------------------------------------------------------------------
# physics on generated X(800) -> HH -> bbWW
# ---------------------------------------------------------------------------
X_MASS = 800.0


def p4_sum(*parts):
    return {c: sum(p[c] for p in parts) for c in ("px", "py", "pz", "E")}


def to_cartesian(rec):
    pt, eta, phi, m = (np.asarray(ak.to_numpy(ak.fill_none(rec[k], 0.0)), dtype=np.float64) for k in KIN)
    pz = pt * np.sinh(eta)
    return {"px": pt * np.cos(phi), "py": pt * np.sin(phi), "pz": pz, "E": np.sqrt(pt**2 + pz**2 + m**2)}


def inv_mass(p):
    return np.sqrt(np.maximum(p["E"] ** 2 - p["px"] ** 2 - p["py"] ** 2 - p["pz"] ** 2, 0.0))


def p3_distance(a, b):
    return np.sqrt(sum((a[c] - b[c]) ** 2 for c in ("px", "py", "pz")))


def peak(values, lo=400.0, hi=1400.0, bandwidth=20.0):
    """Mode of a Gaussian kernel density estimate (1 GeV grid)."""
    grid = np.arange(lo, hi, 1.0)
    density = np.exp(-0.5 * ((grid[:, None] - values[None, :]) / bandwidth) ** 2).sum(axis=1)
    return float(grid[np.argmax(density)])


def rel_width(values):
    q16, q50, q84 = np.percentile(values, [16, 50, 84])
    return (q84 - q16) / (2 * q50)


def physics_metrics(path, channel, standardisation="fold", per_event=False):
    """HME vs visible objects on a generated sample; used by the test and for docs/deephme.md.

    Objects and events are selected with the analysis selection (crema.selections,
    config ``hhbbww_run3``: isolated leptons, lepton-cleaned jets, channel cuts).
    """
    from crema.selections.config import load_selection
    from crema.selections.hhbbww import channel_selection, select_objects

    cfg = load_selection("hhbbww_run3")
    events = read_events(path)
    sel_objs = select_objects(events, cfg, btag_threshold=0.245, met="PuppiMET")
    cuts, names = channel_selection(sel_objs, channel.lower(), cfg.channels[channel.lower()])
    keep = cuts.all(*names) & ak.to_numpy(ak.num(sel_objs.jets) >= 2)
    sel_objs, events = sel_objs[keep], events[keep]
    objs = {"event_id": events.event, "leptons": sel_objs.leptons, "jets": sel_objs.jets, "fatjets": sel_objs.fatjets, "met": sel_objs.met}
    out = call(DeepHME(channel, standardisation=standardisation), objs)

    # generated Higgs bosons: the H whose daughters are b quarks is H->bb
    gen = events.GenPart
    mother = gen.genPartIdxMother
    mother_pdg = gen.pdgId[ak.where(mother >= 0, mother, 0)]
    b_from_h = (abs(gen.pdgId) == 5) & (mother >= 0) & (mother_pdg == 25)
    hbb_index = ak.firsts(mother[b_from_h])
    is_h = (gen.pdgId == 25) & gen.hasFlags(["isLastCopy"])
    local = ak.local_index(gen.pdgId)
    gen_hbb = ak.firsts(gen[is_h & (local == hbb_index)])
    gen_hvv = ak.firsts(gen[is_h & (local != hbb_index)])
    truth = {"hbb": to_cartesian(gen_hbb), "hvv": to_cartesian(gen_hvv)}

    # visible proxies: two highest-btag jets for H->bb; leptons (+ next two jets in SL) + MET for H->VV
    jets = objs["jets"][ak.argsort(objs["jets"].btagPNetB, axis=1, ascending=False)]
    jets = ak.pad_none(jets, 4, clip=True)
    leps = ak.pad_none(objs["leptons"], NLEP[channel], clip=True)
    b1, b2 = to_cartesian(jets[:, 0]), to_cartesian(jets[:, 1])
    lep = [to_cartesian(leps[:, i]) for i in range(NLEP[channel])]
    extra = [to_cartesian(jets[:, 2]), to_cartesian(jets[:, 3])] if channel == "SL" else []
    met = objs["met"]
    met_pt, met_phi = ak.to_numpy(met.pt).astype(np.float64), ak.to_numpy(met.phi).astype(np.float64)
    nu = {"px": met_pt * np.cos(met_phi), "py": met_pt * np.sin(met_phi), "pz": 0.0 * met_pt, "E": met_pt}
    vis = {"hbb": p4_sum(b1, b2), "hvv": p4_sum(*lep, *extra, nu)}
    visible_mass = inv_mass(p4_sum(b1, b2, *lep, *extra))

    hme_mass = ak.to_numpy(out.mass)
    ok = np.isfinite(hme_mass)
    pred = {h: {c: ak.to_numpy(out[h][c]) for c in ("px", "py", "pz", "E")} for h in ("hbb", "hvv")}
    metrics = {
        "n": int(ok.sum()),
        "hme_peak": peak(hme_mass[ok]),
        "hme_median": float(np.median(hme_mass[ok])),
        "hme_rel_width": rel_width(hme_mass[ok]),
        "vis_rel_width": rel_width(visible_mass[ok]),
        "vis_median": float(np.median(visible_mass[ok])),
    }
    # per-event resolution against the generated m(HH)
    ratio = hme_mass[ok] / inv_mass(p4_sum(truth["hbb"], truth["hvv"]))[ok] - 1.0
    q16, q50, q84 = np.percentile(ratio, [16, 50, 84])
    metrics |= {"hme_vs_gen_bias": float(q50), "hme_vs_gen_res": float((q84 - q16) / 2)}
    for h in ("hbb", "hvv"):
        metrics[f"{h}_dist_hme"] = float(np.median(p3_distance(pred[h], truth[h])[ok]))
        metrics[f"{h}_dist_vis"] = float(np.median(p3_distance(vis[h], truth[h])[ok]))
    if per_event:  # for paired comparisons (docs/deephme.md)
        metrics["per_event"] = {"ratio": ratio, **{f"{h}_dist": p3_distance(pred[h], truth[h])[ok] for h in ("hbb", "hvv")}}
    return metrics


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    gen = pytest.importorskip("crema.generate", reason="crema.generate (event generator) not available yet")
    if not hasattr(gen, "write_nanoaod"):
        pytest.skip("crema.generate.write_nanoaod not available yet")
    out = {}
    for ch, process in (("DL", "hh_dl"), ("SL", "hh_sl")):
        path = tmp_path_factory.mktemp("gen") / f"{process}.root"
        gen.write_nanoaod(str(path), process, 4000, seed=0, mass=X_MASS)
        out[ch] = path
    return out


@pytest.mark.parametrize("channel", ["DL", "SL"])
def test_physics_on_generated_hh(generated, channel):
    m = physics_metrics(generated[channel], channel)
    assert m["n"] > 300
    assert abs(m["hme_peak"] - X_MASS) < 0.05 * X_MASS, m
    assert m["hme_rel_width"] < m["vis_rel_width"], m
    assert m["hbb_dist_hme"] < m["hbb_dist_vis"], m
    assert m["hvv_dist_hme"] < m["hvv_dist_vis"], m
