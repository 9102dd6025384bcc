"""Corrections and systematic variations inside the HH->bbWW processor (generated ttbar)."""

from __future__ import annotations

import correctionlib
import numpy as np
import pytest
import uproot
import yaml

from crema.corrections.era import resolve_correction_file
from crema.workflows.config import load_config
from crema.workflows.outputs import write_root
from crema.workflows.run import run

from test_executors import assert_same_output



def write(tmp, files, corrections, name="config.yaml"):
    config = {"luminosity_fb": 10.0, "output": str(tmp / "out"),
              "datasets": [{"name": "TT", "kind": "background", "process": "ttbar", "xsec_pb": 1.0,
                            "files": [str(f) for f in files]}],
              "processor": {"name": "hhbbww", "options": {"corrections": corrections}},
              "executor": {"name": "iterative", "chunksize": 1000, "progress": False}}
    path = tmp / name
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    from crema.generate import write_nanoaod

    tmp = tmp_path_factory.mktemp("syst")
    return tmp, write_nanoaod(tmp / "tt_sl.root", "tt_sl", 3000, seed=5)


@pytest.fixture(scope="module")
def full(sample):
    tmp, path = sample
    config = load_config(write(tmp, [path], {"jets": True, "weights": True, "systematics": True}))
    return config, run(config)[0]


def one(output, observable, systematic, channel="sl", region="inclusive"):
    return output["histograms"][observable][{"dataset": "TT", "channel": channel, "region": region,
                                              "systematic": systematic}]


def mean(h):
    return float((h.values() * h.axes[0].centers).sum() / h.values().sum())


def test_axis_holds_every_variation(full):
    _, output = full
    axis = list(output["histograms"]["jet1_pt"].axes["systematic"])
    assert axis[0] == "nominal"
    for name in ("JES_AbsoluteUp", "JES_FlavorQCDDown", "JERUp", "JERDown", "pileupUp", "muon_idDown",
                 "electron_idUp"):
        assert name in axis
    assert len(axis) == 1 + 2 * 11 + 2 + 2 * 4  # nominal, 11 JES sources, JER, 4 weights
    for name in axis:
        assert one(output, "jet1_pt", name).sum().value > 0, name


def test_jes_variations_bracket_nominal(full):
    _, output = full
    up, nom, down = (mean(one(output, "jet1_pt", s)) for s in ("JES_AbsoluteUp", "nominal", "JES_AbsoluteDown"))
    assert up > nom > down
    # shape variations redo the selection: the number of selected jets changes
    assert one(output, "n_jets", "JES_AbsoluteUp").values().tolist() != one(output, "n_jets", "nominal").values().tolist()


def test_weight_variation_is_the_pileup_reweighting(full, sample):
    """pileupUp / nominal totals equal an independent correctionlib evaluation on the same events."""
    config, output = full
    _, path = sample
    ntrue = uproot.open(path)["Events"]["Pileup_nTrueInt"].array(library="np").astype(np.float64)
    era_pu = correctionlib.CorrectionSet.from_file(str(resolve_correction_file("puWeights_2018_UL.json.gz")))
    pu = era_pu["Collisions18_UltraLegacy_goldenJSON"]
    ratio_all = pu.evaluate(ntrue, "up") / pu.evaluate(ntrue, "nominal")
    # unselected events cannot be told apart here, so compare the inclusive cutflow-level ratio bounds
    nominal, up = one(output, "n_jets", "nominal").sum().value, one(output, "n_jets", "pileupUp").sum().value
    assert ratio_all.min() <= up / nominal <= ratio_all.max()
    assert up != pytest.approx(nominal, rel=1e-6)
    # and the weight variations do not move events: the same bins are filled
    assert (one(output, "n_jets", "pileupUp").values() > 0).tolist() == (one(output, "n_jets", "nominal").values() > 0).tolist()


def test_corrections_change_nominal_and_systematics_switch(sample, full):
    tmp, path = sample
    _, corrected = full
    plain, _ = run(load_config(write(tmp, [path], None, "plain.yaml")))
    quick, _ = run(load_config(write(tmp, [path], {"systematics": False}, "quick.yaml")))
    assert list(plain["histograms"]["jet1_pt"].axes["systematic"]) == ["nominal"]
    assert list(quick["histograms"]["jet1_pt"].axes["systematic"]) == ["nominal"]
    # the quick run's nominal is the full run's nominal
    np.testing.assert_allclose(one(quick, "jet1_pt", "nominal").values(), one(corrected, "jet1_pt", "nominal").values(), rtol=1e-12)
    # JER smearing and weights change the nominal relative to no corrections
    assert one(plain, "jet1_pt", "nominal").values().tolist() != one(corrected, "jet1_pt", "nominal").values().tolist()


def test_systematics_identical_on_dask(full):
    config, output = full
    other, _ = run(config.with_executor(name="dask", workers=2))
    assert_same_output(output, other)


def test_root_names_variations(full, tmp_path):
    config, output = full
    path = write_root(output, config.samples, tmp_path / "h.root")
    with uproot.open(path) as f:
        keys = {k.split(";")[0] for k in f["sl_inclusive_jet1_pt"].keys()}
        assert {"ttbar", "ttbar_JES_AbsoluteUp", "ttbar_JES_AbsoluteDown", "ttbar_pileupUp"} <= keys
        np.testing.assert_allclose(f["sl_inclusive_jet1_pt/ttbar_JERUp"].values(), one(output, "jet1_pt", "JERUp").values())


def test_root_histograms_equal_uproots_own_conversion(full, tmp_path):
    """The TH1Ds built from arrays are those uproot writes from the weighted hist objects: every
    statistics member, the axis, values and variances with flow."""
    from crema.workflows.outputs import process_histograms

    config, output = full
    path = write_root(output, config.samples, tmp_path / "fast.root")
    h = output["histograms"]["jet1_pt"]
    with uproot.recreate(tmp_path / "reference.root") as ref:
        for (channel, region, syst, process), one_hist in process_histograms(h, config.samples).items():
            if region == "inclusive" and syst in ("nominal", "JERUp"):
                ref[f"{channel}_{process}_{syst}"] = one_hist
    checked = 0
    with uproot.open(path) as fast, uproot.open(tmp_path / "reference.root") as ref:
        for key in ref.keys(cycle=False):
            channel, process, syst = key.split("_", 2)
            name = process if syst == "nominal" else f"{process}_{syst}"
            a, b = fast[f"{channel}_inclusive_jet1_pt/{name}"], ref[key]
            for member in ("fEntries", "fTsumw", "fTsumw2", "fTsumwx", "fTsumwx2", "fTitle"):
                assert a.member(member) == b.member(member), (key, member)
            for member in ("fName", "fTitle", "fNbins", "fXmin", "fXmax"):
                assert a.member("fXaxis").member(member) == b.member("fXaxis").member(member), (key, member)
            np.testing.assert_array_equal(a.values(flow=True), b.values(flow=True))
            np.testing.assert_array_equal(a.variances(flow=True), b.variances(flow=True))
            checked += 1
    assert checked >= 4 and one(output, "jet1_pt", "JERUp").values().sum() > 0


def test_jes_sources_choose_the_variations(sample):
    from crema.corrections.era import load_era
    from crema.processors.hhbbww import CorrectionOptions, HHbbWWOptions, HHbbWWProcessor
    from crema.schema import ConfigError

    def build(sources):
        options = HHbbWWOptions(corrections=CorrectionOptions(jes_sources=sources))
        return HHbbWWProcessor(options, {}, load_era("2022"), 1.0)

    proc = build(["Absolute_2022", "FlavorQCD"])
    assert proc.shape_variations == ["JES_Absolute_2022_up", "JES_Absolute_2022_down", "JES_FlavorQCD_up",
                                     "JES_FlavorQCD_down", "JER_up", "JER_down"]
    assert "JES_FlavorQCDDown" in proc.systematics and "JES_AbsoluteUp" not in proc.systematics
    with pytest.raises(ConfigError, match="unknown source 'Flavour'.*FlavorQCD"):
        build(["Flavour"])
