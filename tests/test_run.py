"""crema run on the real NanoAODv12 file: normalisation, outputs, bad input, config errors."""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot
import yaml

from crema.schema import ConfigError
from crema.workflows.cli import main as cli
from crema.workflows.config import load_config
from crema.workflows.run import InputError, run

from conftest import REAL_NANO


XSEC, LUMI = 923.6, 7.98


def write_config(tmp_path: Path, files, name="config.yaml", options=None, **executor) -> Path:
    config = {
        "luminosity_fb": LUMI,
        # the real file is a skim without the era's HLT paths: no event-level steps
        "processor": {"name": "hhbbww", "options": {"event_selection": False, **(options or {})}},
        "executor": {"name": "iterative", "chunksize": 64, "progress": False, **executor},
        "output": str(tmp_path / "out"),
        "datasets": [{"name": "TT", "kind": "background", "process": "ttbar", "xsec_pb": XSEC,
                      "files": [str(f) for f in files]}],
    }
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


def write_subset(dst: Path, entry_stop: int | None = None, drop: tuple[str, ...] = ()) -> Path:
    """Rewrite the collections crema reads from the real file (optionally fewer events or branches)."""
    tree = uproot.open(REAL_NANO)["Events"]
    keep = [k for k in tree.keys()
            if k.startswith(("Electron_", "Muon_", "Jet_", "FatJet_", "PuppiMET_", "MET_")) and k not in drop]
    arrays = tree.arrays(keep + ["genWeight", "event", "run", "luminosityBlock"], entry_stop=entry_stop, how=dict)
    groups, flat = defaultdict(dict), {}
    for name, array in arrays.items():
        if array.ndim == 2:
            coll, field = name.split("_", 1)
            groups[coll][field] = array
        else:
            flat[name] = array
    data = {**flat, **{c: ak.zip(f) for c, f in groups.items()}}
    with uproot.recreate(dst) as f:
        f.mktree("Events", {k: v.type.content for k, v in data.items()}, counter_name=lambda c: "n" + c)
        f["Events"].extend(data)
    return dst


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("real")
    return run(load_config(write_config(tmp, [REAL_NANO])))


def test_normalisation_to_xsec_times_lumi(real_run):
    output, report = real_run
    sumw = float(uproot.open(REAL_NANO)["Events"]["genWeight"].array(library="np").astype(np.float64).sum())
    assert output["sumw"]["TT"] == pytest.approx(sumw)
    assert output["scale"]["TT"] == pytest.approx(XSEC * 1000 * LUMI / sumw)
    # histogram content (fill path) equals the weighted cutflow (independent path) times the scale
    h = output["histograms"]["n_jets"][{"dataset": "TT", "channel": "sl", "region": "inclusive", "systematic": "nominal"}]
    selected = output["cutflow_weighted"]["TT"]["sl"]["jets"]
    assert h.sum(flow=True).value == pytest.approx(XSEC * 1000 * LUMI * selected / sumw)
    assert output["cutflow"]["TT"]["sl"]["jets"] > 0
    assert report.processed == {str(REAL_NANO): 200} and not report.lost and not report.bad_files


def test_nothing_passes_gives_valid_empty_histograms(real_run):
    output, _ = real_run
    # no real ttbar event of this file passes the DL selection: DL histograms exist and are empty
    assert output["cutflow"]["TT"]["dl"]["jets"] == 0
    for h in output["histograms"].values():
        assert h[{"dataset": "TT", "channel": "dl"}].sum(flow=True).value == 0


def test_empty_file_gives_empty_output(tmp_path):
    empty = write_subset(tmp_path / "empty.root", entry_stop=0)
    output, report = run(load_config(write_config(tmp_path, [empty])))
    assert report.processed == {str(empty): 0} and not report.lost  # a zero-length chunk went through
    assert set(output["histograms"]) >= {"n_jets", "m_bb"}
    assert all(h.sum(flow=True).value == 0 for h in output["histograms"].values())


def test_outputs_and_root_naming(tmp_path):
    assert cli([ "run", str(write_config(tmp_path, [REAL_NANO])), "-o", str(tmp_path / "o"), "--no-plots"]) == 0
    out = tmp_path / "o"
    assert {p.name for p in out.iterdir()} >= {"config.yaml", "output.coffea", "histograms.root", "cutflow.json"}
    cutflow = json.loads((out / "cutflow.json").read_text())
    assert cutflow["TT"]["sl"]["all events"]["events"] == 200
    from coffea.util import load

    output = load(out / "output.coffea")
    expected = output["histograms"]["m_bb"][{"dataset": "TT", "channel": "sl", "region": "inclusive", "systematic": "nominal"}]
    with uproot.open(out / "histograms.root") as f:
        values = f["sl_inclusive_m_bb/ttbar"].values()
    np.testing.assert_allclose(values, expected.values())
    assert values.sum() > 0
    # the written config runs again as is
    assert load_config(out / "config.yaml").datasets[0].files == [str(REAL_NANO)]


def test_truncated_file_is_named_or_skipped(tmp_path):
    bad = tmp_path / "truncated.root"
    data = REAL_NANO.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated.root"):
        run(load_config(write_config(tmp_path, [REAL_NANO, bad])))
    output, report = run(load_config(write_config(tmp_path, [REAL_NANO, bad], skip_bad_files=True)))
    assert list(report.bad_files) == [str(bad)]
    assert "truncated" in report.bad_files[str(bad)]
    assert report.to_dict()["bad_files"][0]["events_lost"] == 200
    assert report.processed == {str(REAL_NANO): 200}
    assert output["nevents"]["TT"] == 200
    assert any("truncated.root" in line for line in report.lines())


def test_corrupt_baskets_lose_only_their_chunks(tmp_path):
    bad = tmp_path / "corrupt.root"
    shutil.copy(REAL_NANO, bad)
    bad.chmod(0o644)
    tree = uproot.open(bad)["Events"]
    branch = tree["Jet_pt"]
    start = branch.member("fBasketSeek")[0]
    with open(bad, "r+b") as f:  # overwrite the compressed payload of Jet_pt's only basket
        f.seek(int(start) + 100)
        f.write(b"\x00garbage" * 50)
    with pytest.raises(InputError, match="corrupt.root"):
        run(load_config(write_config(tmp_path, [bad])))
    output, report = run(load_config(write_config(tmp_path, [REAL_NANO, bad], skip_bad_files=True)))
    assert report.lost == {str(bad): 200}
    assert report.processed.get(str(REAL_NANO)) == 200
    assert any("corrupt.root" in line and "lost 200" in line for line in report.lines())


def test_missing_branch_names_branch_and_use(tmp_path):
    partial = write_subset(tmp_path / "nobtag.root", drop=("Jet_btagPNetB",))
    with pytest.raises(InputError, match=r"nobtag.root: branch 'Jet_btagPNetB' is missing; it is needed by b-tagging"):
        run(load_config(write_config(tmp_path, [partial])))


def test_missing_jet_flavour_is_named_before_any_chunk(tmp_path):
    # simulation fills b-tag efficiency maps from every selected jet's hadronFlavour
    partial = write_subset(tmp_path / "noflavour.root", drop=("Jet_hadronFlavour",))
    with pytest.raises(InputError, match=r"noflavour.root: branch 'Jet_hadronFlavour' is missing; it is needed by "
                                         r"b-tag efficiency"):
        run(load_config(write_config(tmp_path, [partial])))


@pytest.mark.parametrize("name,process,options", [
    ("hhbbww", "tt_sl", {}), ("hhbbww", "tt_sl", {"corrections": {"systematics": True}}),
    ("tth", "tt_sl", {}), ("ttbar_eft", "tt_dl", {})], ids=["hhbbww", "hhbbww-systematics", "tth", "ttbar_eft"])
def test_every_branch_read_is_declared(tmp_path, name, process, options):
    """preflight checks the branches a processor declares: one read but not declared would fail inside a
    chunk with awkward's error instead of an error naming the file and the branch."""
    import warnings

    from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

    from crema.generate import write_nanoaod
    from crema.workflows.run import build_processor, required_branches

    path = write_nanoaod(tmp_path / "tt.root", process, 300, seed=5)
    config = {"luminosity_fb": LUMI, "processor": {"name": name, "options": options},
              "executor": {"name": "iterative", "progress": False}, "output": str(tmp_path / "out"),
              "datasets": [{"name": "TT", "kind": "background", "process": "ttbar", "xsec_pb": XSEC,
                            "files": [str(path)]}]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    config = load_config(tmp_path / "c.yaml")
    proc = build_processor(config)
    log: list = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        events = NanoEventsFactory.from_root({str(path): "Events"}, schemaclass=NanoAODSchema, mode="virtual",
                                             access_log=log, metadata={"dataset": "TT", "filename": str(path),
                                                                       "treename": "Events", "entrystart": 0,
                                                                       "entrystop": 300}).events()
        proc.process(events)
    dataset = config.datasets[0]
    optional = getattr(proc, "optional_branches", lambda sample: {})
    declared = set(required_branches(proc, dataset)) | set(optional(dataset.sample))
    read = {a.branch for a in log}
    collections = {b.split("_", 1)[0] for b in declared if "_" in b}
    counters = {f"n{c}" for c in collections}  # NanoEvents reads each collection's counter itself
    assert len(read) > 40 and read - counters <= declared, sorted(read - counters - declared)


def test_real_file_lacks_cvnotb_and_says_so(tmp_path):
    sel = yaml.safe_load((Path(__file__).parents[1] / "src/crema/configs/selection/hhbbww_run3.yaml").read_text())
    sel["btag"]["score"] = "btagPNetCvNotB"
    (tmp_path / "cvnotb.yaml").write_text(yaml.safe_dump(sel))
    cfg = write_config(tmp_path, [REAL_NANO], options={"selection": str(tmp_path / "cvnotb.yaml")})
    with pytest.raises(InputError, match="Jet_btagPNetCvNotB"):
        run(load_config(cfg))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: c.update(luminosity="x"), r"config.yaml: luminosity: unknown key"),
        (lambda c: c.update(luminosity_fb="x"), r"luminosity_fb: expected a number"),
        (lambda c: c["datasets"][0].pop("xsec_pb"), r"datasets\[0\].xsec_pb: simulated datasets need a cross section"),
        (lambda c: c["datasets"][0].update(kind="mc"), r"datasets\[0\].kind: expected one of"),
        (lambda c: c["executor"].update(name="spark"), r"executor.name: expected one of"),
        (lambda c: c["executor"].update(chunksize=0), r"executor.chunksize: must be >= 1"),
        (lambda c: c["processor"]["options"].update(met="CaloMET"), r"processor.options.met: expected one of"),
        (lambda c: c["processor"]["options"].update(selection="nope"), r"selection 'nope': no such builtin"),
        (lambda c: c.update(era="1999"), r"era '1999': no such builtin era"),
        (lambda c: c["datasets"][0].update(files=["/nowhere/*.root"]), r"datasets.TT.files: '/nowhere/\*.root' matches no file"),
    ],
)
def test_config_errors_name_the_key(tmp_path, change, message):
    path = write_config(tmp_path, [REAL_NANO])
    config = yaml.safe_load(path.read_text())
    change(config)
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=message):
        run(load_config(path))


def test_cli_reports_config_error(tmp_path, capsys):
    path = write_config(tmp_path, [REAL_NANO])
    path.write_text(path.read_text().replace("luminosity_fb", "lumi"))
    assert cli(["run", str(path)]) == 2
    assert "lumi: unknown key" in capsys.readouterr().err


def test_samples_generated_in_parallel_equal_one_process(tmp_path):
    """generate_inputs writes one file per dataset with the run's executor workers; each file is the same
    as written by one process (one seed per dataset), and the config points at the files."""
    from crema.schema import from_dict
    from crema.workflows.config import Config
    from crema.workflows.run import generate_inputs

    datasets = [{"name": n, "kind": "background", "process": p, "xsec_pb": 1.0,
                 "generate": {"process": p, "events": e, "seed": s, "negative_weights": False, **extra}}
                for n, p, e, s, extra in (("W", "wjets", 300, 1, {"filter": {"system_pt_max": 150}}),
                                          ("T", "tt_sl", 200, 2, {}), ("D", "dy", 100, 3, {}))]
    config = from_dict(Config, {"luminosity_fb": 1.0, "datasets": datasets}, "")
    serial = generate_inputs(config, tmp_path / "one")
    parallel = generate_inputs(config.with_executor(name="futures", workers=2), tmp_path / "two")
    for a, b in zip(serial.datasets, parallel.datasets):
        assert Path(a.files[0]).parent == tmp_path / "one" and Path(b.files[0]).parent == tmp_path / "two"
        with uproot.open(a.files[0]) as fa, uproot.open(b.files[0]) as fb:
            for branch in ("event", "genWeight", "Jet_pt", "Jet_btagPNetB", "Muon_pt"):
                assert ak.array_equal(fa["Events"][branch].array(), fb["Events"][branch].array()), (a.name, branch)
            assert fa["Runs"]["genEventSumw"].array()[0] == fb["Runs"]["genEventSumw"].array()[0]


@pytest.mark.parametrize("name", ["iterative", "futures"])
def test_progress_false_draws_no_progress_bar(tmp_path, capfd, name):
    """coffea 2026.9 draws these executors' bars whatever ``status`` says; crema mutes them."""
    config = load_config(write_config(tmp_path, [REAL_NANO], chunksize=100, maxchunks=1)).with_executor(name=name,
                                                                                                     workers=1)
    capfd.readouterr()
    run(config)
    quiet = capfd.readouterr()
    run(config.with_executor(progress=True))
    shown = capfd.readouterr()
    assert "Processing" not in quiet.out + quiet.err
    assert "Processing" in shown.out + shown.err  # the check can see a bar
