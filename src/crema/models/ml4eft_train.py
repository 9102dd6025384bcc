"""ML4EFT training (torch; the ``train`` extra): per-term networks, replicas, backwards stopping, ONNX export.

For each term t (lin_i, quad_i, mixed_ij) a ReLU MLP learns NN_t(x) from the SM events and the same
events reweighted to the term's EFT "sample" at c_train: w_eft = w (1 + k_t coef_t), with k_t the
term's monomial at c_train (c_i, c_i^2 or c_i c_j) and coef_t the per-event coefficient of the
feature table.  The classifier's decision function is g = 1 / (1 + r), r = 1 + k_t NN_t, and the
network output is parametrised as NN_t = (softplus(z) - 1) / k_t so that r(x, c_train) > 0 by
construction (the positivity constraint).  Losses (both minimised by r = dsigma(c_train)/dsigma(SM)):

    CE = -[sum w_eft log(1 - g) + sum w_sm log g] / sum w_sm
    QC =  [sum w_eft g^2 + sum w_sm (1 - g)^2] / sum w_sm
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from crema.histograms.eft import term_names
from crema.models.ml4eft import (METADATA, ONNX_FILE, REPLICA_DIR, TrainConfig, fold_mask, select_replicas,
                                 weighted_quantiles)
from crema.schema import ConfigError, to_dict


# ---------------------------------------------------------------------------- losses and networks
def ratio_from_output(z: torch.Tensor) -> torch.Tensor:
    """r(x, c_train) of the raw network output z: softplus(z), positive by construction."""
    return nn.functional.softplus(z)


def ce_loss(r: torch.Tensor, w_sm: torch.Tensor, w_eft: torch.Tensor) -> torch.Tensor:
    """ML4EFT cross entropy with g = 1/(1+r): -[w_eft log(r/(1+r)) + w_sm log(1/(1+r))], normalised to sum w_sm."""
    log1p_r = torch.log1p(r)
    return (w_eft * (log1p_r - torch.log(r)) + w_sm * log1p_r).sum() / w_sm.sum()


def qc_loss(r: torch.Tensor, w_sm: torch.Tensor, w_eft: torch.Tensor) -> torch.Tensor:
    """ML4EFT quadratic loss with g = 1/(1+r): w_eft g^2 + w_sm (1-g)^2, normalised to sum w_sm."""
    g = 1.0 / (1.0 + r)
    return (w_eft * g * g + w_sm * (1.0 - g) ** 2).sum() / w_sm.sum()


LOSSES = {"CE": ce_loss, "QC": qc_loss}


def constant_ratio_loss(w_sm: torch.Tensor, w_eft: torch.Tensor, loss: str) -> float:
    """The loss of the best x-independent ratio (r = sum w_eft / sum w_sm): what a network must beat."""
    r = torch.full_like(w_sm, float(w_eft.sum() / w_sm.sum()))
    return float(LOSSES[loss](r, w_sm, w_eft))


def mlp(n_in: int, hidden: list[int]) -> nn.Sequential:
    """ReLU MLP with one output."""
    layers, width = [], n_in
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


class TermNet(nn.Module):
    """NN_t(x) = (softplus(z(x)) - 1) / k_t on scaled features (r(x, c_train) = softplus(z) > 0)."""

    def __init__(self, n_in: int, hidden: list[int], scale: float) -> None:
        super().__init__()
        self.net = mlp(n_in, hidden)
        self.register_buffer("k", torch.tensor(float(scale)))

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (ratio_from_output(self.raw(x)) - 1.0) / self.k


class Ensemble(nn.Module):
    """Robust scaler, then for every term the median over its kept replicas: (N, n_features) -> (N, n_terms - 1)."""

    def __init__(self, center, scale, replicas: list[list[TermNet]]) -> None:
        super().__init__()
        self.register_buffer("center", torch.as_tensor(np.asarray(center, np.float32)))
        self.register_buffer("scale", torch.as_tensor(np.asarray(scale, np.float32)))
        self.terms = nn.ModuleList(nn.ModuleList(r) for r in replicas)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.center) / self.scale
        out = []
        for reps in self.terms:
            values = torch.stack([net(x) for net in reps], dim=1)
            n = len(reps)
            if n == 1:
                out.append(values[:, 0])
                continue
            s = torch.sort(values, dim=1).values
            out.append(s[:, n // 2] if n % 2 else 0.5 * (s[:, n // 2 - 1] + s[:, n // 2]))
        return torch.stack(out, dim=1)


def robust_scaler(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Center (median) and scale (95% - 5% quantile) per feature; constant features get scale 1."""
    q5, q50, q95 = np.quantile(x, [0.05, 0.5, 0.95], axis=0)
    scale = q95 - q5
    return q50.astype(np.float32), np.where(scale > 0, scale, 1.0).astype(np.float32)


# ---------------------------------------------------------------------------- training
def _batches(n: int, size: int, gen: torch.Generator):
    perm = torch.randperm(n, generator=gen)
    return [perm[i:i + size] for i in range(0, n, size)]


def train_network(x: torch.Tensor, w_sm: torch.Tensor, w_eft: torch.Tensor, train_idx: np.ndarray,
                  val_idx: np.ndarray, scale: float, config: TrainConfig, seed: int) -> tuple[TermNet, dict]:
    """One replica of one term, with backwards stopping.

    Trains until ``config.patience`` epochs have passed without a new validation minimum (or
    ``max_epochs``), then restores the parameters of the minimum.  Returns the network and
    {"best_epoch", "epochs", "val_loss" (at the minimum), "history"}.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = TermNet(x.shape[1], list(config.hidden), scale)
    opt = torch.optim.AdamW(net.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    loss_fn = LOSSES[config.loss]
    xt, st, et = x[train_idx], w_sm[train_idx], w_eft[train_idx]
    xv, sv, ev = x[val_idx], w_sm[val_idx], w_eft[val_idx]
    best, best_state, best_epoch, history = np.inf, None, -1, []
    for epoch in range(config.max_epochs):
        net.train()
        for idx in _batches(len(xt), config.batch_size, gen):
            opt.zero_grad()
            loss = loss_fn(ratio_from_output(net.raw(xt[idx])), st[idx], et[idx])
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            val = float(loss_fn(ratio_from_output(net.raw(xv)), sv, ev))
        history.append(val)
        if val < best:
            best, best_epoch = val, epoch
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        elif epoch - best_epoch >= config.patience:
            break
    net.load_state_dict(best_state)
    return net, {"best_epoch": best_epoch, "epochs": len(history), "val_loss": best, "history": history}


def eft_weights(weight: np.ndarray, coef: np.ndarray, scale: float, term: str) -> np.ndarray:
    """The term's EFT "sample" at c_train: the SM weights times 1 + k_t coef_t (must stay positive)."""
    w = weight * (1.0 + scale * coef)
    bad = np.count_nonzero(w <= 0)
    if bad:
        raise ConfigError(f"c_train: {bad} of {len(w)} events get a non-positive weight for {term} at monomial "
                          f"{scale:g} (min 1 + k coef = {np.min(1.0 + scale * coef):.3g}); choose a smaller c_train")
    return w


def load_table(path: str | Path, config: TrainConfig):
    """Training rows of a feature table: the configured fold, positive weights, at most max_events."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: feature table not found")
    table = pd.read_parquet(path)
    need = [*config.features, "weight", "event", *(f"coef_{t}" for t in term_names(config.wc_names)[1:])]
    missing = [c for c in need if c not in table.columns]
    if missing:
        raise ConfigError(f"{path}: no column {missing[0]!r} (features and coef_<term> of wc_names {config.wc_names})")
    table = table[fold_mask(table["event"].to_numpy(), config.fold) & (table["weight"].to_numpy() > 0)]
    if config.max_events and len(table) > config.max_events:
        rows = np.sort(np.random.default_rng(config.seed).choice(len(table), config.max_events, replace=False))
        table = table.iloc[rows]
    if len(table) < 10:
        raise ConfigError(f"{path}: only {len(table)} training events in fold {config.fold!r}")
    return table.reset_index(drop=True)


def train(features_path: str | Path, outdir: str | Path, config: TrainConfig,
          log: Callable[[str], None] = lambda s: None) -> dict:
    """Train every term x replica, filter replicas, export ``ml4eft.onnx``; returns the metadata written."""
    config.validate()
    torch.set_num_threads(config.threads)
    start = time.perf_counter()
    table = load_table(features_path, config)
    outdir = Path(outdir)
    (outdir / REPLICA_DIR).mkdir(parents=True, exist_ok=True)
    x_np = table[list(config.features)].to_numpy(np.float32)
    center, scale = robust_scaler(x_np)
    x = torch.as_tensor((x_np - center) / scale)
    weight = table["weight"].to_numpy(np.float64)
    weight = weight / weight.mean()
    scales = config.term_scales()
    n = len(table)
    n_val = max(1, int(round(config.validation_fraction * n)))
    kept, replicas_meta = [], {}
    for it, (term, k) in enumerate(scales.items()):
        w_eft = eft_weights(weight, table[f"coef_{term}"].to_numpy(np.float64), k, term)
        w_sm_t, w_eft_t = torch.as_tensor(weight, dtype=torch.float32), torch.as_tensor(w_eft, dtype=torch.float32)
        nets, infos = [], []
        perm = np.random.default_rng([config.seed, it]).permutation(n)
        val_idx, fit_idx = perm[:n_val], perm[n_val:]  # one validation set per term: replica losses compare
        for rep in range(config.replicas):
            rng = np.random.default_rng([config.seed, it, rep])
            train_idx = np.sort(rng.choice(fit_idx, len(fit_idx), replace=True))  # Monte Carlo replica
            net, info = train_network(x, w_sm_t, w_eft_t, train_idx, val_idx, k, config,
                                      seed=config.seed * 1000003 + it * 1009 + rep)
            torch.save(net.state_dict(), outdir / REPLICA_DIR / f"{term}_{rep}.pt")
            nets.append(net)
            infos.append(info)
            log(f"{term} replica {rep}: val loss {info['val_loss']:.6f} at epoch {info['best_epoch']} "
                f"({info['epochs']} epochs)")
        losses = [i["val_loss"] for i in infos]
        constant = constant_ratio_loss(w_sm_t[val_idx], w_eft_t[val_idx], config.loss)
        keep = select_replicas(losses, config.outlier_sigma, constant - float(np.median(losses)))
        kept.append([net for net, ok in zip(nets, keep) if ok])
        replicas_meta[term] = {"trained": config.replicas, "c_train_monomial": k, "constant_ratio_loss": constant,
                               "rejected": [int(i) for i in np.flatnonzero(~keep)], "val_loss": [i["val_loss"] for i in infos], "best_epoch": [i["best_epoch"] for i in infos],
                               "epochs": [i["epochs"] for i in infos]}
        log(f"{term}: kept {int(keep.sum())} of {config.replicas} replicas")
    ensemble = Ensemble(center, scale, kept).eval()
    export_onnx(ensemble, outdir / ONNX_FILE, len(config.features))
    with torch.no_grad():
        terms = ensemble(torch.as_tensor(x_np)).numpy()
    names = term_names(config.wc_names)[1:]
    edges = {w: weighted_quantiles(terms[:, names.index(f"lin_{w}")].astype(np.float64), weight,
                                   config.quantile_bins).tolist() for w in config.wc_names}
    meta = {
        "wc_names": list(config.wc_names), "features": list(config.features), "terms": names,
        "c_train": dict(config.c_train), "term_scales": scales,
        "scaler": {"center": center.tolist(), "scale": scale.tolist()},
        "quantile_edges": edges, "replicas": replicas_meta,
        "training": {"features_file": str(Path(features_path).resolve()), "fold": config.fold,
                     "datasets": sorted(map(str, table["dataset"].unique())) if "dataset" in table else [],
                     "events": n, "seed": config.seed, "seconds": time.perf_counter() - start},
        "config": to_dict(config),
    }
    (outdir / METADATA).write_text(json.dumps(meta, indent=1))
    return meta


# ---------------------------------------------------------------------------- export and replicas
def export_onnx(ensemble: Ensemble, path: Path, n_features: int) -> Path:
    """One ONNX graph: input ``features`` (N, n_features) float32 -> output ``terms`` (N, n_terms - 1)."""
    dummy = torch.zeros(7, n_features)
    torch.onnx.export(ensemble, (dummy,), str(path), input_names=["features"], output_names=["terms"],
                      dynamic_axes={"features": {0: "n"}, "terms": {0: "n"}}, opset_version=17, dynamo=False)
    return path


def load_replica(model_dir: str | Path, term: str, replica: int, n_in: int, hidden: list[int], scale: float) -> TermNet:
    """One replica network from its state dict (``torch.load(weights_only=True)``)."""
    net = TermNet(n_in, hidden, scale)
    state = torch.load(Path(model_dir) / REPLICA_DIR / f"{term}_{replica}.pt", weights_only=True)
    net.load_state_dict(state)
    return net.eval()


def replica_terms(model_dir: str | Path, x: np.ndarray) -> np.ndarray:
    """(replicas, N, n_terms - 1) NN terms of every trained replica (rejected ones included) on features ``x``."""
    from crema.models.ml4eft import read_metadata

    meta = read_metadata(model_dir)
    cfg = meta["config"]
    center, scale = (np.asarray(meta["scaler"][k], np.float32) for k in ("center", "scale"))
    xs = torch.as_tensor((np.asarray(x, np.float32) - center) / scale)
    out = np.zeros((cfg["replicas"], len(xs), len(meta["terms"])))
    with torch.no_grad():
        for it, term in enumerate(meta["terms"]):
            for rep in range(cfg["replicas"]):
                net = load_replica(model_dir, term, rep, xs.shape[1], cfg["hidden"], meta["term_scales"][term])
                out[rep, :, it] = net(xs).numpy()
    return out
