"""The jet calibration DNN inside the processors (corrections.jet_calibration), the shipped models, crema calib-report."""

from __future__ import annotations

import json
import math

import awkward as ak
import numpy as np
import pytest
import yaml
from coffea.nanoevents import NanoAODSchema, NanoEventsFactory
from test_executors import assert_same_output

from crema.corrections.era import load_era
from crema.corrections.jets import JetCorrector
from crema.models.jet_calibration import JetCalibration, shipped_model
from crema.processors.common import SampleInfo
from crema.processors.hhbbww import HHbbWWOptions, HHbbWWProcessor
from crema.processors.tth import TTHOptions, TTHProcessor
from crema.schema import ConfigError, from_dict
from crema.workflows.cli import main as cli
from crema.workflows.config import load_config
from crema.workflows.run import build_processor, run


SHIPPED = ("deepsets_generated", "jet_only_generated")
DNN = {"method": "dnn", "model": "deepsets_generated"}
SAMPLE = SampleInfo("TT", "background", "ttbar", 1.0)


def _events(path, **kw):
    return NanoEventsFactory.from_root({str(path): "Events"}, schemaclass=NanoAODSchema, mode="eager", **kw).events()


def _flat(x) -> np.ndarray:
    return np.asarray(ak.to_numpy(ak.flatten(x, axis=1)), dtype=np.float64)


def _file_order(jets, events) -> np.ndarray:
    """Flat indices that put corrected jets (re-sorted by corrected pt) back in file order, by pt_orig."""
    n = ak.to_numpy(ak.num(jets, axis=1))
    event = np.repeat(np.arange(len(n)), n)
    order = np.lexsort((_flat(jets.pt_orig), event))
    ref = np.lexsort((_flat(events.Jet.pt), event))
    inv = np.empty_like(ref)
    inv[ref] = np.arange(len(ref))
    return order[inv]


def _processor(corrections: dict, cls=HHbbWWProcessor, options=HHbbWWOptions):
    opts = from_dict(options, {"corrections": corrections}, "processor.options")
    return cls(opts, {"TT": SAMPLE}, load_era("2022"), 10.0)


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """Generated semi-leptonic ttbar with the PFNano tables."""
    from crema.generate import write_nanoaod

    tmp = tmp_path_factory.mktemp("calib_proc")
    return tmp, write_nanoaod(tmp / "tt_sl.root", "tt_sl", 600, seed=31, pfnano=True)


def _config(tmp, path, corrections: dict, name: str = "config.yaml", processor: str = "hhbbww"):
    config = {"luminosity_fb": 10.0, "output": str(tmp / "out"),
              "datasets": [{"name": "TT", "kind": "background", "process": "ttbar", "xsec_pb": 1.0, "files": [str(path)]}],
              "processor": {"name": processor, "options": {"corrections": corrections}},
              "executor": {"name": "iterative", "chunksize": 150, "progress": False}}
    out = tmp / name
    out.write_text(yaml.safe_dump(config))
    return out


# -- shipped models -------------------------------------------------------------------------
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_files_exist_load_and_calibrate(name, sample):
    directory = shipped_model(name)
    files = {p.name: p.stat().st_size for p in directory.iterdir()}
    assert {"model.onnx", "config.yaml", "transform.yaml"} <= set(files)
    assert sum(files.values()) < 2_000_000
    model = JetCalibration(directory)
    assert bool(model.features.constituents) == (name == "deepsets_generated")
    events = _events(sample[1], entry_stop=100)
    factor = _flat(model(events.Jet, events))
    assert len(factor) == len(_flat(events.Jet.pt)) > 100
    assert np.all(np.isfinite(factor)) and 0.7 < np.median(factor) < 1.5


def test_unknown_model_name_lists_the_shipped_ones():
    with pytest.raises(ConfigError, match="deepsets_generated.*jet_only_generated"):
        shipped_model("nope")


# -- configuration -------------------------------------------------------------------------------
@pytest.mark.parametrize("corrections, key", [
    ({"jet_calibration": {"method": "nn"}}, "processor.options.corrections.jet_calibration.method"),
    ({"jet_calibration": {"method": "dnn"}}, "processor.options.corrections.jet_calibration.model"),
    ({"jet_calibration": {"model": "deepsets_generated"}}, "processor.options.corrections.jet_calibration.model"),
    ({"jet_calibration": {"method": "dnn", "model": "x", "threads": 0}}, "processor.options.corrections.jet_calibration.threads"),
    ({"jets": False, "jet_calibration": DNN}, "processor.options.corrections.jet_calibration"),
    ({"jet_calibration": {"method": "dnn", "model": "x", "thread": 1}}, "processor.options.corrections.jet_calibration.thread"),
])
@pytest.mark.parametrize("options", [HHbbWWOptions, TTHOptions])
def test_config_errors_name_the_key(corrections, key, options):
    with pytest.raises(ConfigError) as err:
        from_dict(options, {"corrections": corrections}, "processor.options")
    assert str(err.value).startswith(key + ":")


@pytest.mark.parametrize("processor", ["hhbbww", "tth"])
def test_missing_model_fails_at_start_up(tmp_path, sample, processor):
    config = load_config(_config(tmp_path, sample[1], {"jet_calibration": {"method": "dnn", "model": "no_such_model"}},
                                 processor=processor))
    with pytest.raises(ConfigError, match=r"^processor\.options\.corrections\.jet_calibration\.model: .*no_such_model"):
        build_processor(config)


def test_required_branches_hold_the_dnn_inputs():
    plain = _processor({"systematics": False}).required_branches(SAMPLE)
    dnn = _processor({"systematics": False, "jet_calibration": DNN}).required_branches(SAMPLE)
    added = set(dnn) - set(plain)
    assert {"PV_npvs", "Jet_chHEF", "Jet_nConstituents", "PFCands_pt", "PFCands_charge", "PFCands_pdgId",
            "JetPFCands_jetIdx", "JetPFCands_pFCandsIdx", "JetSVs_sVIdx", "SV_pt"} <= added
    assert all("jet_calibration" in dnn[b] for b in added)
    jet_only = _processor({"systematics": False, "jet_calibration": {"method": "dnn", "model": "jet_only_generated"}})
    assert not any(b.startswith(("PFCands", "JetPFCands", "SV", "JetSVs")) for b in jet_only.required_branches(SAMPLE))


def test_plain_nanoaod_with_the_constituent_model_fails_in_preflight(tmp_path):
    from crema.generate import write_nanoaod
    from crema.workflows.run import InputError

    plain = write_nanoaod(tmp_path / "plain.root", "tt_sl", 20, seed=2)
    with pytest.raises(InputError, match=r"plain\.root.*(JetPFCands|JetSVs|PFCands|SV)_.*jet_calibration"):
        run(load_config(_config(tmp_path, plain, {"jet_calibration": DNN})))
    jet_only = {"jet_calibration": {"method": "dnn", "model": "jet_only_generated"}, "systematics": False}
    output, _ = run(load_config(_config(tmp_path, plain, jet_only, "jet_only.yaml")))
    assert output["cutflow"]["TT"]["sl"]["all events"] == 20


# -- the calibration inside the processor -------------------------------------------------------------
def test_processor_jets_are_pt_raw_times_the_dnn_factor(sample):
    events = _events(sample[1], entry_stop=300)
    proc = _processor({"jet_calibration": DNN, "jes_sources": ["Absolute"]})
    variants = proc.correct(events, SAMPLE)
    assert list(variants) == ["nominal", "JES_Absolute_up", "JES_Absolute_down", "JER_up", "JER_down"]
    jets = variants["nominal"].Jet

    # the factor computed independently, on the NanoAOD collection in file order
    factor = _flat(JetCalibration(shipped_model("deepsets_generated"))(events.Jet, events))
    pt_raw = _flat(events.Jet.pt) * (1 - _flat(events.Jet.rawFactor))
    mass_raw = _flat(events.Jet.mass) * (1 - _flat(events.Jet.rawFactor))
    back = _file_order(jets, events)  # the processor re-sorts jets by corrected pt
    np.testing.assert_array_equal(_flat(jets.pt_raw)[back], pt_raw)
    np.testing.assert_allclose(_flat(jets.pt_jec)[back], pt_raw * factor, rtol=1e-12)
    # JER smearing on top: nominal pt / pt_jec is the smearing factor, mass scaled alike
    smear = _flat(jets.pt) / _flat(jets.pt_jec)
    np.testing.assert_allclose(_flat(jets.mass)[back], (mass_raw * factor) * smear[back], rtol=1e-9)
    assert 0.02 < np.std(smear) < 0.3
    # the JES variation is relative, on top of the DNN-calibrated, smeared jets
    up = variants["JES_Absolute_up"].Jet
    ratio = _flat(up.pt)[_file_order(up, events)] / _flat(jets.pt)[back]
    assert np.all((ratio > 1.0) & (ratio < 1.5)) and 1.0 < np.median(ratio) < 1.05
    # type-1 MET: moved by the change of the jets above 15 GeV
    met, raw_met = variants["nominal"].PuppiMET, events.PuppiMET
    moved = ak.where(jets.pt > 15, jets.pt - jets.pt_orig, 0.0)
    px = raw_met.pt * np.cos(raw_met.phi) - ak.sum(moved * np.cos(jets.phi), axis=1)
    np.testing.assert_allclose(ak.to_numpy(met.pt * np.cos(met.phi)), ak.to_numpy(px), rtol=1e-9, atol=1e-9)


def test_selection_sees_the_calibrated_jets(sample):
    events = _events(sample[1], entry_stop=300)
    proc = _processor({"jet_calibration": DNN, "systematics": False})
    corrected = proc.correct(events, SAMPLE)["nominal"]
    objects = proc.select(corrected)
    selected = _flat(objects.jets.pt)
    assert len(selected) > 100
    assert np.isin(selected, _flat(corrected.Jet.pt)).all()
    assert not np.isin(selected, _flat(events.Jet.pt)).any()


def test_corrector_takes_any_factor_and_adds_the_residual_on_data(sample):
    events = _events(sample[1], entry_stop=50)
    era = load_era("2022")
    constant = lambda jets, events: ak.ones_like(jets.pt, dtype=np.float64) * 1.1
    factor = JetCorrector(era, calibration=constant).jec_factor(events)
    np.testing.assert_allclose(factor, 1.1, rtol=1e-12)
    data = ak.without_field(events, "genWeight")
    reference = JetCorrector(era)
    residual = reference.jec_factor(data) / reference.jec_factor(events)  # data / simulation JEC
    jets = JetCorrector(era, calibration=constant).correct(data)  # no smearing on data
    assert 0.9 < np.median(residual) < 1.1 and np.std(residual) > 0
    np.testing.assert_allclose(np.sort(_flat(jets.pt)), np.sort(_flat(data.Jet.pt) * (1 - _flat(data.Jet.rawFactor)) * 1.1 * residual),
                               rtol=1e-9)


# -- executors ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dnn_config(sample):
    tmp, path = sample
    return _config(tmp, path, {"jet_calibration": DNN, "jes_sources": ["Absolute"], "weights": False}, "dnn.yaml")


@pytest.fixture(scope="module")
def iterative(dnn_config):
    return run(load_config(dnn_config))[0]


def test_dnn_processor_same_on_iterative_and_futures(dnn_config, iterative):
    output, report = run(load_config(dnn_config).with_executor(name="futures", workers=2))
    assert sum(report.processed.values()) == 600
    assert_same_output(iterative, output)
    assert "JES_AbsoluteUp" in list(iterative["histograms"]["jet1_pt"].axes["systematic"])


def test_dnn_processor_same_on_dask(dnn_config, iterative):
    """dask LocalCluster (two worker processes): the wrapper travels pickled, sessions start on the workers."""
    output, report = run(load_config(dnn_config).with_executor(name="dask", workers=2))
    assert sum(report.processed.values()) == 600
    assert_same_output(iterative, output)


def test_dnn_changes_the_histograms(sample, iterative):
    tmp, path = sample
    jec = run(load_config(_config(tmp, path, {"jes_sources": ["Absolute"], "weights": False}, "jec.yaml")))[0]
    h_dnn = iterative["histograms"]["jet1_pt"][{"dataset": "TT", "channel": "sl", "region": "inclusive", "systematic": "nominal"}]
    h_jec = jec["histograms"]["jet1_pt"][{"dataset": "TT", "channel": "sl", "region": "inclusive", "systematic": "nominal"}]
    assert h_dnn.sum().value > 0 and not np.array_equal(h_dnn.values(), h_jec.values())


def test_tth_processor_calibrates_its_jets(sample):
    tmp, path = sample
    config = load_config(_config(tmp, path, {"jet_calibration": DNN}, "tth.yaml", processor="tth"))
    proc = build_processor(config)
    assert isinstance(proc, TTHProcessor) and proc.jet_corrector.calibration is not None
    assert "PFCands_pt" in proc.required_branches(SAMPLE)
    output, _ = run(config, proc)
    plain = run(load_config(_config(tmp, path, None, "tth_plain.yaml", processor="tth")))[0]
    assert output["cutflow"]["TT"]["sl"]["all events"] == 600
    assert output["cutflow"] != plain["cutflow"] or not np.array_equal(
        output["histograms"]["m_bb"].values(), plain["histograms"]["m_bb"].values())


# -- report ------------------------------------------------------------------------------------------
def test_calib_report_writes_the_numbers(tmp_path, capsys):
    out = tmp_path / "report"
    assert cli(["calib-report", "-o", str(out), "--scale", "0.004", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "DNN vs JEC: resolution" in printed and "goal" not in printed
    report = json.loads((out / "calib_report.json").read_text())
    assert report["model_name"] == "deepsets_generated"
    assert all(s["seed"] > 1000 for s in report["samples"])  # held out: not the training seeds
    for key in ("resolution", "flavour_spread", "median_response"):
        for method in ("raw", "jec", "dnn", "pnet"):
            assert math.isfinite(report[key][method]) and report[key][method] >= 0, (key, method)
    assert 0.9 < report["median_response"]["jec"] < 1.1
    assert report["resolution"]["raw"] > 0.03
    assert set(report["per_flavour"]) == {"uds", "c", "b", "g"}
    assert set(report["per_eta"]) == {"0.0-1.3", "1.3-2.5", "2.5-3.0", "3.0-5.0"}
    assert math.isfinite(report["per_eta"]["0.0-1.3"]["resolution"]["dnn"])
    jec, dnn = report["resolution"]["jec"], report["resolution"]["dnn"]
    assert report["dnn_vs_jec"]["resolution_narrower"] == pytest.approx(1 - dnn / jec, rel=1e-4)
    for name in ("response_vs_pt.png", "resolution_vs_pt.png", "flavour_response.png"):
        assert (out / name).stat().st_size > 1000
