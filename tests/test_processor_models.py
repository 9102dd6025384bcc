"""Models inside the HH->bbWW processor: DeepHME on SL and DL events, on every executor."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from crema.schema import ConfigError
from crema.workflows.config import load_config
from crema.workflows.run import run

from test_executors import assert_same_output

pytestmark = pytest.mark.filterwarnings("ignore:jets have no btagPNetCvNotB")


def write(tmp, datasets, deephme):
    config = {"luminosity_fb": 10.0, "datasets": datasets, "output": str(tmp / "out"),
              "processor": {"name": "hhbbww", "options": {"deephme": deephme}},
              "executor": {"name": "iterative", "chunksize": 700, "progress": False}}
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def config_path(tmp_path_factory):
    from crema.generate import write_nanoaod

    tmp = tmp_path_factory.mktemp("hme")
    datasets = []
    for name, process, seed in [("HH_SL", "hh_sl", 11), ("HH_DL", "hh_dl", 12)]:
        path = write_nanoaod(tmp / f"{name}.root", process, 2000, seed=seed, mass=800.0)
        datasets.append({"name": name, "kind": "signal", "process": "XHH", "xsec_pb": 1.0, "files": [str(path)]})
    return write(tmp, datasets, {"models": {"sl": "predict_quantiles3D_SL_v3", "dl": "predict_quantiles3D_DL_v8"}})


@pytest.fixture(scope="module")
def iterative(config_path):
    return run(load_config(config_path))[0]


@pytest.mark.parametrize("dataset, channel", [("HH_SL", "sl"), ("HH_DL", "dl")])
def test_hme_peaks_at_the_resonance_mass(iterative, dataset, channel):
    h = iterative["histograms"]["hme_mass"][{"dataset": dataset, "channel": channel, "region": "inclusive",
                                             "systematic": "nominal"}]
    counts = h.values()
    assert counts.sum() > 0.9 * iterative["cutflow_yield"][dataset][channel]["jets"]  # every selected event got a mass
    centres = h.axes[0].centers
    peak = centres[np.argmax(counts)]
    assert abs(peak - 800) < 0.1 * 800, peak
    errors = iterative["histograms"]["hme_mass_error"][{"dataset": dataset, "channel": channel,
                                                        "region": "inclusive", "systematic": "nominal"}]
    assert errors.values()[0] < errors.values().sum()  # errors are positive, not all in the first bin


def test_hme_identical_on_dask(config_path, iterative):
    output, _ = run(load_config(config_path).with_executor(name="dask", workers=2))
    assert_same_output(iterative, output)


def test_no_hme_histograms_without_the_model(tmp_path, config_path):
    cfg = yaml.safe_load(config_path.read_text())
    output, _ = run(load_config(write(tmp_path, cfg["datasets"][:1], None)).with_executor(maxchunks=1))
    assert "hme_mass" not in output["histograms"] and "m_bb" in output["histograms"]


def test_unknown_model_fails_at_start_up(tmp_path, config_path):
    cfg = yaml.safe_load(config_path.read_text())
    path = write(tmp_path, cfg["datasets"], {"models": {"sl": "nope", "dl": "predict_quantiles3D_DL_v8"}})
    with pytest.raises(ConfigError, match=r"deephme.models.sl: .*nope.*predict_quantiles3D_SL_v3"):
        run(load_config(path))
