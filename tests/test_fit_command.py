"""``crema fit`` end to end on a hand-written run directory (histograms.root + config.yaml)."""

from __future__ import annotations

import json

import hist
import numpy as np
import pyhf
import pytest
import uproot
import yaml

from crema.workflows.cli import main

EDGES = np.linspace(200, 1400, 6)
BACKGROUND = np.array([400.0, 200.0, 80.0, 30.0, 0.0])  # last bin: no background


def _hist(values):
    h = hist.Hist(hist.axis.Variable(EDGES, name="hme_mass"), storage=hist.storage.Weight())
    h.view()["value"] = values
    h.view()["variance"] = values / 10
    return h


def _peak(mass):
    centres = 0.5 * (EDGES[1:] + EDGES[:-1])
    return 12.0 * np.exp(-0.5 * ((centres - mass) / 120) ** 2)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    tilt = np.linspace(-0.1, 0.1, len(BACKGROUND))
    with uproot.recreate(d / "histograms.root") as f:
        for channel, scale in (("sl", 1.0), ("dl", 0.3)):
            for region in ("resolved_2b", "boosted"):
                base = f"{channel}_{region}_hme_mass"
                f[f"{base}/ttbar"] = _hist(BACKGROUND * scale)
                f[f"{base}/ttbar_JES_AbsoluteUp"] = _hist(BACKGROUND * scale * (1 + tilt))
                f[f"{base}/ttbar_JES_AbsoluteDown"] = _hist(BACKGROUND * scale * (1 - tilt))
                f[f"{base}/ttbar_scale_muRUp"] = _hist(BACKGROUND * scale * 0.9)
                f[f"{base}/ttbar_scale_muRDown"] = _hist(BACKGROUND * scale * 1.1)
                for mass in (400, 800):
                    f[f"{base}/XHH_{mass}"] = _hist(_peak(mass) * scale)
                    f[f"{base}/XHH_{mass}_scale_muRUp"] = _hist(np.zeros(len(BACKGROUND)))  # never filled
                    f[f"{base}/XHH_{mass}_scale_muRDown"] = _hist(np.zeros(len(BACKGROUND)))
    config = {
        "luminosity_fb": 7.98, "era": "2022",
        "datasets": [
            {"name": "X400", "kind": "signal", "process": "XHH_400", "xsec_pb": 1.0, "files": ["x400.root"], "mass": 400.0},
            {"name": "X800", "kind": "signal", "process": "XHH_800", "xsec_pb": 1.0, "files": ["x800.root"],
             "generate": {"process": "hh_sl", "events": 10, "mass": 800.0}},
            {"name": "TT", "kind": "background", "process": "ttbar", "xsec_pb": 1.0, "files": ["tt.root"]},
        ],
        "fit": {"observable": "hme_mass", "regions": ["resolved_2b", "boosted"], "norm_uncertainties": {"ttbar": 0.05}},
    }
    (d / "config.yaml").write_text(yaml.safe_dump(config))
    return d


def test_fit_writes_workspace_results_and_plots(run_dir, tmp_path, capsys):
    out = tmp_path / "fit"
    assert main(["fit", str(run_dir), "-o", str(out), "--signal", "XHH_800", "--ranking", "3", "--channel", "sl",
                 "--region", "resolved_2b", "boosted"]) == 0
    spec = json.loads((out / "workspace.json").read_text())
    pyhf.schema.validate(spec, "workspace.json")
    assert sorted(c["name"] for c in spec["channels"]) == ["sl_boosted", "sl_resolved_2b"]
    modifiers = {m["name"] for c in spec["channels"] for s in c["samples"] for m in s["modifiers"]}
    assert {"mu", "lumi", "norm_ttbar", "JES_Absolute", "scale_muR", "staterror_sl_boosted"} <= modifiers
    results = json.loads((out / "fit_results.json").read_text())
    assert results["signal"] == "XHH_800" and results["observed"] is False and results["lumi_uncertainty"] == 0.014
    band = results["expected_limit"]
    assert 0 < band["minus2"] < band["minus1"] < band["median"] < band["plus1"] < band["plus2"]
    assert results["expected_significance"] > 0 and results["mu_hat"] == pytest.approx(1.0, abs=1e-3)
    assert abs(results["parameters"]["JES_Absolute"]["pull"]) < 1e-2
    assert 0 < results["parameters"]["norm_ttbar"]["constraint"] <= 1.0 + 1e-6
    assert len(results["impacts"]) == 3
    assert any("dropped 1 of 5 bins" in n for n in results["notes"])
    assert any("XHH_800: variation scale_muR has no filled template" in n for n in results["notes"])
    for name in ("prefit_sl_boosted.png", "postfit_sl_resolved_2b.png", "pulls.png", "impacts.png"):
        assert (out / name).stat().st_size > 1000
    assert "expected significance" in capsys.readouterr().out


@pytest.mark.slow
def test_mass_scan_writes_the_brazil_band(run_dir, tmp_path):
    out = tmp_path / "scan"
    assert main(["fit", str(run_dir), "-o", str(out), "--scan", "--region", "resolved_2b"]) == 0
    scan = json.loads((out / "scan.json").read_text())
    assert [p["mass"] for p in scan["points"]] == [400.0, 800.0]  # explicit mass, then generate.mass
    for p in scan["points"]:
        assert p["expected_limit"]["minus2"] < p["expected_limit"]["median"] < p["expected_limit"]["plus2"]
        assert (out / "scan" / f"workspace_{p['process']}.json").exists()
    assert (out / "brazil.png").stat().st_size > 1000


def test_bad_requests_are_clear_errors(run_dir, tmp_path, capsys):
    assert main(["fit", str(run_dir), "-o", str(tmp_path / "a")]) == 2
    assert "several signal processes (XHH_400, XHH_800)" in capsys.readouterr().err
    assert main(["fit", str(run_dir), "-o", str(tmp_path / "b"), "--signal", "XHH_800", "--observable", "m_bb"]) == 2
    assert "no histograms of observable 'm_bb'" in capsys.readouterr().err
    assert main(["fit", str(run_dir), "-o", str(tmp_path / "b"), "--signal", "XHH_800", "--channel", "tau"]) == 2
    assert "no histograms 'tau_resolved_2b_hme_mass'" in capsys.readouterr().err
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config["fit"]["norm_uncertainties"] = {"tt": 0.05}
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.yaml").write_text(yaml.safe_dump(config))
    (bad / "histograms.root").symlink_to(run_dir / "histograms.root")
    assert main(["fit", str(bad), "-o", str(tmp_path / "c"), "--signal", "XHH_800"]) == 2
    assert "fit.norm_uncertainties.tt: no such process" in capsys.readouterr().err


@pytest.mark.slow  # the demo at --scale 0.3 (DeepHME, all systematics) and its fit: about 5 min on a loaded machine
def test_demo_ends_in_a_converged_fit(tmp_path, capsys):
    demo = tmp_path / "demo"
    assert main(["demo", "-o", str(demo), "--scale", "0.3", "--no-plots", "--no-progress"]) == 0
    results = json.loads((demo / "fit" / "fit_results.json").read_text())
    assert (demo / "fit" / "workspace.json").is_file()
    assert results["channels"] == ["dl_resolved_2b", "dl_boosted", "sl_resolved_2b", "sl_boosted"]
    assert 0 < results["expected_significance"] < np.inf
    e = results["expected_limit"]
    assert 0 < e["minus2"] < e["minus1"] < e["median"] < e["plus1"] < e["plus2"] < np.inf
    assert results["mu_hat"] == pytest.approx(1.0, abs=1e-2)  # Asimov data with mu = 1
    out = capsys.readouterr().out
    assert "expected 95% CL limit on mu" in out and f"{e['median']:.3g}" in out
