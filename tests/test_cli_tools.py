"""Command-line tools beyond run/demo: jobqueue settings, b-tag efficiency maps, variation plots."""

from __future__ import annotations

from pathlib import Path

import correctionlib
import pytest
import yaml

from crema.workflows.cli import main as cli
from crema.workflows.config import load_config
from crema.workflows.run import jobqueue_cluster

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_example_configs_validate(tmp_path):
    # the example configs are valid apart from their sample globs
    for path in CONFIGS.glob("*.yaml"):
        data = yaml.safe_load(path.read_text())
        for d in data["datasets"]:
            d["files"] = [str(Path(__file__).parent / "data" / "nano_tt_v12.root")]
        (tmp_path / path.name).write_text(yaml.safe_dump(data))
        assert load_config(tmp_path / path.name).datasets


@pytest.mark.parametrize("kind, directive", [("slurm", "#SBATCH"), ("htcondor", "RequestMemory")])
def test_jobqueue_settings_reach_the_job_script(kind, directive):
    jq = load_config_jobqueue(kind)
    cluster = jobqueue_cluster(jq)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert directive in script and "--nthreads 1" in script
    # the workers start without dask's MALLOC_TRIM_THRESHOLD_ (glibc's adaptive allocation, as a local run)
    # and with quieter event loops, as a local cluster's
    import re

    import dask.config

    setting = dask.config.deserialize(re.search(r"export DASK_INTERNAL_INHERIT_CONFIG=([A-Za-z0-9+/=]+)", script)[1])
    assert setting == {"distributed": {"nanny": {"pre-spawn-environ": {"MALLOC_TRIM_THRESHOLD_": None}},
                                       "admin": {"tick": {"interval": "1s"}, "system-monitor": {"interval": "2s"}}}}


def load_config_jobqueue(kind):
    from crema.schema import from_dict
    from crema.workflows.config import JobQueue

    options = {"disk": "1GB"} if kind == "htcondor" else {"walltime": "01:00:00"}
    # the test's scheduler: no dashboard, HTTP on a free port (8787 may be taken by another cluster)
    options["scheduler_options"] = {"dashboard_address": "127.0.0.1:0", "dashboard": False}
    return from_dict(JobQueue, {"kind": kind, "jobs": 2, "cores": 1, "memory": "2GB", "options": options}, "jobqueue")


@pytest.fixture(scope="module")
def generated_config(tmp_path_factory):
    from crema.generate import write_nanoaod

    tmp = tmp_path_factory.mktemp("cli")
    path = write_nanoaod(tmp / "tt_sl.root", "tt_sl", 4000, seed=21)  # W -> cs gives charm jets
    config = {"luminosity_fb": 1.0, "output": str(tmp / "out"),
              "processor": {"name": "hhbbww", "options": {"corrections": {"systematics": True}}},
              "executor": {"name": "iterative", "progress": False},
              "datasets": [{"name": "TT", "kind": "background", "process": "ttbar", "xsec_pb": 1.0, "files": [str(path)]}]}
    cfg = tmp / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    return cfg


def test_btag_efficiency_map(generated_config, tmp_path):
    out = tmp_path / "eff.json.gz"
    assert cli(["btag-eff", str(generated_config), "-o", str(out), "--no-progress"]) == 0
    eff = correctionlib.CorrectionSet.from_file(str(out))["btag_efficiency"]
    names = [i.name for i in eff.inputs]
    def at(flavour):
        args = {"pt": 60.0, "abseta": 0.5, "flavor": flavour}
        return eff.evaluate(*[args[n] for n in names if n in args])
    # generated PNet M efficiencies: ~0.83 for b, ~0.15 for c, ~0.01 for light (docs/generator.md)
    assert 0.65 < at(5) < 0.95
    assert at(0) < 0.08
    assert at(0) < at(4) < at(5)


def test_variation_plots(generated_config, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli(["run", str(generated_config), "-o", str(out), "--no-plots", "--no-progress"]) == 0
    assert cli(["plot", str(out), "--systematic", "JES_FlavorQCD", "--observable", "jet1_pt"]) == 0
    names = {p.name for p in (out / "plots").glob("*.png")}
    # semi-leptonic ttbar fills the SL channel; an empty DL panel is skipped, never drawn blank
    assert "JES_FlavorQCD_sl_inclusive_jet1_pt.png" in names
    assert names <= {"JES_FlavorQCD_sl_inclusive_jet1_pt.png", "JES_FlavorQCD_dl_inclusive_jet1_pt.png"}
    assert cli(["plot", str(out), "--systematic", "JES_Nothing"]) == 2
    assert "no variation 'JES_Nothing'" in capsys.readouterr().err
