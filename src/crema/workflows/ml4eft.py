"""ML4EFT workflows: unbinned intervals on held-out events (``crema eft-fit --unbinned``) and the
comparison report (``crema eft-report``).  See docs/eft.md."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from crema.models.ml4eft import ML4EFTModel, fold_mask, held_out_fold, read_metadata
from crema.schema import ConfigError
from crema.stats.eft import UnbinnedModel, fit_model


def held_out_events(run_dir: str | Path, model_dir: str | Path):
    """The feature table of a ``ttbar_eft`` run restricted to the events the model never saw (the other
    event-number parity), with ``weight`` normalised to the run's luminosity (eft_yields.json)."""
    import pandas as pd

    run_dir = Path(run_dir)
    meta = read_metadata(model_dir)
    path = run_dir / "eft_features.parquet"
    if not path.is_file():
        raise ConfigError(f"{path}: no feature table (run a ttbar_eft config with processor.options.features)")
    table = pd.read_parquet(path)
    if "event" not in table:
        raise ConfigError(f"{path}: no 'event' column; cannot tell held-out events from training ones")
    table = table[fold_mask(table["event"].to_numpy(), held_out_fold(meta["training"]["fold"]))].reset_index(drop=True)
    yields_path = run_dir / "eft_yields.json"
    if not yields_path.is_file():
        raise ConfigError(f"{yields_path}: missing (the run's per-dataset yields set the luminosity)")
    yields = json.loads(yields_path.read_text())
    weight = table["weight"].to_numpy(np.float64).copy()
    for ds in table["dataset"].unique():
        if ds not in yields:
            raise ConfigError(f"{yields_path}: no dataset {ds!r}")
        expected = sum(list(cuts.values())[-1]["sm"] for cuts in yields[ds].values())
        rows = (table["dataset"] == ds).to_numpy()
        weight[rows] *= expected / max(weight[rows].sum(), 1e-300)  # the held-out fold stands for the whole dataset
    table = table.assign(weight=weight)
    return table


def unbinned_model(terms: np.ndarray, weights: np.ndarray, wc_names: list[str]) -> UnbinnedModel:
    """The extended likelihood of weighted SM events with per-event ratio terms ``terms`` (N, n_terms - 1).

    nu(c) = sum_k w_k r(x_k, c) is the expected yield implied by the same ratio (the Monte Carlo
    integral of dsigma_SM r), so the Asimov SM data have their minimum at c = 0 for any r.
    """
    terms = np.asarray(terms, np.float64)
    w = np.asarray(weights, np.float64)
    return UnbinnedModel(list(wc_names), terms, w, np.concatenate([[w.sum()], w @ terms]))


def fit_unbinned(run_dir: str | Path, model_dir: str | Path, outdir: str | Path | None, span: float = 10.0,
                 points: int = 81, plots: bool = True) -> dict:
    """1D fixed and profiled intervals and the 2D contour from the learned r(x, c) on the held-out
    events of a run; writes ``outdir/eft_fit.json`` in the shape of the binned fit."""
    table = held_out_events(run_dir, model_dir)
    model = ML4EFTModel(model_dir)
    lik = unbinned_model(model.term_values(table), table["weight"].to_numpy(), model.wc_names)
    result = {"observables": [f"unbinned:{Path(model_dir).name}"], "systematics": [],
              "events": int(len(table)), "fold": held_out_fold(model.training["fold"])}
    from crema.plotting import read_style

    return fit_model(lik, None, result, outdir, span, points, plots, style=read_style(run_dir))


# ---------------------------------------------------------------------------- report
REPORT_LUMINOSITY_FB = 7.98  # as crema demo --analysis eft


def _generate_run(outdir: Path, events: int, seed: int, model_dir: Path | None, log) -> Path:
    """Fresh tt_dl_eft events through ttbar_eft (with the learned observables of ``model_dir``)."""
    from crema.generate import write_nanoaod
    from crema.workflows.config import load_config
    from crema.workflows.eft_outputs import write_eft_outputs
    from crema.workflows.run import run

    outdir.mkdir(parents=True, exist_ok=True)
    path = write_nanoaod(outdir / "tt_dl_eft.root", "tt_dl_eft", events, seed=seed)
    model = f", eft_model: '{model_dir}'" if model_dir else ""
    cfg = outdir / "config.yaml"
    cfg.write_text(f"""luminosity_fb: {REPORT_LUMINOSITY_FB}
processor: {{name: ttbar_eft, options: {{systematics: false{model}}}}}
executor: {{name: iterative, chunksize: 100000, progress: false}}
datasets:
  - {{name: TT_EFT_heldout, kind: background, process: ttbar, xsec_pb: 98.0, files: ['{path}']}}
""")
    config = load_config(cfg)
    log(f"held-out sample: {events} generated events, seed {seed}")
    write_eft_outputs(run(config)[0], config.samples, outdir)
    return outdir


def _fixed_intervals(model) -> dict:
    """{wc: {"95": [lo, hi], "68": [lo, hi]}} with the other coefficients at the SM (Asimov SM data)."""
    data = None if isinstance(model, UnbinnedModel) else model.expected(np.zeros(len(model.wc_names)))
    res = fit_model(model, data, {}, None, span=10.0, points=161, plots=False, modes=("fixed",), contour_2d=False)
    return {wc: {"95": v["fixed"]["95"], "68": v["fixed"]["68"]} for wc, v in res["intervals"].items()}


def _binned_model(values: np.ndarray, edges, weights: np.ndarray, coef: np.ndarray, wc_names: list[str]):
    """Binned templates (terms, bins incl. flow) of one observable from per-event coefficients."""
    from crema.stats.eft import EFTModel

    idx = np.clip(np.searchsorted(np.asarray(edges), values, side="right"), 0, len(edges))
    nominal = np.stack([np.bincount(idx, weights * coef[:, t], minlength=len(edges) + 1) for t in range(coef.shape[1])])
    return EFTModel(list(wc_names), nominal, np.zeros((0, *nominal.shape)), [])


def _width(iv: dict, level: str = "95") -> float:
    return float(iv[level][1] - iv[level][0])


def report(outdir: str | Path, reco_model: str | Path | None = None, parton_model: str | Path | None = None,
           events: int = 100_000, seed: int = 9001, plots: bool = True,
           log: Callable[[str], None] = lambda s: None) -> dict:
    """``eft_report.json``: parton (networks vs analytic truth vs binned m_tt), reco (unbinned vs learned
    observable vs pt_ll x eta_l1), replicas; each interval fixed-other-at-SM, on fresh held-out events."""
    from crema.generate.eft import observed_coefficients
    from crema.histograms.eft import term_names
    from crema.stats.eft import load_model

    if reco_model is None and parton_model is None:
        raise ConfigError("eft-report: give a reco model folder and/or --parton MODEL_DIR")
    outdir = Path(outdir)
    run_dir = _generate_run(outdir / "heldout", events, seed, Path(reco_model).resolve() if reco_model else None, log)
    result: dict = {"events_generated": events, "seed": seed, "luminosity_fb": REPORT_LUMINOSITY_FB, "comparisons": {}}
    if parton_model is not None:
        table, wc, w, nn = _evaluate(run_dir, parton_model)
        truth = observed_coefficients(table["m_tt"].to_numpy(), table["cos_theta_star"].to_numpy())[:, 1:]
        names = term_names(wc)[1:]
        corr = {c: float(np.corrcoef(nn[:, names.index(f"lin_{c}")], truth[:, names.index(f"lin_{c}")])[0, 1])
                for c in wc}
        coef = np.concatenate([np.ones((len(w), 1)), truth], axis=1)
        edges = np.quantile(table["m_tt"], np.linspace(0, 1, 16))[1:-1]
        sec = {"events": int(len(table)), "correlation": corr, "intervals": {
            "truth": _fixed_intervals(unbinned_model(truth, w, wc)),
            "nn": _fixed_intervals(unbinned_model(nn, w, wc)),
            "binned": _fixed_intervals(_binned_model(table["m_tt"].to_numpy(), edges, w, coef, wc))}}
        result["parton"] = sec
        for c in wc:
            ratio = _width(sec["intervals"]["nn"][c]) / _width(sec["intervals"]["truth"][c])
            result["comparisons"][f"parton_correlation_{c}"] = {"value": corr[c], "reference": ">= 0.99", "within": corr[c] >= 0.99}
            result["comparisons"][f"parton_nn_over_truth_width_{c}"] = {"value": ratio, "reference": "0.9 .. 1.1",
                                                                  "within": 0.9 <= ratio <= 1.1}
        if plots:
            _plot_parton(nn, truth, names, wc, outdir)
        log("parton section done")
    if reco_model is not None:
        table, wc, w, nn_terms = _evaluate(run_dir, reco_model)
        binned_2d = _fixed_intervals(load_model(run_dir, ["pt_ll_eta_l1"], wc))
        nn_binned = {c: _fixed_intervals(load_model(run_dir, [f"nn_{c}"], wc))[c] for c in wc}
        sec = {"events": int(len(table)), "intervals": {"nn": _fixed_intervals(unbinned_model(nn_terms, w, wc)),
                                                        "nn_binned": nn_binned, "binned_2d": binned_2d}}
        result["reco"] = sec
        for c in wc:
            r2d = _width(binned_2d[c]) / _width(sec["intervals"]["nn"][c])
            rb = _width(nn_binned[c]) / _width(sec["intervals"]["nn"][c])
            result["comparisons"][f"reco_binned_2d_over_nn_width_{c}"] = {"value": r2d, "reference": ">= 1.5", "within": r2d >= 1.5}
            result["comparisons"][f"reco_nn_binned_over_nn_width_{c}"] = {"value": rb, "reference": "<= 1.2", "within": rb <= 1.2}
        result["replicas"] = _replica_section(reco_model, table, w, wc)
        for c, spread in result["replicas"]["relative_width_spread"].items():
            if spread is None:  # one replica: no spread
                continue
            result["comparisons"][f"replica_width_spread_{c}"] = {"value": spread, "reference": "<= 0.10", "within": spread <= 0.10}
        log("reco and replica sections done")
    if plots:
        _plot_intervals(result, outdir)
    (outdir / "eft_report.json").write_text(json.dumps(result, indent=2))
    return result


def _evaluate(run_dir: Path, model_dir):
    """Held-out events of the run for ``model_dir``: (table, wc_names, normalised weights, NN terms)."""
    table = held_out_events(run_dir, model_dir)
    model = ML4EFTModel(model_dir)
    return table, model.wc_names, table["weight"].to_numpy(np.float64), model.term_values(table)


def _replica_section(model_dir, table, w, wc) -> dict:
    """Trained and rejected replicas per term, and the relative spread (std / mean) of the unbinned 95%
    interval width over all trained replicas (replica k: the k-th network of every term)."""
    from crema.models.ml4eft_train import replica_terms

    meta = read_metadata(model_dir)
    per_rep = replica_terms(model_dir, ML4EFTModel(model_dir).matrix(table))
    widths = {c: [] for c in wc}
    for terms in per_rep:
        iv = _fixed_intervals(unbinned_model(terms, w, wc))
        for c in wc:
            widths[c].append(_width(iv[c]))
    return {"trained": {t: r["trained"] for t, r in meta["replicas"].items()},
            "rejected": {t: len(r["rejected"]) for t, r in meta["replicas"].items()},
            "widths_95": widths,
            "relative_width_spread": {c: float(np.std(v, ddof=1) / np.mean(v)) if len(v) > 1 else None
                                      for c, v in widths.items()}}


def _plot_parton(nn, truth, names, wc, outdir: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(wc), figsize=(4.5 * len(wc), 4))
    for ax, c in zip(np.atleast_1d(axes), wc):
        i = names.index(f"lin_{c}")
        ax.scatter(truth[:, i], nn[:, i], s=2, alpha=0.3)
        lim = [truth[:, i].min(), truth[:, i].max()]
        ax.plot(lim, lim, "k--", lw=0.8)
        ax.set_xlabel(f"analytic $a$ ({c})")
        ax.set_ylabel(f"NN ({c})")
    fig.tight_layout()
    fig.savefig(outdir / "parton_nn_vs_truth.png", dpi=100)
    plt.close(fig)


def _plot_intervals(result: dict, outdir: Path) -> None:
    import matplotlib.pyplot as plt

    rows = [(sec, name, ivs) for sec in ("parton", "reco") if sec in result
            for name, ivs in result[sec]["intervals"].items()]
    wcs = sorted({c for _, _, ivs in rows for c in ivs})
    fig, axes = plt.subplots(1, len(wcs), figsize=(5 * len(wcs), 0.5 * len(rows) + 1.5))
    for ax, c in zip(np.atleast_1d(axes), wcs):
        for y, (sec, name, ivs) in enumerate(rows):
            for level, lw in (("95", 1.5), ("68", 4)):
                ax.plot(ivs[c][level], [y, y], lw=lw, color=f"C{y}")
        ax.set_yticks(range(len(rows)), [f"{s}: {n}" for s, n, _ in rows])
        ax.axvline(0, color="grey", lw=0.5)
        ax.set_xlabel(f"{c} (68% thick, 95% thin; others at 0)")
    fig.tight_layout()
    fig.savefig(outdir / "intervals.png", dpi=100)
    plt.close(fig)
