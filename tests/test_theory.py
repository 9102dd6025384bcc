"""Theory weights: the generator's LHEScaleWeight / LHEPdfWeight / PSWeight and their variations in the processor."""

from __future__ import annotations

import logging

import awkward as ak
import numpy as np
import pytest
import uproot
import yaml
from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

from crema.generate import write_nanoaod
from crema.workflows.config import load_config
from crema.workflows.run import build_processor, run


THEORY = {"scale": True, "pdf": {"convention": "hessian", "members": [1, 100]}, "ps": True}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("theory")
    return (tmp, write_nanoaod(tmp / "tt.root", "tt_sl", 1200, seed=11),
            write_nanoaod(tmp / "tt_plain.root", "tt_sl", 1200, seed=11, theory_weights=False))


def _arrays(path, *names):
    tree = uproot.open(path)["Events"]
    return [np.asarray(ak.to_numpy(tree[n].array()), dtype=np.float64) for n in names]


def test_generator_writes_the_nanoaod_conventions(files):
    _, path, plain = files
    scale, pdf, ps, n_genjet = _arrays(path, "LHEScaleWeight", "LHEPdfWeight", "PSWeight", "nGenJet")
    assert scale.shape[1] == 9 and pdf.shape[1] == 103 and ps.shape[1] == 4
    assert np.all(scale[:, 4] == 1.0) and np.all(pdf[:, 0] == 1.0)
    # [muR, muF] order, muR slowest: the muR = 2 (index 7) and muF = 2 (index 5) steps factorise into [8]
    np.testing.assert_allclose(scale[:, 8], scale[:, 7] * scale[:, 5], rtol=1e-5)
    assert 0.85 < scale[:, 7].mean() < 0.95 and 1.05 < scale[:, 1].mean() < 1.15  # ~10% on ttbar
    delta = np.sqrt(((pdf[:, 1:101] - 1) ** 2).sum(axis=1))
    assert 0.01 < delta.mean() < 0.1
    # ISR=2 ([0]) gives more jets than nominal, ISR=0.5 ([2]) fewer; both keep the rate within 3%
    mean_jets = [np.average(n_genjet, weights=w) for w in (ps[:, 0], np.ones(len(ps)), ps[:, 2])]
    assert mean_jets[0] > mean_jets[1] > mean_jets[2]
    assert abs(ps[:, 0].mean() - 1) < 0.03 and abs(ps[:, 2].mean() - 1) < 0.03
    # the weights draw no random numbers: the other branches are those of a file without them
    tree = uproot.open(plain)["Events"]
    assert "LHEScaleWeight" not in tree and "PSWeight" not in tree
    jets_plain = ak.to_numpy(ak.flatten(tree["Jet_pt"].array()))
    jets = ak.to_numpy(ak.flatten(uproot.open(path)["Events"]["Jet_pt"].array()))
    np.testing.assert_array_equal(jets, jets_plain)


def _config(tmp, path, name):
    config = {"luminosity_fb": 10.0, "output": str(tmp / "out"),
              "datasets": [{"name": "TT", "kind": "background", "process": "ttbar", "xsec_pb": 1.0, "files": [str(path)]}],
              "processor": {"name": "hhbbww", "options": {"event_selection": False,
                  "corrections": {"jets": False, "weights": False, "systematics": True, "theory": THEORY}}},
              "executor": {"name": "iterative", "chunksize": 100_000, "progress": False}}
    (tmp / name).write_text(yaml.safe_dump(config))
    return load_config(tmp / name)


def test_processor_fills_the_variations_as_numpy_does(files):
    tmp, path, _ = files
    config = _config(tmp, path, "theory.yaml")
    proc = build_processor(config)
    events = NanoEventsFactory.from_root({str(path): "Events"}, schemaclass=NanoAODSchema, mode="virtual",
                                         metadata={"dataset": "TT", "filename": str(path)}).events()
    out = proc.process(events)
    # the selected single-lepton events and their jet counts, then the weights straight from the file
    objects = proc.select(events)
    from crema.selections import hhbbww as sel

    selection, cuts = sel.channel_selection(objects, "sl", proc.selection.channels["sl"])
    mask = np.asarray(selection.all(*cuts))
    n_jets = ak.to_numpy(ak.num(objects.jets[mask], axis=1))
    gen, scale, pdf, ps = _arrays(path, "genWeight", "LHEScaleWeight", "LHEPdfWeight", "PSWeight")
    delta = np.sqrt(((pdf[:, 1:101] / pdf[:, :1] - 1) ** 2).sum(axis=1))
    expected = {"scale_muRUp": scale[:, 7], "scale_muRDown": scale[:, 1], "scale_muFUp": scale[:, 5],
                "scale_muFDown": scale[:, 3], "pdfUp": 1 + delta, "pdfDown": 1 - delta,
                "ps_isrUp": ps[:, 0], "ps_isrDown": ps[:, 2], "ps_fsrUp": ps[:, 1], "ps_fsrDown": ps[:, 3]}
    assert mask.sum() > 50
    h = out["histograms"]["n_jets"]
    for variation, factor in expected.items():
        want, _ = np.histogram(n_jets, bins=12, range=(0, 12), weights=(gen * factor)[mask])
        got = h[{"dataset": "TT", "channel": "sl", "region": "inclusive", "systematic": variation}].values()
        np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=variation)
    nominal = h[{"dataset": "TT", "channel": "sl", "region": "inclusive", "systematic": "nominal"}].values()
    assert not np.allclose(nominal, h[{"dataset": "TT", "channel": "sl", "region": "inclusive",
                                       "systematic": "ps_isrUp"}].values())


def test_missing_branch_gives_a_notice_and_no_variation(files, caplog):
    tmp, _, plain = files
    config = _config(tmp, plain, "plain.yaml")
    with caplog.at_level(logging.WARNING, logger="crema.workflows.run"):
        output, _ = run(config)
    notices = " ".join(r.getMessage() for r in caplog.records)
    for branch in ("LHEScaleWeight", "LHEPdfWeight", "PSWeight"):
        assert f"no branch '{branch}'" in notices and str(plain) in notices
    h = output["histograms"]["n_jets"]
    select = {"dataset": "TT", "channel": "sl", "region": "inclusive"}
    assert h[{**select, "systematic": "nominal"}].values().sum() > 0
    for variation in ("scale_muRUp", "pdfDown", "ps_fsrUp"):
        assert h[{**select, "systematic": variation}].values().sum() == 0  # left out, never a flat weight
