"""SPANet: event files, decoder, ONNX wrapper (tiny torch export)."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest

from crema.models.spanet import (
    ConfigError,
    builtin_event_file,
    decode,
    event_file_names,
    parse_event_file,
)

TTH = {
    "INPUTS": {
        "SEQUENTIAL": {"Momenta": {"mass": "log_normalize", "pt": "log_normalize", "eta": "normalize", "btag": "none"}},
        "GLOBAL": {"Met": {"met": "log_normalize", "sin_phi": "normalize"}},
    },
    "EVENT": {"lt": ["b"], "ht": ["b", "q1", "q2"], "h": ["b1", "b2"]},
    "PERMUTATIONS": {"ht": [["q1", "q2"]], "h": [["b1", "b2"]]},
    "REGRESSIONS": {"EVENT": ["neutrino_px"]},
    "CLASSIFICATIONS": {"EVENT": ["signal"]},
}


# -- event files -------------------------------------------------------------
def test_shipped_event_files():
    assert event_file_names() == ["hh_sl", "tth_sl"]
    tth = builtin_event_file("tth_sl")
    assert [p.name for p in tth.particles] == ["lt", "ht", "h"]
    assert tth.particle("ht").groups == ((1, 2),)
    assert tth.sequential[0].feature_names[:2] == ("mass", "pt")
    assert tth.regression_names[-1] == "EVENT/log_invariant_mass"
    hh = builtin_event_file("hh_sl")
    assert [p.products for p in hh.particles] == [("b1", "b2"), ("q1", "q2")]


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda d: d["INPUTS"]["SEQUENTIAL"]["Momenta"].update(pt="log"), "INPUTS.SEQUENTIAL.Momenta.pt"),
        (lambda d: d["PERMUTATIONS"].update(ht=[["q1", "b1"]]), "PERMUTATIONS.ht[0][1]"),
        (lambda d: d["PERMUTATIONS"].update(x=[["a", "b"]]), "PERMUTATIONS.x"),
        (lambda d: d.update(EXTRA=1), "EXTRA"),
        (lambda d: d["INPUTS"].update(OTHER={}), "INPUTS.OTHER"),
        (lambda d: d["EVENT"].update(h=["b1", "b1"]), "EVENT.h[1]"),
        (lambda d: d["REGRESSIONS"].update(zz=["a"]), "REGRESSIONS.zz"),
        (lambda d: d.pop("EVENT"), "EVENT"),
    ],
)
def test_event_file_errors_name_key(edit, key):
    data = copy.deepcopy(TTH)
    edit(data)
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        parse_event_file(data)


# -- decoder -------------------------------------------------------------------
def _sym2(m):
    m = np.asarray(m, dtype=np.float32)
    return (m + np.swapaxes(m, -1, -2)) / 2


def _pair_event():
    return parse_event_file({"INPUTS": TTH["INPUTS"], "EVENT": {"h": ["b1", "b2"], "w": ["q1", "q2"]},
                             "PERMUTATIONS": {"h": [["b1", "b2"]], "w": [["q1", "q2"]]}})


def test_decoder_greedy_global_and_canonical():
    ev = _pair_event()
    N = 4
    h = np.zeros((2, N, N), np.float32)
    w = np.zeros((2, N, N), np.float32)
    # event 0: h prefers (2,0) (reported as 0,2); w's best (0,1) conflicts -> w takes (1,3)
    h[0, 2, 0] = h[0, 0, 2] = 0.4
    h[0, 1, 3] = h[0, 3, 1] = 0.1
    w[0, 0, 1] = w[0, 1, 0] = 0.3
    w[0, 1, 3] = w[0, 3, 1] = 0.2
    # event 1: w is the global best
    w[1, 3, 2] = w[1, 2, 3] = 0.45
    h[1, 2, 3] = h[1, 3, 2] = 0.3
    h[1, 0, 1] = h[1, 1, 0] = 0.05
    dec = decode({"h": h, "w": w}, ev, detection={"h": np.array([0.9, 0.8]), "w": np.array([0.7, 0.6])})
    assert dec.assignments["h"].tolist() == [[0, 2], [0, 1]]
    assert dec.assignments["w"].tolist() == [[1, 3], [2, 3]]
    np.testing.assert_allclose(dec.probabilities["h"], [0.4, 0.05])
    np.testing.assert_allclose(dec.detection["w"], [0.7, 0.6])


def test_decoder_exhausted_event_never_reuses_jets():
    """SPANet's decoder never stops early: with 3 jets for 2 pair particles it reuses a jet."""
    ev = _pair_event()
    N = 3
    h = _sym2(np.ones((1, N, N)) - np.eye(N))[None][0] / 6
    w = h.copy()
    dec = decode({"h": h, "w": w}, ev)
    assigned = [p for p in ("h", "w") if (dec.assignments[p] >= 0).all()]
    assert len(assigned) == 1
    other = "w" if assigned == ["h"] else "h"
    assert dec.assignments[other].tolist() == [[-1, -1]] and dec.probabilities[other][0] == 0


def test_decoder_padding_and_four_products():
    """A 4-product particle: used jets are masked for it too (SPANet masks only up to 3 products)."""
    ev = parse_event_file({"INPUTS": TTH["INPUTS"], "EVENT": {"h": ["b1", "b2"], "x": ["a", "b", "c", "d"]},
                           "PERMUTATIONS": {"h": [["b1", "b2"]]}})
    N = 6
    rng = np.random.default_rng(3)
    x = rng.uniform(0.01, 1.0, (5, N, N, N, N)).astype(np.float32)
    idx = np.indices((N,) * 4)
    distinct = np.ones((N,) * 4, bool)
    for a in range(4):
        for b in range(a + 1, 4):
            distinct &= idx[a] != idx[b]
    x = x * distinct
    h = _sym2(rng.uniform(0.01, 1.0, (5, N, N))) * (1 - np.eye(N))
    h[:, 0, 1] = h[:, 1, 0] = 2.0  # h first takes (0, 1)
    n_jets = np.array([6, 6, 5, 4, 3])
    dec = decode({"h": h, "x": x}, ev, n_jets=n_jets)
    assert dec.assignments["h"].tolist() == [[0, 1]] * 5
    for i in range(5):
        xa = dec.assignments["x"][i]
        if n_jets[i] >= 6:
            assert len(set(xa.tolist()) | {0, 1}) == 6 and (xa < n_jets[i]).all()
            # the best 4-tuple among the remaining jets
            sub = x[i][2:, 2:, 2:, 2:]
            assert np.isclose(dec.probabilities["x"][i], sub.max())
        else:
            assert xa.tolist() == [-1] * 4  # not enough unpadded jets left


# -- ONNX wrapper -----------------------------------------------------------------
torch = pytest.importorskip("torch")


class _Tiny(torch.nn.Module):
    """A minimal network honouring the export contract (symmetric tuple scores, masked padding)."""

    def __init__(self, event, n_jets: int, hidden: int = 8):
        super().__init__()
        self.event, self.n = event, n_jets
        seq, glob = event.sequential[0], event.globals[0]
        self.seq_name, self.glob_name = seq.name, glob.name
        self.register_buffer("mean", torch.linspace(-0.5, 0.5, len(seq.features)))
        self.register_buffer("std", torch.linspace(1.0, 2.0, len(seq.features)))
        self.embed = torch.nn.Linear(len(seq.features), hidden)
        self.gembed = torch.nn.Linear(len(glob.features), hidden)
        self.lin = torch.nn.ModuleDict({p.name: torch.nn.Linear(hidden, len(p.products)) for p in event.particles})
        self.pair = torch.nn.ParameterDict({p.name: torch.nn.Parameter(torch.randn(hidden, hidden) * 0.3) for p in event.particles})
        self.det = torch.nn.Linear(hidden, len(event.particles))
        self.reg = torch.nn.Linear(hidden, len(event.regression_names))
        self.cls = torch.nn.Linear(hidden, 2 * len(event.classification_names))

    def forward(self, x, mask, g, gmask):
        h = torch.tanh(self.embed((x - self.mean) / self.std) + self.gembed(g * gmask.float()[..., None]))  # (B, N, H)
        m = mask.float()
        pooled = (h * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp(min=1.0)
        outs = []
        for j, p in enumerate(self.event.particles):
            k = len(p.products)
            w = self.lin[p.name](h)  # (B, N, k)
            cols = [w[..., a] for a in range(k)]
            for grp in p.groups:  # products of one group share a score (symmetry)
                shared = sum(cols[a] for a in grp) / len(grp)
                for a in grp:
                    cols[a] = shared
            B = x.shape[0]
            score, valid = None, None
            for a in range(k):
                shape = [B] + [1] * k
                shape[a + 1] = self.n
                term, vm = cols[a].reshape(shape), mask.reshape(shape)
                score = term if score is None else score + term
                valid = vm if valid is None else valid & vm
                for b in range(a + 1, k):
                    M = self.pair[p.name] + self.pair[p.name].T
                    pair = torch.einsum("bih,hg,bjg->bij", h, M, h)  # symmetric pair score
                    shp = [B] + [1] * k
                    shp[a + 1] = shp[b + 1] = self.n
                    score = score + pair.reshape(shp)
                    valid = valid & ~torch.eye(self.n, dtype=torch.bool).reshape(shp[1:])
            flat = torch.where(valid, score, torch.full_like(score, -1e9)).reshape(B, -1)
            prob = torch.softmax(flat, dim=1).reshape(score.shape) * valid.float()
            outs.append(prob)
        det = torch.sigmoid(self.det(pooled))
        reg = self.reg(pooled)
        cls = torch.softmax(self.cls(pooled).reshape(x.shape[0], -1, 2), dim=-1)
        return (*outs, *[det[:, j] for j in range(det.shape[1])], *[reg[:, j] for j in range(reg.shape[1])],
                *[cls[:, j] for j in range(cls.shape[1])])


def _export(event, path, n_jets=6):
    torch.manual_seed(0)
    net = _Tiny(event, n_jets).eval()
    seq, glob = event.sequential[0], event.globals[0]
    B = 3
    args = (torch.randn(B, n_jets, len(seq.features)), torch.ones(B, n_jets, dtype=torch.bool),
            torch.randn(B, 1, len(glob.features)), torch.ones(B, 1, dtype=torch.bool))
    inputs = [f"{seq.name}_data", f"{seq.name}_mask", f"{glob.name}_data", f"{glob.name}_mask"]
    outputs = ([f"{p.name}_assignment_probability" for p in event.particles]
               + [f"{p.name}_detection_probability" for p in event.particles]
               + list(event.regression_names) + list(event.classification_names))
    torch.onnx.export(net, args, str(path), input_names=inputs, output_names=outputs, opset_version=17,
                      dynamic_axes={n: {0: "batch"} for n in inputs + outputs}, dynamo=False)
    return path


@pytest.fixture(scope="module")
def tth_model(tmp_path_factory):
    return _export(builtin_event_file("tth_sl"), tmp_path_factory.mktemp("spanet") / "tth.onnx")


def _jets(rng, counts):
    import awkward as ak

    n = int(np.sum(counts))
    flat = {
        "pt": rng.uniform(20, 300, n), "eta": rng.uniform(-2.5, 2.5, n), "phi": rng.uniform(-np.pi, np.pi, n),
        "mass": rng.uniform(2, 30, n), "btagPNetB": rng.uniform(0, 1, n), "btagPNetQvG": rng.uniform(0, 1, n),
    }
    flat["btagPNetQvG"][::7] = -1.0  # NanoAOD "no score"
    return ak.unflatten(ak.zip(flat), counts), flat


def test_wrapper_matches_direct_onnxruntime_and_decoder(tth_model):
    import awkward as ak
    import onnxruntime as ort

    from crema.models.spanet import SPANet

    event = builtin_event_file("tth_sl")
    model = SPANet(tth_model, "tth_sl", batch_size=48)
    assert model.max_jets == 6
    rng = np.random.default_rng(1)
    counts = np.array([0, 1, 3, 4, 6, 9, 5, 2, 7] * 7)  # includes empty events and more jets than slots
    jets, flat = _jets(rng, counts)
    met = ak.zip({"pt": rng.uniform(0, 200, len(counts)), "phi": rng.uniform(-np.pi, np.pi, len(counts))})
    out = model(jets, met)
    assert len(out) == len(counts)

    # reference: pad by hand, run onnxruntime directly, decode, map slots -> original indices
    N, n = 6, len(counts)
    x = np.zeros((n, N, 9), np.float32)
    mask = np.zeros((n, N), bool)
    original = np.full((n, N), -1)
    for i, ev in enumerate(ak.to_list(jets)):
        order = np.argsort([-j["pt"] for j in ev], kind="stable")[:N]
        for s, o in enumerate(order):
            j = ev[o]
            x[i, s] = [np.log1p(j["mass"]), np.log1p(j["pt"]), j["eta"], np.sin(j["phi"]), np.cos(j["phi"]),
                       max(j["btagPNetQvG"], 0), j["btagPNetB"], 0, 0]
            mask[i, s] = True
            original[i, s] = o
    mp, mphi = ak.to_numpy(met.pt), ak.to_numpy(met.phi)
    g = np.stack([np.log1p(mp), np.sin(mphi), np.cos(mphi)], 1)[:, None, :].astype(np.float32)
    sess = ort.InferenceSession(str(tth_model), providers=["CPUExecutionProvider"])
    raw = dict(zip([o.name for o in sess.get_outputs()],
                   sess.run(None, {"Momenta_data": x, "Momenta_mask": mask, "Met_data": g, "Met_mask": np.ones((n, 1), bool)})))
    dec = decode({p.name: raw[f"{p.name}_assignment_probability"] for p in event.particles}, event, mask.sum(1),
                 {p.name: raw[f"{p.name}_detection_probability"] for p in event.particles})
    for p in event.particles:
        slots = dec.assignments[p.name]
        expect = np.where(slots >= 0, np.take_along_axis(original, np.maximum(slots, 0), 1), -1)
        assert ak.to_list(out[p.name]) == expect.tolist()
        np.testing.assert_allclose(ak.to_numpy(out[f"{p.name}_probability"]), dec.probabilities[p.name], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(ak.to_numpy(out[f"{p.name}_detection"]), dec.detection[p.name], rtol=1e-5)
    np.testing.assert_allclose(ak.to_numpy(out["EVENT_neutrino_px"]), raw["EVENT/neutrino_px"], rtol=1e-5, atol=1e-6)
    assert ak.to_numpy(out["EVENT_signal"]).shape == (n, 2)
    # contract of the toy export: symmetric, zero on repeated jets and padding
    h = raw["h_assignment_probability"]
    np.testing.assert_allclose(h, np.swapaxes(h, 1, 2), atol=1e-6)  # float rounding only
    assert (np.diagonal(h, axis1=1, axis2=2) == 0).all() and (h[~mask] == 0).all()
    # events with fewer than 2 jets cannot have an H; with 0 jets nothing is assigned
    assert (ak.to_numpy(out["h"])[counts < 2] == -1).all() and (ak.to_numpy(out["lt"])[counts == 0] == -1).all()
    # every assigned index is distinct within an event
    allj = np.concatenate([ak.to_numpy(out[p.name]) for p in event.particles], axis=1)
    for row in allj:
        row = row[row >= 0]
        assert len(set(row.tolist())) == len(row)

    empty = model(jets[:0], met[:0])
    assert len(empty) == 0 and set(empty.fields) == set(out.fields)


def test_wrapper_rejects_mismatched_export(tth_model, tmp_path):
    from crema.models.spanet import SPANet

    with pytest.raises(KeyError, match="lacks outputs.*w_assignment_probability"):
        SPANet(tth_model, "hh_sl")  # same inputs, other particles


# -- training-file writer -----------------------------------------------------------
@pytest.fixture(scope="module")
def spanet_samples(tmp_path_factory):
    from crema.generate import write_nanoaod

    d = tmp_path_factory.mktemp("spanet_nano")
    write_nanoaod(d / "tth.root", "tth_sl", 300, seed=11)
    write_nanoaod(d / "tt.root", "tt_sl", 200, seed=12)
    return {"tth": {"files": {str(d / "tth.root"): "Events"}}, "tt": {"files": {str(d / "tt.root"): "Events"}}}


def _run_dataset(fileset, executor):
    from coffea import processor
    from coffea.nanoevents import NanoAODSchema

    from crema.processors.spanet_dataset import SpanetDataset

    runner = processor.Runner(executor=executor, schema=NanoAODSchema, chunksize=120)
    return runner(fileset, SpanetDataset("tth_sl", {"tth": 1, "tt": 0}, max_jets=12), treename="Events")


@pytest.fixture(scope="module")
def spanet_output(spanet_samples):
    from coffea import processor

    return _run_dataset(spanet_samples, processor.IterativeExecutor())


def test_training_file_layout(spanet_output, tmp_path):
    import h5py

    from crema.processors.spanet_dataset import write_h5

    path = tmp_path / "train.h5"
    write_h5(spanet_output, path)
    n = len(spanet_output["event"])
    assert n > 200
    momenta = ["MASK", "cos_phi", "sin_phi", "eta", "mass", "pt", "btag", "qtag", "etag", "utag"]
    expected = {f"INPUTS/Momenta/{f}": (np.bool_ if f == "MASK" else np.float32, (n, 12)) for f in momenta}
    expected.update({f"INPUTS/Met/{f}": (np.float32, (n,)) for f in ("met", "sumet", "cos_phi", "sin_phi")})
    expected.update({f"TARGETS/{p}": (np.int64, (n,)) for p in ("lt/b", "lt/l", "ht/b", "ht/q1", "ht/q2", "h/b1", "h/b2")})
    expected.update({f"REGRESSIONS/EVENT/{r}": (np.float32, (n,)) for r in
                     ("neutrino_eta", "neutrino_px", "neutrino_py", "neutrino_pz", "log_invariant_mass")})
    expected["CLASSIFICATIONS/EVENT/signal"] = (np.int64, (n,))
    with h5py.File(path) as f:
        found = {}
        f.visititems(lambda name, obj: found.update({name: obj}) if isinstance(obj, h5py.Dataset) else None)
        assert set(found) == set(expected)
        for key, (dtype, shape) in expected.items():
            assert found[key].dtype == dtype, key
            assert found[key].shape == shape, key
        mask = f["INPUTS/Momenta/MASK"][:]
        pt = f["INPUTS/Momenta/pt"][:]
        assert (pt[mask] > 0).all() and (pt[~mask] == 0).all()
        assert (np.diff(np.where(mask, pt, -1), axis=1) <= 0).all()  # pt order
        signal = f["CLASSIFICATIONS/EVENT/signal"][:]
        tth = signal == 1
        assert 0 < tth.sum() < n and set(signal.tolist()) == {0, 1}
        t = {k: f[f"TARGETS/{k}"][:] for k in ("lt/b", "ht/b", "ht/q1", "ht/q2", "h/b1", "h/b2")}
        # targets point to real, distinct jets
        for k, v in t.items():
            assert ((v == -1) | ((v >= 0) & (v < 12))).all()
            assert mask[np.flatnonzero(v >= 0), v[v >= 0]].all(), k
        stack = np.stack(list(t.values()), 1)
        for row in stack:
            row = row[row >= 0]
            assert len(set(row.tolist())) == len(row)
        assert (t["ht/q1"] < t["ht/q2"])[(t["ht/q1"] >= 0)].all()  # canonical order in the group
        assert ((t["h/b1"] >= 0) & (t["h/b2"] >= 0))[tth].mean() > 0.3
        assert (t["h/b1"][~tth] == -1).all()  # no Higgs in tt
        assert (t["lt/b"] >= 0).mean() > 0.5 and (t["ht/b"] >= 0).mean() > 0.5
        nu = f["REGRESSIONS/EVENT/neutrino_px"][:]
        assert np.isfinite(nu).mean() > 0.95
        m = np.exp(f["REGRESSIONS/EVENT/log_invariant_mass"][:])
        assert (m[tth] > 2 * 172 + 125 - 50).all() and (m[~tth] > 2 * 172 - 50).all()


def test_training_file_executors_identical(spanet_samples, spanet_output):
    from coffea import processor

    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # separate processes (pickling of the processor and its chunk outputs); fork keeps start-up short
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as pool:
        other = _run_dataset(spanet_samples, processor.FuturesExecutor(pool=pool, workers=2))
    assert set(other["arrays"]) == set(spanet_output["arrays"])
    np.testing.assert_array_equal(other["event"], spanet_output["event"])
    for k, v in spanet_output["arrays"].items():
        np.testing.assert_array_equal(other["arrays"][k], v, err_msg=k)


def test_match_partons_rejects_ambiguous():
    from crema.processors.spanet_dataset import match_partons

    jet_eta = np.array([[0.0, 0.3, 2.0, 0.0]])
    jet_phi = np.array([[0.0, 0.0, 1.0, 3.0]])
    jet_ok = np.array([[True, True, True, False]])  # slot 3 has no GenJet
    # parton 0 is within 0.4 of jets 0 and 1 (ambiguous); partons 1 and 2 share jet 2; parton 3 only near the GenJet-less slot
    p_eta = np.array([[0.15, 2.0, 2.1, 0.0, -1.0]])
    p_phi = np.array([[0.0, 1.0, 1.05, 3.0, -3.14]])
    p_ok = np.array([[True, True, True, True, True]])
    assert match_partons(jet_eta, jet_phi, jet_ok, p_eta, p_phi, p_ok).tolist() == [[-1, -1, -1, -1, -1]]
    p_eta[0, 2] = -2.0  # parton 2 moves away: parton 1 now owns jet 2
    p_eta[0, 0] = -0.15  # parton 0 now only near jet 0 (0.45 from jet 1)
    p_phi[0, 4] = 3.1  # near phi = pi: still nothing there with a GenJet
    assert match_partons(jet_eta, jet_phi, jet_ok, p_eta, p_phi, p_ok).tolist() == [[0, 2, -1, -1, -1]]


def test_training_file_hh(tmp_path):
    from coffea import processor
    from coffea.nanoevents import NanoAODSchema

    from crema.generate import write_nanoaod
    from crema.processors.spanet_dataset import SpanetDataset

    with pytest.raises(ValueError, match="does not define particles"):
        SpanetDataset(builtin_event_file("tth_sl"), truth="hh_sl")
    write_nanoaod(tmp_path / "hh.root", "hh_sl", 200, seed=5)
    runner = processor.Runner(executor=processor.IterativeExecutor(), schema=NanoAODSchema, chunksize=200)
    out = runner({"hh": {"files": {str(tmp_path / "hh.root"): "Events"}}}, SpanetDataset("hh_sl", {"hh": 1}), treename="Events")
    a = out["arrays"]
    assert sorted(k for k in a if k.startswith("TARGETS")) == ["TARGETS/h/b1", "TARGETS/h/b2", "TARGETS/w/q1", "TARGETS/w/q2"]
    assert ((a["TARGETS/h/b1"] >= 0) & (a["TARGETS/h/b2"] >= 0)).mean() > 0.5
    assert ((a["TARGETS/w/q1"] >= 0) & (a["TARGETS/w/q2"] >= 0)).mean() > 0.3
    assert (a["CLASSIFICATIONS/EVENT/signal"] == 1).all()
    m = np.exp(a["REGRESSIONS/EVENT/log_invariant_mass"])
    assert np.all(np.abs(m / 800 - 1) < 0.11)  # the X resonance (10 % truncation)


def test_training_script_reproducible_and_honours_contract(spanet_output, tmp_path):
    import onnxruntime as ort

    from crema.models.spanet import SPANet
    from crema.models.spanet_train import TrainConfig, load_h5, train
    from crema.processors.spanet_dataset import write_h5

    write_h5({k: v[:160] for k, v in spanet_output["arrays"].items()}, tmp_path / "train.h5")  # a smoke run
    cfg = TrainConfig(epochs=1, batch_size=80, hidden=8, layers=1, heads=2, seed=3)
    a = train(tmp_path / "train.h5", "tth_sl", tmp_path / "a.onnx", cfg)
    b = train(tmp_path / "train.h5", "tth_sl", tmp_path / "b.onnx", cfg)
    event = builtin_event_file("tth_sl")
    data = load_h5(tmp_path / "train.h5", event)
    feeds = {f"{s.name}_{kind}": data[key][s.name] for s in event.inputs for kind, key in (("data", "inputs"), ("mask", "masks"))}

    def run(path):
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = {i.name for i in sess.get_inputs()}
        return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {k: v for k, v in feeds.items() if k in names})))

    ra, rb = run(a), run(b)
    assert ra.keys() == rb.keys()
    for k in ra:
        np.testing.assert_array_equal(ra[k], rb[k], err_msg=k)  # same seed, same network
    mask = feeds["Momenta_mask"]
    ht = ra["ht_assignment_probability"]
    assert ht.shape == (len(mask), 12, 12, 12)
    np.testing.assert_allclose(ht, np.swapaxes(ht, 2, 3), atol=1e-6)  # q1 <-> q2
    np.testing.assert_allclose(ht.reshape(len(mask), -1).sum(1)[mask.sum(1) >= 3], 1, atol=1e-4)
    assert (ht[~mask] == 0).all() and (np.diagonal(ht, axis1=2, axis2=3) == 0).all()
    assert ra["EVENT/signal"].shape == (len(mask), 2)
    model = SPANet(a, "tth_sl")
    assert model.max_jets == 12


def test_decoder_equals_an_event_by_event_reference_on_random_tensors():
    """The vectorised decoder against a plain loop over events and tuples (same rules)."""
    event = builtin_event_file("tth_sl")
    rng = np.random.default_rng(5)
    B, N = 60, 7
    probs = {}
    for p in event.particles:
        x = rng.random((B,) + (N,) * len(p.products)).astype(np.float32) ** 6
        x[rng.random(x.shape) < 0.05] = 0.0
        probs[p.name] = x
    n_jets = rng.integers(0, N + 1, B)
    got = decode(probs, event, n_jets)
    for b in range(B):
        used, todo = set(), [p for p in event.particles]
        while todo:
            best = None
            for p in todo:
                for tup in itertools.permutations(range(n_jets[b]), len(p.products)):
                    if used & set(tup) or any(tup[g[i]] > tup[g[i + 1]] for g in p.groups for i in range(len(g) - 1)):
                        continue
                    score = max(probs[p.name][b][perm] for perm in _group_perms(tup, p.groups))
                    if score > 0 and (best is None or score > best[0]):
                        best = (score, p, tup)
            if best is None:
                break
            _, p, tup = best
            np.testing.assert_array_equal(got.assignments[p.name][b], tup, err_msg=f"event {b} {p.name}")
            used |= set(tup)
            todo.remove(p)
        for p in todo:
            assert (got.assignments[p.name][b] == -1).all()


def _group_perms(tup, groups):
    out = []
    for choice in itertools.product(*[list(itertools.permutations(g)) for g in groups]):
        t = list(tup)
        for g, perm in zip(groups, choice):
            for src, dst in zip(g, perm):
                t[src] = tup[dst]
        out.append(tuple(t))
    return out or [tuple(tup)]
