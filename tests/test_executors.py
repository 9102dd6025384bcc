"""Generated samples through every executor, and the README's demo command end to end."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import yaml
from coffea.util import load

from crema.workflows.cli import main as cli
from crema.workflows import opentrees
from crema.workflows.config import load_config
from crema.workflows.run import run


@pytest.fixture(scope="module")
def config_path(tmp_path_factory):
    from crema.generate import write_nanoaod

    tmp = tmp_path_factory.mktemp("gen")
    datasets = []
    for name, process, kind, seed in [("HH_SL", "hh_sl", "signal", 1), ("HH_DL", "hh_dl", "signal", 2),
                                      ("TT_DL", "tt_dl", "background", 3)]:
        path = write_nanoaod(tmp / f"{name}.root", process, 1500, seed=seed)
        datasets.append({"name": name, "kind": kind, "process": process, "xsec_pb": 1.0, "files": [str(path)]})
    config = {"luminosity_fb": 10.0, "datasets": datasets, "output": str(tmp / "out"),
              "executor": {"name": "iterative", "chunksize": 400, "progress": False}}
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def iterative(config_path):
    return run(load_config(config_path))[0]


def assert_same_output(a, b):
    assert a["cutflow"] == b["cutflow"]
    assert a["sumw"] == pytest.approx(b["sumw"], rel=1e-12)
    assert a["histograms"].keys() == b["histograms"].keys()
    for name, h in a["histograms"].items():
        other = b["histograms"][name]
        assert list(h.axes["dataset"]) == list(other.axes["dataset"])
        # chunk outputs merge in completion order: equal up to float summation order
        np.testing.assert_allclose(h.values(flow=True), other.values(flow=True), rtol=1e-12, atol=0, err_msg=name)
        np.testing.assert_allclose(h.variances(flow=True), other.variances(flow=True), rtol=1e-12, atol=0, err_msg=name)


@pytest.mark.parametrize("executor", ["futures", "dask"])
def test_executors_give_identical_histograms(config_path, iterative, executor):
    output, report = run(load_config(config_path).with_executor(name=executor, workers=2))
    assert sum(report.processed.values()) == 4500
    assert_same_output(iterative, output)


def test_signals_land_in_their_channels(iterative):
    cut = {ch: {ds: c[ch]["jets"] / c[ch]["all events"] for ds, c in iterative["cutflow"].items()} for ch in ("sl", "dl")}
    assert cut["sl"]["HH_SL"] > 0.3 and cut["dl"]["HH_DL"] > 0.3
    assert cut["dl"]["HH_SL"] < 0.05 and cut["sl"]["HH_DL"] < cut["dl"]["HH_DL"]
    # ttbar dilepton: both b jets central in most selected events, so the 2b region is filled
    h = iterative["histograms"]["n_bjets"][{"dataset": "TT_DL", "channel": "dl", "systematic": "nominal"}]
    assert h[{"region": "resolved_2b"}].sum().value > 0.2 * h[{"region": "inclusive"}].sum().value


@pytest.mark.slow  # the whole demo (DeepHME, all systematics, plots) plus a dask rerun: about 2.5 min
def test_demo_and_dask_rerun(tmp_path):
    demo = tmp_path / "demo"
    assert cli(["demo", "-o", str(demo), "--scale", "0.25", "--no-progress"]) == 0
    for name in ("config.yaml", "output.coffea", "histograms.root", "cutflow.json"):
        assert (demo / name).is_file(), name
    plots = list((demo / "plots").glob("*.png"))
    assert len(plots) >= 10
    cutflow = json.loads((demo / "cutflow.json").read_text())
    assert cutflow["XHH_800_DL"]["dl"]["jets"]["events"] > 0
    again = tmp_path / "again"
    assert cli(["run", str(demo / "config.yaml"), "--executor", "dask", "--workers", "2", "-o", str(again),
                "--no-plots", "--no-progress"]) == 0
    assert_same_output(load(demo / "output.coffea"), load(again / "output.coffea"))


def test_dask_spreads_chunks_over_its_workers(config_path, iterative):
    """coffea makes every chunk depend on one task holding the processor; with few chunks per worker dask
    would run them all on the worker that has it, leaving the others to work stealing."""
    import dask
    from distributed import Client, get_task_stream

    from crema.workflows.run import local_cluster

    # without work stealing, which evens out a bad placement only later and only in part
    with dask.config.set({"distributed.scheduler.work-stealing": False}), local_cluster(2) as cluster, \
            Client(cluster) as client:
        config = load_config(config_path).with_executor(name="dask", scheduler=cluster.scheduler_address,
                                                         chunksize=1500)
        opentrees._TREES.clear()
        opentrees._KEPT.clear()
        with get_task_stream(client) as stream:
            output, report = run(config)
        # the workers read the input trees (and keep them for their chunks); this process reads none
        assert not opentrees._TREES
        assert sum(client.run(lambda: len(opentrees._TREES)).values()) >= 3
        # and its workers allocate memory as any Python process (no dask MALLOC_TRIM_THRESHOLD_)
        assert set(client.run(os.environ.get, "MALLOC_TRIM_THRESHOLD_").values()) == {None}
        assert set(client.run(lambda: dask.config.get("distributed.worker.profile.enabled")).values()) == {False}
        # event loops checked every second, not every 20 ms (their idle CPU time)
        assert set(client.run(lambda dask_worker: dask_worker.periodic_callbacks["tick"].callback_time).values()) \
            == {1000} == {cluster.scheduler.periodic_callbacks["tick"].callback_time}
    per_worker: dict[str, int] = {}
    for task in stream.data:
        if task["key"].startswith("CheckpointingProcessor"):
            per_worker[task["worker"]] = per_worker.get(task["worker"], 0) + 1
    assert sum(per_worker.values()) == report.total_chunks == 3
    assert len(per_worker) == 2, per_worker
    assert_same_output(iterative, output)
