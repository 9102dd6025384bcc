"""Run plots checked from the figure objects: colours, bands, signal lines, labels, ratio panel."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.container import ErrorbarContainer  # noqa: E402
from matplotlib.patches import StepPatch  # noqa: E402

import crema.plotting as plotting  # noqa: E402
from crema.plotting import CMS_PALETTE_6, STAT_LABEL, TOTAL_LABEL, choose_signal_scale, y_label  # noqa: E402
from crema.processors.common import HistogramSpec, SampleInfo, book  # noqa: E402
from crema.schema import ConfigError, from_dict  # noqa: E402
from crema.workflows.config import Config, dump_config  # noqa: E402
from crema.workflows.outputs import read_plot_style, write_histograms  # noqa: E402
from crema.workflows.plots import plot_all, plot_variation, run_style  # noqa: E402

SPECS = {
    "lep_pt": HistogramSpec(bins=20, start=0, stop=200, label="Lepton $p_T$ [GeV]"),
    "n_jets": HistogramSpec(bins=8, start=0, stop=8, label="Number of jets"),
}
SYSTS = ["nominal", "JESUp", "JESDown"]


def _samples(with_data: bool) -> dict[str, SampleInfo]:
    samples = {
        "XHH": SampleInfo("XHH", "signal", "XHH_800", 0.01),
        "TT1": SampleInfo("TT1", "background", "ttbar", 100.0),
        "TT2": SampleInfo("TT2", "background", "ttbar", 50.0),
        "DY": SampleInfo("DY", "background", "DY", 1000.0),
    }
    if with_data:
        samples["Muon"] = SampleInfo("Muon", "data", "data", None)
    return samples


def _output(samples: dict[str, SampleInfo], big: float = 1.0) -> dict:
    """ttbar dominates the SL channel and DY the DL channel, so a per-plot yield order would differ."""
    hists = book(SPECS, list(samples), ["sl", "dl"], ["inclusive"], SYSTS)
    rng = np.random.default_rng(1)
    scale = {"XHH": 0.001, "TT1": 2.0, "TT2": 1.0, "DY": 3.0, "Muon": 1.0}
    for name in samples:
        for channel in ("sl", "dl"):
            n = 400 if (name.startswith("TT") == (channel == "sl")) else 40
            n = 300 if name == "Muon" else n
            for obs, h in hists.items():
                x = rng.uniform(0, 200 if obs == "lep_pt" else 8, n)
                w = np.full(n, big * scale[name])
                for syst, f in zip(SYSTS, (1.0, 1.1, 0.95)):
                    h.fill(dataset=name, channel=channel, region="inclusive", systematic=syst,
                           **{obs: x}, weight=w * (f if name != "Muon" else 1.0))
    return {"histograms": hists, "luminosity_fb": 7.98}


def _config(samples: dict[str, SampleInfo], generated: bool = False, **extra) -> Config:
    datasets = []
    for s in samples.values():
        d = {"name": s.name, "kind": s.kind, "process": s.process, "xsec_pb": s.xsec_pb}
        if generated:
            d["generate"] = {"process": "tt_sl", "events": 10}
        else:
            d["files"] = [f"{s.name}.root"]
        datasets.append({k: v for k, v in d.items() if v is not None})
    return from_dict(Config, {"luminosity_fb": 7.98, "datasets": datasets, **extra}, "")


@pytest.fixture
def figures(monkeypatch):
    """Every figure the plotting code saves, kept open for inspection (path -> figure)."""
    import matplotlib.pyplot as plt

    kept = {}

    def keep(fig, path):
        fig.canvas.draw()  # tick labels and offset texts are set at draw time
        kept[path.name] = fig
        return path

    monkeypatch.setattr(plotting, "save", keep)
    yield kept
    for fig in kept.values():
        plt.close(fig)


def _patches(fig) -> dict[str, StepPatch]:
    return {a.get_label(): a for a in fig.axes[0].patches if isinstance(a, StepPatch) and not a.get_label().startswith("_")}


def _texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def test_palette_is_mplheps_cms_cycle():
    import mplhep as hep

    assert list(CMS_PALETTE_6) == hep.style.CMS["axes.prop_cycle"].by_key()["color"]


def test_process_colour_identical_across_every_plot(tmp_path, figures):
    samples = _samples(with_data=True)
    output = _output(samples)
    style = run_style(output, samples, _config(samples))
    plot_all(output, samples, tmp_path, style=style)
    assert len(figures) == 4  # 2 channels x 2 observables
    seen: dict[str, set] = {}
    for fig in figures.values():
        for label, patch in _patches(fig).items():
            colour = patch.get_facecolor() if patch.get_fill() else patch.get_edgecolor()
            seen.setdefault(label, set()).add(tuple(np.round(colour, 4)))
    for label in ("ttbar", "DY", "XHH_800 \u00d7 1000"):
        assert len(seen[label]) == 1, (label, seen[label])
    # config order of simulated processes: XHH_800, ttbar, DY -> the first three palette colours
    assert [style.color(p) for p in ("XHH_800", "ttbar", "DY")] == list(CMS_PALETTE_6[:3])
    assert style.color("data_obs") == "black"
    assert next(iter(seen["ttbar"])) == tuple(np.round(matplotlib.colors.to_rgba(CMS_PALETTE_6[1]), 4))


def test_config_colours_labels_and_errors():
    samples = _samples(with_data=False)
    config = _config(samples, processes={"ttbar": {"color": "tab:green", "label": "$t\\bar{t}$"}})
    style = run_style(_output(samples), samples, config)
    assert style.color("ttbar") == "tab:green" and style.legend("ttbar") == "$t\\bar{t}$"
    assert style.color("DY") == CMS_PALETTE_6[2]  # the others keep their defaults
    with pytest.raises(ConfigError, match=r"processes\.tt: no simulated dataset has process 'tt'"):
        _config(samples, processes={"tt": {"color": "red"}})
    with pytest.raises(ConfigError, match=r"processes\.ttbar\.color: 'notacolour' is not a colour"):
        _config(samples, processes={"ttbar": {"color": "notacolour"}})
    with pytest.raises(ConfigError, match=r"plots\.signal_scale: must be > 0"):
        _config(samples, plots={"signal_scale": 0})


def test_mc_stat_band_and_systematic_band(tmp_path, figures):
    samples = _samples(with_data=False)
    output = _output(samples)
    plot_all(output, samples, tmp_path, observables=["lep_pt"], style=run_style(output, samples, _config(samples)))
    fig = figures["sl_inclusive_lep_pt.png"]
    h = output["histograms"]["lep_pt"]
    nominal = {"dataset": ["TT1", "TT2", "DY"], "channel": "sl", "region": "inclusive", "systematic": "nominal"}
    values = sum(h[{**nominal, "dataset": d}].values() for d in nominal["dataset"])
    variances = sum(h[{**nominal, "dataset": d}].variances() for d in nominal["dataset"])
    band = _patches(fig)[STAT_LABEL]
    data = band.get_data()
    np.testing.assert_allclose(data.edges, np.linspace(0, 200, 21))
    np.testing.assert_allclose(data.values, values + np.sqrt(variances))
    np.testing.assert_allclose(data.baseline, values - np.sqrt(variances))
    assert band.get_hatch()
    # JES up is +10%, down -5% of every background: the total band adds that to the MC stat in quadrature
    total = _patches(fig)[TOTAL_LABEL].get_data()
    np.testing.assert_allclose(total.values, values + np.hypot(np.sqrt(variances), 0.1 * values))
    np.testing.assert_allclose(total.baseline, values - np.hypot(np.sqrt(variances), 0.05 * values))
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert STAT_LABEL in legend and TOTAL_LABEL in legend


def test_signal_is_a_line_with_the_run_scale_in_the_legend(tmp_path, figures):
    samples = _samples(with_data=False)
    output = _output(samples)
    style = run_style(output, samples, _config(samples))
    # 440 events per dataset: signal 0.44, background 2640; 0.2 * 2640 / 0.44 = 1200 -> 1000
    assert style.signal_scale == choose_signal_scale([0.001 * 440], (2 + 1 + 3) * 440) == 1000
    plot_all(output, samples, tmp_path, style=style)
    for fig in figures.values():
        ax = fig.axes[0]
        signal = _patches(fig)["XHH_800 \u00d7 1000"]
        assert not signal.get_fill()
        assert not any(isinstance(c, ErrorbarContainer) for c in ax.containers)  # no data, no error bars
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert "XHH_800 \u00d7 1000" in legend
        assert not [t for t in legend if "\u00d7" in t and t != "XHH_800 \u00d7 1000"]


def test_configured_signal_scale_is_used(tmp_path, figures):
    samples = _samples(with_data=False)
    output = _output(samples)
    style = run_style(output, samples, _config(samples, plots={"signal_scale": 50}))
    plot_all(output, samples, tmp_path, observables=["n_jets"], style=style)
    assert all("XHH_800 \u00d7 50" in _patches(f) for f in figures.values())


def test_choose_signal_scale():
    assert choose_signal_scale([1.0], 1e5) == 1e4  # 20% of the background
    assert choose_signal_scale([1.0, 3.0], 1e5) == 1e3  # the largest signal counts: 3e3 = 3%
    assert choose_signal_scale([10.0], 20.0) == 1.0  # never scaled down
    assert choose_signal_scale([], 10.0) == 1.0


def test_y_label_text():
    assert y_label(np.linspace(0, 200, 21), "Lepton $p_T$ [GeV]") == "Events / 10 GeV"
    assert y_label(np.linspace(-2.5, 2.5, 26), "$\\eta$") == "Events / 0.2"
    assert y_label(np.arange(9), "Number of jets") == "Events / bin"
    assert y_label(np.array([0, 10, 30, 100]), "$m$ [GeV]") == "Events / bin"


def test_no_offset_text_the_power_goes_into_the_label(tmp_path, figures):
    samples = _samples(with_data=False)
    output = _output(samples, big=1e5)  # bins of ~1e7 events
    plot_all(output, samples, tmp_path, observables=["lep_pt"], style=run_style(output, samples, _config(samples)))
    for fig in figures.values():
        ax = fig.axes[0]
        assert ax.yaxis.get_offset_text().get_text() == ""
        assert ax.get_ylabel().startswith("Events / 10 GeV ($\\times 10^{")
        assert all(float(t.get_text()) < 100 for t in ax.get_yticklabels() if t.get_text())


def test_experiment_label_for_generated_and_cms_samples(tmp_path, figures):
    samples = _samples(with_data=False)
    output = _output(samples)
    plot_all(output, samples, tmp_path / "gen", observables=["n_jets"],
             style=run_style(output, samples, _config(samples, generated=True)))
    texts = _texts(figures["sl_inclusive_n_jets.png"])
    assert "Private work" in texts and "Simulation" in texts and "CMS" not in texts
    assert any("7.98 fb$^{-1}$ (13.6 TeV)" == t for t in texts)
    figures.clear()
    plot_all(output, samples, tmp_path / "cms", observables=["n_jets"],
             style=run_style(output, samples, _config(samples, plots={"label": "Preliminary"})))
    texts = _texts(figures["sl_inclusive_n_jets.png"])
    assert "CMS" in texts and "Simulation Preliminary" in texts


def test_luminosity_on_systematic_plots(tmp_path, figures):
    samples = _samples(with_data=False)
    output = _output(samples)
    paths = plot_variation(output, samples, "JES", tmp_path, style=run_style(output, samples, _config(samples)))
    assert paths and len(figures) == len(paths)
    for fig in figures.values():
        assert "7.98 fb$^{-1}$ (13.6 TeV)" in _texts(fig)
        assert fig.axes[0].yaxis.get_offset_text().get_text() == ""


def test_ratio_panel_with_data_only(tmp_path, figures):
    samples = _samples(with_data=True)
    output = _output(samples)
    plot_all(output, samples, tmp_path, observables=["lep_pt"], style=run_style(output, samples, _config(samples)))
    fig = figures["sl_inclusive_lep_pt.png"]
    assert len(fig.axes) == 2 and fig.axes[1].get_ylabel() == "Data / MC"
    assert any(isinstance(c, ErrorbarContainer) and c.get_label() == "Data" for c in fig.axes[0].containers)
    assert "CMS" in _texts(fig) and "Private work" in _texts(fig)  # data shown: no "Simulation"
    figures.clear()
    mc = _samples(with_data=False)
    plot_all(_output(mc), mc, tmp_path / "mc", observables=["lep_pt"])
    assert len(figures["sl_inclusive_lep_pt.png"].axes) == 1


def test_logy_option(tmp_path, figures):
    samples = _samples(with_data=False)
    output = _output(samples)
    style = run_style(output, samples, _config(samples, plots={"logy": True}))
    plot_all(output, samples, tmp_path, observables=["n_jets"], style=style)
    assert all(f.axes[0].get_yscale() == "log" for f in figures.values())


def test_style_in_run_json_drives_crema_plot(tmp_path, figures):
    from crema.workflows.cli import main as cli

    samples = _samples(with_data=False)
    output = _output(samples)
    config = _config(samples, processes={"DY": {"color": "#00aa00"}})
    style = run_style(output, samples, config)
    dump_config(config, tmp_path / "config.yaml")
    write_histograms(output, samples, tmp_path, style)
    assert read_plot_style(tmp_path) == style
    meta = json.loads((tmp_path / "run.json").read_text())
    assert meta["plots"]["processes"]["DY"]["color"] == "#00aa00"
    assert cli(["plot", str(tmp_path), "--observable", "n_jets", "--logy"]) == 0
    for fig in figures.values():
        assert matplotlib.colors.to_hex(_patches(fig)["DY"].get_facecolor()) == "#00aa00"
        assert fig.axes[0].get_yscale() == "log"


def test_histograms_need_weight_storage(tmp_path):
    import hist

    h = book(SPECS, ["a"], ["sl"], ["inclusive"], ["nominal"])["lep_pt"]
    assert h.storage_type is hist.storage.Weight  # what processors book
    plain = hist.Hist(*h.axes, storage=hist.storage.Double())
    samples = {"a": SampleInfo("a", "background", "ttbar", 1.0)}
    with pytest.raises(ValueError, match="lep_pt: the histogram has no Weight storage"):
        plot_all({"histograms": {"lep_pt": plain}, "luminosity_fb": 1.0}, samples, tmp_path)


def test_classifier_score_plots_share_the_run_colours(tmp_path, figures):
    import pandas as pd
    import yaml

    from crema.workflows.classifier import report

    rng = np.random.default_rng(3)
    datasets = {"XHH": ("signal", "XHH_800", 1), "TT1": ("background", "ttbar", 0), "DY": ("background", "DY", 0)}
    rows = []
    for name, (_, process, label) in datasets.items():
        n = 300
        score = rng.beta(4, 2, n) if label else rng.beta(2, 4, n)
        rows.append(pd.DataFrame({"dataset": name, "process": process, "label": label, "event": np.arange(n),
                                  "weight": np.full(n, 0.01 if label else 5.0), "score_bdt": score}))
    model = tmp_path / "model"
    model.mkdir()
    pd.concat(rows, ignore_index=True).to_parquet(model / "scores.parquet")
    (model / "features.yaml").write_text(yaml.safe_dump({"luminosity_fb": 7.98, "datasets": {
        name: {"kind": kind, "process": process, "xsec_pb": 1.0} for name, (kind, process, _) in datasets.items()}},
        sort_keys=False))
    report(model, tmp_path / "report")
    fig = figures["score_bdt.png"]
    patches = _patches(fig)
    # config order XHH_800, ttbar, DY: the same colours as every run plot of that config
    assert matplotlib.colors.to_hex(patches["ttbar"].get_facecolor()) == CMS_PALETTE_6[1]
    assert matplotlib.colors.to_hex(patches["DY"].get_facecolor()) == CMS_PALETTE_6[2]
    signal = next(p for label, p in patches.items() if label.startswith("XHH_800 \u00d7"))
    assert not signal.get_fill() and STAT_LABEL in patches
    assert "7.98 fb$^{-1}$ (13.6 TeV)" in _texts(figures["roc.png"])


def test_fit_stack_uses_the_run_colours_and_band(tmp_path, figures):
    from types import SimpleNamespace

    from crema.workflows.fit_plots import _stack

    samples = _samples(with_data=False)
    style = run_style(_output(samples), samples, _config(samples))
    edges = np.linspace(200, 1400, 6)
    yields = [[1.0, 2.0, 3.0, 2.0], [40.0, 30.0, 20.0, 10.0], [10.0, 10.0, 5.0, 1.0]]  # XHH_800, ttbar, DY
    prediction = SimpleNamespace(model_yields=[yields], total_stdev_model_bins=[[[0.0] * 4] * 3 + [[5.0, 4.0, 3.0, 2.0]]])
    keep = np.array([0, 1, 2, 3])
    _stack(prediction, 0, "sl_resolved_2b", ["XHH_800", "ttbar", "DY"], {"XHH_800"}, edges, keep,
           np.array([50.0, 41.0, 30.0, 12.0]), "data", "postfit", "DeepHME $m_{HH}$ [GeV]", style, tmp_path / "f.png")
    fig = figures["f.png"]
    patches = _patches(fig)
    for p in ("XHH_800", "ttbar", "DY"):
        assert matplotlib.colors.to_hex(patches[p].get_facecolor()) == style.color(p)
    band = patches["total unc."].get_data()
    np.testing.assert_allclose(band.values[:4], np.sum(yields, axis=0) + [5.0, 4.0, 3.0, 2.0])
    assert fig.axes[0].get_ylabel() == "Events / 240 GeV" and fig.axes[1].get_ylabel() == "Data / pred."


def test_luminosity_text():
    from crema.plotting import RunStyle

    assert RunStyle(processes={}, luminosity_fb=7.98).lumi_text() == "7.98 fb$^{-1}$ (13.6 TeV)"
    assert RunStyle(processes={}, luminosity_fb=138.0, energy_tev=13.0).lumi_text() == "138 fb$^{-1}$ (13 TeV)"
    assert RunStyle(processes={}).lumi_text() == "(13.6 TeV)"
