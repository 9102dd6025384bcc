"""SPANet beyond the wrapper: chi-square baseline, purity, the ttH processor, the CLI, the shipped models."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from crema.models.chi2 import Chi2Masses, chi2_tth
from crema.models.spanet import assignment_purity, builtin_event_file, shipped_model

TTH = builtin_event_file("tth_sl")


# -- chi-square baseline -------------------------------------------------------------
def _two_body(m, p, rng):
    """Two massless daughters of a particle of mass m and momentum p (3-vector), as (pt, eta, phi) pairs."""
    e = np.sqrt(m**2 + p @ p)
    beta = p / e
    d = rng.normal(size=3)
    d /= np.linalg.norm(d)
    out = []
    for sign in (1, -1):
        k = sign * d * m / 2  # rest frame, massless
        g = 1 / np.sqrt(1 - beta @ beta)
        bp = beta @ k
        kp = k + ((g - 1) * bp / (beta @ beta) + g * m / 2) * beta
        pt = np.hypot(kp[0], kp[1])
        out.append((pt, np.arcsinh(kp[2] / pt), np.arctan2(kp[1], kp[0]), kp))
    return out


def test_chi2_finds_the_exact_topology_among_shuffled_jets():
    rng = np.random.default_rng(4)
    B, J = 40, 8
    pt, eta, phi, btag = (np.zeros((B, J)) for _ in range(4))
    truth = {"h": np.zeros((B, 2), int), "ht": np.zeros((B, 3), int), "lt": np.zeros((B, 1), int)}
    for i in range(B):
        h = _two_body(125.0, rng.normal(0, 80, 3), rng)
        w = _two_body(80.4, rng.normal(0, 60, 3), rng)
        # the top's b: a massless jet making m(b, W) = 172.5 exactly, along a random direction
        wp4 = np.concatenate([w[0][3] + w[1][3], [np.linalg.norm(w[0][3]) + np.linalg.norm(w[1][3])]])
        n = rng.normal(size=3)
        n /= np.linalg.norm(n)
        eb = (172.5**2 - 80.4**2) / (2 * (wp4[3] - n @ wp4[:3]))
        b = eb * n
        jets = [h[0], h[1], (np.hypot(*b[:2]), np.arcsinh(b[2] / np.hypot(*b[:2])), np.arctan2(b[1], b[0]), b), w[0], w[1]]
        jets.append((60.0, 0.5, 1.0, None))  # the leptonic b: any jet
        jets += [(30.0 + 5 * k, rng.uniform(-2, 2), rng.uniform(-3, 3), None) for k in range(J - 6)]
        scores = [0.9, 0.8, 0.95, 0.1, 0.2, 0.85] + [0.05] * (J - 6)
        order = rng.permutation(J)
        for slot, src in enumerate(order):
            pt[i, slot], eta[i, slot], phi[i, slot] = jets[src][:3]
            btag[i, slot] = scores[src]
        where = np.argsort(order)  # source jet -> slot
        truth["h"][i] = sorted(where[[0, 1]])
        truth["ht"][i] = [where[2], *sorted(where[[3, 4]])]
        truth["lt"][i] = where[5]
    mask = np.ones((B, J), bool)
    got = chi2_tth(pt, eta, phi, np.zeros((B, J)), btag, mask, Chi2Masses(), block=7)
    for p in ("h", "ht", "lt"):
        np.testing.assert_array_equal(got[p], truth[p], err_msg=p)
    assert np.all(got["chi2"] < 1e-6)
    # fewer than six jets: nothing assigned
    few = chi2_tth(pt, eta, phi, np.zeros((B, J)), btag, mask & (np.arange(J) < 5))
    assert (few["h"] == -1).all() and np.isinf(few["chi2"]).all()
    empty = chi2_tth(pt[:0], eta[:0], phi[:0], pt[:0], btag[:0], mask[:0])
    assert empty["ht"].shape == (0, 3)


def test_purity_counts_symmetric_products_in_any_order_and_skips_unmatched():
    targets = {"h": np.array([[1, 2], [0, 3], [-1, 4]]), "ht": np.array([[0, 4, 5], [1, 2, 4], [0, 1, 2]]),
               "lt": np.array([[3], [5], [3]])}
    predicted = {"h": np.array([[2, 1], [0, 3], [4, 5]]), "ht": np.array([[0, 5, 4], [1, 4, 2], [0, 2, 1]]),
                 "lt": np.array([[3], [0], [3]])}
    p = assignment_purity(predicted, targets, TTH)
    assert p["particles"] == {"lt": pytest.approx(2 / 3), "ht": 1.0, "h": 1.0}
    assert p["counts"] == {"lt": 3, "ht": 3, "h": 2, "event": 2}
    assert p["event"] == 0.5  # event 2 (h unmatched) is not counted; event 1 has lt wrong


# -- shipped models -------------------------------------------------------------------
@pytest.mark.parametrize("name", ["tth_sl", "hh_sl"])
def test_shipped_models_honour_the_contract(name):
    import onnx

    from crema.models.spanet import SPANet

    path = shipped_model(name)
    assert path.stat().st_size < 5e6
    model = SPANet(path, name)
    graph = onnx.load(str(path)).graph
    event = builtin_event_file(name)
    assert [i.name for i in graph.input] == [f"{s.name}_{k}" for s in event.inputs for k in ("data", "mask")]
    assert {o.name for o in graph.output} == {f"{p.name}_{k}_probability" for p in event.particles
                                              for k in ("assignment", "detection")} | set(event.regression_names) | set(event.classification_names)
    rng = np.random.default_rng(0)
    J = model.max_jets
    n_jets = rng.integers(0, J + 1, 50)
    jets = {"pt": rng.uniform(25, 300, (50, J)), "eta": rng.uniform(-2.4, 2.4, (50, J)), "phi": rng.uniform(-3, 3, (50, J)),
            "mass": rng.uniform(3, 30, (50, J)), "btagPNetB": rng.uniform(0, 1, (50, J)), "btagPNetQvG": rng.uniform(0, 1, (50, J))}
    feeds = model.inputs(jets, n_jets, {"pt": rng.uniform(0, 200, 50), "phi": rng.uniform(-3, 3, 50)})
    raw = model.run(feeds)
    mask = feeds["Momenta_mask"]
    for p in event.particles:
        prob = raw[f"{p.name}_assignment_probability"]
        assert prob.shape == (50,) + (J,) * len(p.products)
        for g in p.groups:  # symmetric under the permutation group
            np.testing.assert_allclose(prob, np.swapaxes(prob, g[0] + 1, g[1] + 1), atol=1e-5)  # float32 rounding
        for a, b in itertools.combinations(range(len(p.products)), 2):
            assert (np.diagonal(prob, axis1=a + 1, axis2=b + 1) == 0).all()  # repeated jets
        k = len(p.products)
        padded = np.zeros((50,) + (J,) * k, bool)
        for a in range(k):
            shape = [50] + [1] * k
            shape[a + 1] = J
            padded = padded | (~mask).reshape(shape)
        assert (prob[padded] == 0).all()  # padded slots
        enough = n_jets >= len(p.products)
        np.testing.assert_allclose(prob.reshape(50, -1).sum(1)[enough], 1.0, atol=1e-4)
        assert raw[f"{p.name}_detection_probability"].shape == (50,)
    assert raw["EVENT/signal"].shape == (50, 2)


def test_shipped_tth_model_against_chi2_on_held_out_events(tmp_path):
    from crema.workflows.spanet import ReportConfig, spanet_report

    result = spanet_report(ReportConfig(events=3000), tmp_path)
    stored = json.loads((tmp_path / "spanet_report.json").read_text())
    assert stored["purity"]["network"] == pytest.approx(result["purity"]["network"])
    assert set(stored["particles"]["network"]) == {"lt", "ht", "h"}
    assert stored["matched"]["event"] > 300
    # measured on 20k events (docs/spanet.md): the network is far better on both tops, not on the Higgs,
    # and about equal on the whole event (1.01x); bounds with margin on 3k events
    net, chi2 = result["particles"]["network"], result["particles"]["chi2"]
    assert net["lt"] > chi2["lt"] + 0.1 and net["ht"] > chi2["ht"] + 0.05
    assert result["purity"]["network"] > 0.15 and result["purity"]["chi2"] > 0.15  # random: < 0.001


# -- the ttH processor -------------------------------------------------------------------
@pytest.fixture(scope="module")
def tth_config(tmp_path_factory):
    from crema.workflows.config import Config, Dataset, GenerateSpec, ProcessorConfig
    from crema.workflows.run import generate_inputs

    config = Config(
        datasets=[Dataset("ttH", "signal", "ttH", xsec_pb=0.0966, generate=GenerateSpec("tth_sl", 1500, seed=61)),
                  Dataset("tt", "background", "ttbar", xsec_pb=269.7, generate=GenerateSpec("tt_sl", 1500, seed=62))],
        luminosity_fb=10.0,
        # the event-level steps are checked in test_event_selection; here the SPANet reconstruction
        processor=ProcessorConfig("tth", {"spanet": {"model": "tth_sl"}, "event_selection": False}),
    )
    config = config.with_executor(chunksize=700, progress=False)
    return generate_inputs(config, tmp_path_factory.mktemp("tth"))


@pytest.fixture(scope="module")
def tth_output(tth_config):
    from crema.workflows.run import run

    return run(tth_config)[0]


def test_tth_processor_masses_match_an_independent_reconstruction(tth_config, tth_output):
    import awkward as ak
    import vector
    from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

    from crema.corrections.btag import working_point
    from crema.corrections.era import load_era
    from crema.models.spanet import SPANet
    from crema.selections.config import load_selection
    from crema.selections.hhbbww import select_objects

    cut = tth_output["cutflow"]["ttH"]["sl"]
    assert list(cut) == ["all events", "finite MET", "finite weight", "1 lepton", "lepton pT > 32", ">= 4 jets",
                         ">= 2 b-tags"]
    assert cut["all events"] == 1500 and 0 < cut[">= 2 b-tags"] < cut[">= 4 jets"]
    # independently: select, run the wrapper once over the whole file, build the masses with vector
    path = tth_config.datasets[0].files[0]
    events = NanoEventsFactory.from_root({path: "Events"}, schemaclass=NanoAODSchema, mode="eager").events()
    cfg = load_selection("hhbbww_run3")
    objs = select_objects(events, cfg, working_point(load_era("2022").path("btag_file"), "particleNet", "M"))
    lead = ak.firsts(objs.leptons)
    keep = ((ak.num(objs.leptons) == 1) & ak.fill_none((lead.pt > 32) & lead.tight, False)
            & (ak.num(objs.jets) >= 4) & (ak.num(objs.bjets) >= 2))
    assert int(ak.sum(keep)) == cut[">= 2 b-tags"]
    jets, met = objs.jets[keep], objs.met[keep]
    result = SPANet(shipped_model("tth_sl"), "tth_sl")(jets, met)
    v = vector.zip({"pt": jets.pt, "eta": jets.eta, "phi": jets.phi, "mass": jets.mass})
    h = result.h
    pair = v[h[h >= 0]]
    two = ak.num(pair) == 2
    m_bb = (pair[two][:, 0] + pair[two][:, 1]).mass
    weight = ak.to_numpy(events.genWeight[keep][two]).astype(np.float64)
    scale = tth_output["scale"]["ttH"]
    hist = tth_output["histograms"]["m_bb"][{"dataset": "ttH", "channel": "sl", "region": "inclusive", "systematic": "nominal"}]
    expected, _ = np.histogram(ak.to_numpy(m_bb), bins=hist.axes[0].edges, weights=weight * scale)
    np.testing.assert_allclose(hist.values(), expected, rtol=1e-9)
    score = tth_output["histograms"]["signal_score"]
    s = score[{"dataset": "ttH", "channel": "sl", "region": "inclusive", "systematic": "nominal"}]
    b = score[{"dataset": "tt", "channel": "sl", "region": "inclusive", "systematic": "nominal"}]
    # the network separates: ttH has a larger mean signal score than ttbar
    centres = s.axes[0].centers
    assert (s.values() @ centres) / s.values().sum() > (b.values() @ centres) / b.values().sum() + 0.05


def test_tth_processor_identical_on_every_executor(tth_config, tth_output):
    from crema.workflows.run import run

    other = run(tth_config.with_executor(name="futures", workers=2))[0]
    assert other["cutflow"] == tth_output["cutflow"]
    for name, h in tth_output["histograms"].items():
        np.testing.assert_allclose(other["histograms"][name].values(flow=True), h.values(flow=True), rtol=1e-12, err_msg=name)


def test_tth_processor_errors_name_the_key(tth_config):
    from dataclasses import replace

    from crema.schema import ConfigError
    from crema.workflows.config import ProcessorConfig
    from crema.workflows.run import build_processor

    bad = replace(tth_config, processor=ProcessorConfig("tth", {"spanet": {"model": "nope"}}))
    with pytest.raises(ConfigError, match=r"processor.options.spanet.model: .*'nope'.*not shipped"):
        build_processor(bad)
    bad = replace(tth_config, processor=ProcessorConfig("tth", {"spanet": {"model": "hh_sl", "event_file": "hh_sl"}}))
    with pytest.raises(ConfigError, match="needs particles h, ht, lt"):
        build_processor(bad)


# -- CLI and round trip ----------------------------------------------------------------
def test_cli_spanet_dataset_round_trip_through_training_and_wrapper(tmp_path):
    """writer -> training -> export -> wrapper on NanoEvents == the network on the training file."""
    import awkward as ak
    import h5py
    from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

    from crema.models.spanet import SPANet, network_inputs
    from crema.models.spanet_train import TrainConfig, train
    from crema.selections.config import load_selection
    from crema.selections.hhbbww import select_objects
    from crema.workflows.cli import main

    h5 = tmp_path / "train.h5"
    assert main(["spanet-dataset", "-o", str(h5), "--scale", "0.01", "--samples", str(tmp_path / "nano"),
                 "--no-progress"]) == 0
    with h5py.File(h5) as f:
        arrays = {}
        f.visititems(lambda k, o: arrays.__setitem__(k, o[:]) if hasattr(o, "shape") else None)
    labels = arrays["CLASSIFICATIONS/EVENT/signal"]
    assert set(np.unique(labels)) == {0, 1} and arrays["INPUTS/Momenta/MASK"].shape[1] == 12
    onnx_path = train(h5, "tth_sl", tmp_path / "m.onnx", TrainConfig(epochs=1, hidden=8, layers=1, heads=2, seed=1))
    model = SPANet(onnx_path, "tth_sl")
    dec_file, raw_file = model.evaluate(network_inputs(arrays, TTH))
    # the same events from NanoAOD through the wrapper (signal dataset: events sorted by number)
    nano = tmp_path / "nano" / "ttH_Hbb_1L.root"
    events = NanoEventsFactory.from_root({str(nano): "Events"}, schemaclass=NanoAODSchema, mode="eager").events()
    objs = select_objects(events, load_selection("hhbbww_run3"), 1.0)
    keep = (ak.num(objs.leptons) == 1) & (ak.num(objs.jets) >= 4)
    objs, number = objs[keep], ak.to_numpy(events.event[keep])
    order = np.argsort(number, kind="stable")
    out = model(objs.jets, objs.met)
    sig = labels == 1
    assert sig.sum() == len(order)
    np.testing.assert_allclose(ak.to_numpy(out.EVENT_signal)[order], raw_file["EVENT/signal"][sig], rtol=1e-5, atol=1e-6)
    # jet indices: the wrapper's index the unsorted collection; map the file's pt-ordered slots back
    pt_order = ak.argsort(objs.jets.pt, axis=1, ascending=False, stable=True)
    for p in TTH.particles:
        slots = dec_file.assignments[p.name][sig]
        idx = ak.to_numpy(out[p.name])[order]
        po = [ak.to_list(x) for x in pt_order[order]]
        mapped = np.array([[po[i][s] if s >= 0 else -1 for s in row] for i, row in enumerate(slots)])
        np.testing.assert_array_equal(idx, mapped, err_msg=p.name)


def test_hhbbww_takes_its_h_to_bb_jets_from_spanet(tmp_path):
    import awkward as ak
    from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

    from crema.models.spanet import SPANet
    from crema.selections import hhbbww as sel
    from crema.workflows.config import Config, Dataset, GenerateSpec, ProcessorConfig
    from crema.workflows.run import build_processor, generate_inputs, run

    base = Config(datasets=[Dataset("HH", "signal", "XHH", xsec_pb=0.07, generate=GenerateSpec("hh_sl", 1200, seed=71))],
                  luminosity_fb=1.0, processor=ProcessorConfig("hhbbww", {"spanet": {"model": "hh_sl", "event_file": "hh_sl"}}))
    config = generate_inputs(base.with_executor(progress=False), tmp_path)
    out = run(config)[0]
    proc = build_processor(config)
    events = NanoEventsFactory.from_root({config.datasets[0].files[0]: "Events"}, schemaclass=NanoAODSchema, mode="eager").events()
    objs = proc.select(events)
    selection, cuts = sel.channel_selection(objs, "sl", proc.selection.channels["sl"])
    # the event-level steps (tested in test_event_selection) come first, as in the processor
    cuts = proc.event_selection.steps(events, config.samples["HH"]).prepend(selection, cuts, objs.leptons, "sl")
    chosen = objs[selection.all(*cuts)]
    h = SPANet(shipped_model("hh_sl"), "hh_sl")(chosen.jets, chosen.met).h
    pair = chosen.jets[h[h >= 0]]
    two = ak.num(pair) == 2
    m = ak.to_numpy((pair[two][:, 0] + pair[two][:, 1]).mass)
    w = ak.to_numpy(events.genWeight[selection.all(*cuts)][two]).astype(np.float64) * out["scale"]["HH"]
    hist = out["histograms"]["m_bb"][{"dataset": "HH", "channel": "sl", "region": "inclusive", "systematic": "nominal"}]
    expected, _ = np.histogram(m, bins=hist.axes[0].edges, weights=w)
    np.testing.assert_allclose(hist.values(), expected, rtol=1e-9)
    det = out["histograms"]["spanet_h_detection"]
    assert det[{"dataset": "HH", "channel": "sl", "region": "inclusive", "systematic": "nominal"}].values().sum() > 0
    assert det[{"dataset": "HH", "channel": "dl", "region": "inclusive", "systematic": "nominal"}].values().sum() == 0


def test_wrapper_runs_an_export_of_the_pypi_spanet_package():
    """tests/data/spanet_pypi_tth_sl.onnx: SPANet 2.1.1's own exporter (tiny network, one training epoch
    on a crema training file; recipe in docs/spanet.md).  Its jet axis is dynamic."""
    import awkward as ak
    import onnxruntime as ort

    from crema.models.spanet import SPANet, decode, jet_features, met_features
    from conftest import DATA

    path = DATA / "spanet_pypi_tth_sl.onnx"
    with pytest.raises(ValueError, match="jet axis is dynamic.*pass max_jets"):
        SPANet(path, "tth_sl")
    model = SPANet(path, "tth_sl", max_jets=12, batch_size=32)  # the graph holds the traced size (J = 12)
    rng = np.random.default_rng(3)
    counts = rng.integers(0, 14, 90)
    n = int(counts.sum())
    flat = {"pt": rng.uniform(25, 300, n), "eta": rng.uniform(-2.4, 2.4, n), "phi": rng.uniform(-3, 3, n),
            "mass": rng.uniform(3, 30, n), "btagPNetB": rng.uniform(0, 1, n), "btagPNetQvG": rng.uniform(0, 1, n)}
    jets = ak.unflatten(ak.zip(flat), counts)
    met = ak.zip({"pt": rng.uniform(0, 200, 90), "phi": rng.uniform(-3, 3, 90)})
    out = model(jets, met)
    # direct: pt-sort, pad/clip to 10, features, one session.run, decode
    order = ak.argsort(jets.pt, axis=1, ascending=False, stable=True)
    padded = {f: ak.to_numpy(ak.fill_none(ak.pad_none(jets[order][f], 12, clip=True), 0.0)) for f in flat}
    mask = np.arange(12)[None, :] < np.minimum(counts, 12)[:, None]
    event = TTH
    x = np.where(mask[..., None], jet_features(event.sequential[0], padded), 0).astype(np.float32)
    g = met_features(event.globals[0], {"pt": ak.to_numpy(met.pt), "phi": ak.to_numpy(met.phi)})[:, None, :]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    raw = dict(zip(names, sess.run(None, {"Momenta_data": x, "Momenta_mask": mask, "Met_data": g,
                                          "Met_mask": np.ones((90, 1), bool)})))
    dec = decode({p.name: raw[f"{p.name}_assignment_probability"] for p in event.particles}, event, mask.sum(1))
    o = [np.asarray(r) for r in ak.to_list(order)]
    for p in event.particles:
        want = np.array([[o[i][s] if s >= 0 else -1 for s in row] for i, row in enumerate(dec.assignments[p.name])])
        np.testing.assert_array_equal(ak.to_numpy(out[p.name]), want, err_msg=p.name)
    np.testing.assert_allclose(ak.to_numpy(out.EVENT_signal), raw["EVENT/signal"], rtol=1e-5, atol=1e-6)
