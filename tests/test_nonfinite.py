"""NaN, inf and unphysical input values: counted per branch, dropped from objects, never a crash.

Generated HH (single- and double-lepton) files are rewritten with uproot with NaN, +inf and
garbage (8.8e37, as a damaged uncompressed basket reads) injected into kinematic branches,
MET, genWeight and the pileup input; every count is checked against an independent numpy count.
"""

from __future__ import annotations

from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot
import yaml

from crema.workflows.config import load_config
from crema.workflows.run import build_processor, run


GARBAGE = 8.8e37
# what the processor must flag, written out here independently of crema.physical
ENERGY = {"pt", "mass", "energy", "msoftdrop", "sumEt", "sumPtUnclustered", "ptRaw"}


def rewrite(src: Path, dst: Path, change) -> Path:
    """Copy the NanoAOD-style tree of ``src`` to ``dst`` with ``change(name, numpy flat values)`` applied."""
    tree = uproot.open(src)["Events"]
    arrays = tree.arrays(how=dict)
    collections = {k[1:] for k in arrays if k.startswith("n") and any(b.startswith(k[1:] + "_") for b in arrays)}
    groups: dict[str, dict] = {c: {} for c in collections}
    flat = {}
    for name, array in arrays.items():
        coll, _, field = name.partition("_")
        if name[1:] in collections or (name.startswith("n") and name[1:] in arrays):  # a counter: mktree writes it
            continue
        if coll in collections and array.ndim == 2:
            values = ak.to_numpy(ak.flatten(array)).copy()
            change(name, values)
            groups[coll][field] = ak.unflatten(values, ak.num(array))
        elif array.ndim == 2:  # a per-event vector of its own (LHEScaleWeight, PSWeight, ...): kept as is
            flat[name] = array
        else:
            values = ak.to_numpy(array).copy()
            change(name, values)
            flat[name] = values
    data = {**flat, **{c: ak.zip(f) for c, f in groups.items()}}
    with uproot.recreate(dst) as f:
        f.mktree("Events", {k: (v.type.content if isinstance(v, ak.Array) else v.dtype) for k, v in data.items()},
                 counter_name=lambda c: "n" + c)
        f["Events"].extend(data)
    return dst


def inject(name: str, values: np.ndarray) -> None:
    """NaN, +inf and garbage into a few % of the entries of some branches (a fixed pattern per branch)."""
    n = len(values)
    if name == "Muon_pt":
        values[::5] = np.inf
    elif name == "Electron_eta":
        values[1::9] = np.nan
    elif name == "Jet_pt":
        values[::11] = np.nan
        values[3::13] = np.inf
        values[7::29] = -np.inf
    elif name == "Jet_phi":
        values[2::31] = np.nan
    elif name == "Jet_eta":
        values[5::37] = GARBAGE
    elif name == "FatJet_mass":
        values[::7] = GARBAGE
    elif name in ("PuppiMET_pt", "MET_pt"):
        values[::17] = np.nan
        values[4::41] = np.inf
    elif name == "PuppiMET_phi":
        values[9::43] = np.nan
    elif name == "genWeight":
        values[::23] = np.nan
    elif name == "Pileup_nTrueInt":
        values[6::19] = np.nan
    assert n == len(values)


def expected_count(trees: list[dict], branch: str) -> int:
    """NaN, inf and out-of-range values of ``branch`` in the files (``trees``: branch -> array per file)."""
    field = branch.partition("_")[2] or branch
    total = 0
    for arrays in trees:
        flat = np.asarray(ak.to_numpy(ak.flatten(arrays[branch], axis=None)))
        if flat.dtype.kind != "f":
            continue
        bad = ~np.isfinite(flat)
        with np.errstate(invalid="ignore"):
            if field in ENERGY:
                bad |= np.abs(flat) > 1e5
            elif field == "eta":
                bad |= np.abs(flat) > 10
        total += int(bad.sum())
    return total


def config_file(tmp: Path, files: list[Path], options: dict, name: str, kind: str = "signal") -> Path:
    dataset = {"name": "HH", "kind": kind, "process": "hh", "files": [str(f) for f in files]}
    if kind != "data":
        dataset["xsec_pb"] = 1.0
    config = {"luminosity_fb": 10.0, "output": str(tmp / "out"), "datasets": [dataset],
              # the era's event-level steps (triggers, MET filters, jet veto) are tested on their own
              "processor": {"name": "hhbbww", "options": {"event_selection": False, **options}},
              "executor": {"name": "iterative", "chunksize": 100, "progress": False}}
    path = tmp / name
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from crema.generate import write_nanoaod

    tmp = tmp_path_factory.mktemp("nonfinite")
    out = []
    for process, seed in (("hh_sl", 3), ("hh_dl", 4)):
        clean = write_nanoaod(tmp / f"{process}.root", process, 250, seed=seed)
        out.append(rewrite(clean, tmp / f"{process}_bad.root", inject))
    return tmp, out


@pytest.fixture(scope="module")
def plain(files):
    tmp, paths = files
    config = load_config(config_file(tmp, paths, {}, "plain.yaml"))
    return config, run(config)[0]


@pytest.fixture(scope="module")
def corrected(files):
    tmp, paths = files
    options = {"corrections": {"jets": True, "weights": True, "systematics": True, "jes_sources": ["Absolute"]}}
    config = load_config(config_file(tmp, paths, options, "corrected.yaml"))
    return config, run(config)[0]


def test_injection_is_real(files):
    _, paths = files
    muons = uproot.open(paths[0])["Events"]["Muon_pt"].array()
    assert ak.sum(np.isinf(muons)) > 10


@pytest.mark.parametrize("which", ["plain", "corrected"])
def test_nonfinite_counts_equal_an_independent_count(request, files, which):
    config, output = request.getfixturevalue(which)
    _, paths = files
    proc = build_processor(config)
    branches = proc.required_branches(config.datasets[0].sample)
    trees = [uproot.open(p)["Events"].arrays(list(branches), how=dict) for p in paths]
    counts = output["nonfinite"]
    assert set(counts) == set(branches)  # every branch read is accounted, zeros included
    for branch in branches:
        assert counts[branch] == expected_count(trees, branch), branch
    for branch in ("Muon_pt", "Jet_pt", "Jet_eta", "FatJet_mass", "PuppiMET_pt", "genWeight", "Electron_eta"):
        assert counts[branch] > 0, branch
    if which == "corrected":
        assert counts["Pileup_nTrueInt"] > 0


def test_infinite_muons_do_not_pass(files):
    from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

    from crema.corrections.btag import working_point
    from crema.corrections.era import load_era
    from crema.selections.config import load_selection
    from crema.selections.hhbbww import select_objects

    _, paths = files
    events = NanoEventsFactory.from_root({str(paths[0]): "Events"}, schemaclass=NanoAODSchema, mode="eager").events()
    cfg = load_selection("hhbbww_run3")
    objects = select_objects(events, cfg, working_point(load_era("2022").path("btag_file"), "particleNet", "M"))
    muons = np.abs(ak.to_numpy(ak.flatten(objects.leptons.pdgId))) == 13
    pts = ak.to_numpy(ak.flatten(objects.leptons.pt))
    assert muons.sum() > 0 and np.isfinite(pts).all()
    for coll in (objects.jets, objects.fatjets, objects.forward_jets):
        for field in ("pt", "eta", "phi", "mass"):
            values = ak.to_numpy(ak.flatten(coll[field]))
            assert np.isfinite(values).all() and (np.abs(values) < 1e5).all()
    # without the physical-kinematics requirement the +inf muons would pass every cut on pt
    raw = events.Muon
    assert ak.sum(np.isinf(raw.pt) & (abs(raw.eta) < 2.4)) > 0


def _met_ok(paths, met="PuppiMET"):
    ok = []
    for p in paths:
        t = uproot.open(p)["Events"]
        pt, phi = t[f"{met}_pt"].array(library="np"), t[f"{met}_phi"].array(library="np")
        ok.append(np.isfinite(pt) & np.isfinite(phi) & (np.abs(pt) <= 1e5))
    return np.concatenate(ok)


def _weight_ok(paths):
    return np.concatenate([np.isfinite(uproot.open(p)["Events"]["genWeight"].array(library="np")) for p in paths])


def test_finite_met_and_weight_steps_in_the_cutflow(plain, files):
    _, output = plain
    _, paths = files
    met_ok, weight_ok = _met_ok(paths), _weight_ok(paths)
    for channel in ("sl", "dl"):
        cut = output["cutflow"]["HH"][channel]
        assert list(cut)[:3] == ["all events", "finite MET", "finite weight"]
        assert cut["all events"] == len(met_ok)
        assert cut["finite MET"] == met_ok.sum() < len(met_ok)
        assert cut["finite weight"] == (met_ok & weight_ok).sum() < met_ok.sum()
        weighted = output["cutflow_weighted"]["HH"][channel]
        assert all(np.isfinite(v) for v in weighted.values())
    # the normalisation uses the finite genWeights only
    gen = np.concatenate([uproot.open(p)["Events"]["genWeight"].array(library="np") for p in paths]).astype(np.float64)
    assert output["sumw"]["HH"] == pytest.approx(gen[np.isfinite(gen)].sum())


def test_corrections_survive_bad_inputs(corrected, files):
    _, output = corrected
    _, paths = files
    for channel in ("sl", "dl"):
        cut = output["cutflow"]["HH"][channel]
        assert cut["finite MET"] < cut["all events"] and cut["jets"] > 0
        # NaN pileup inputs and genWeights fail the weight step, with every variation
        assert cut["finite weight"] < cut["finite MET"]
        assert all(np.isfinite(v) for v in output["cutflow_yield"]["HH"][channel].values())
    for h in output["histograms"].values():
        view = h.view(flow=True)
        assert np.isfinite(view.value).all() and np.isfinite(view.variance).all()
    assert {"JES_AbsoluteUp", "JERDown", "pileupUp", "muon_idDown"} <= set(output["histograms"]["met_pt"].axes["systematic"])


ALWAYS = {"sl": ["lep1_pt", "lep1_eta", "met_pt", "n_jets", "n_bjets", "n_fatjets"],
          "dl": ["lep1_pt", "lep1_eta", "lep2_pt", "m_ll", "met_pt", "n_jets", "n_bjets", "n_fatjets"]}


@pytest.mark.parametrize("which", ["plain", "corrected"])
def test_every_selected_event_is_in_every_always_defined_observable(request, which):
    _, output = request.getfixturevalue(which)
    for channel, names in ALWAYS.items():
        final = list(output["cutflow"]["HH"][channel])[-1]
        events = output["cutflow"]["HH"][channel][final]
        yield_ = output["cutflow_yield"]["HH"][channel][final]
        assert events > 20
        for name in names:
            h = output["histograms"][name][{"dataset": "HH", "channel": channel, "region": "inclusive",
                                             "systematic": "nominal"}]
            assert h.sum(flow=True).value == pytest.approx(yield_, rel=1e-9), (channel, name)
            assert output["undefined"]["HH"][channel][name] == 0


@pytest.fixture(scope="module")
def as_data(files):
    """The same files as data: unit weights, so histogram totals are event counts."""
    tmp, paths = files
    config = load_config(config_file(tmp, paths, {}, "data.yaml", kind="data"))
    return config, run(config)[0]


def test_undefined_counts_equal_an_independent_count(as_data, plain):
    _, output = as_data

    def counts(name, channel):
        h = output["histograms"][name][{"dataset": "HH", "channel": channel, "region": "inclusive",
                                         "systematic": "nominal"}]
        return h.values(flow=True)

    for channel in ("sl", "dl"):
        final = list(output["cutflow"]["HH"][channel])[-1]
        selected = output["cutflow"]["HH"][channel][final]
        undefined = output["undefined"]["HH"][channel]
        assert set(undefined) == set(output["histograms"]) and selected > 20
        for name, n in undefined.items():  # each selected event is filled or counted undefined
            assert counts(name, channel).sum() + n == selected, (channel, name)
        # n_jets / n_fatjets bins start at 0 (underflow first): which events lack a jet
        n_jets, n_fat = counts("n_jets", channel), counts("n_fatjets", channel)
        assert undefined["jet1_pt"] == n_jets[1] and undefined["jet2_pt"] == n_jets[1] + n_jets[2]
        assert undefined["m_bb"] == n_jets[1] + n_jets[2]
        assert undefined["fatjet1_pt"] == n_fat[1] > 0
    assert undefined["lep2_pt"] == undefined["m_ll"] == 0  # dl
    assert output["undefined"]["HH"]["sl"]["lep2_pt"] == output["cutflow"]["HH"]["sl"]["jets"]
    # simulation: the same counts per channel (nominal), merged over the chunks alike
    _, mc = plain
    assert set(mc["undefined"]["HH"]) == {"sl", "dl"}
    assert mc["undefined"]["HH"]["sl"]["lep2_pt"] == mc["cutflow"]["HH"]["sl"]["jets"]
