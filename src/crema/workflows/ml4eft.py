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
    return fit_model(lik, None, result, outdir, span, points, plots)
