"""A small MLP (torch, the ``[train]`` extra): weighted, class-balanced binary cross-entropy."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from crema.models.classifier.base import Method, read_meta, shuffled_split, training_weights


def _network(n_features: int, hidden: list[int], mean: np.ndarray, std: np.ndarray, log: np.ndarray):
    """log(1 + x) of the non-negative features (momenta, masses: heavy tails) -> standardise
    (NaN -> 0, i.e. the mean) -> hidden ReLU layers -> sigmoid; the whole model in one module so
    the ONNX export needs no preprocessing outside it."""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
            self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))
            self.register_buffer("log", torch.as_tensor(log, dtype=torch.bool))
            layers, width = [], n_features
            for h in hidden:
                layers += [nn.Linear(width, h), nn.ReLU()]
                width = h
            layers.append(nn.Linear(width, 1))
            self.body = nn.Sequential(*layers)

        def logits(self, x):
            x = torch.where(self.log, torch.log1p(torch.clamp(x, min=0.0)), x)
            z = (x - self.mean) / self.std
            z = torch.where(torch.isnan(z), torch.zeros_like(z), z)
            return self.body(z).squeeze(-1)

        def forward(self, x):
            return torch.sigmoid(self.logits(x))

    return Net()


class MLP(Method):
    """Fully connected network; inputs standardised with the training means/widths (missing -> mean),
    non-negative features (momenta, masses, counts) first as log(1 + x) (``log_inputs``).

    Trained with Adam on the weighted binary cross-entropy (:func:`training_weights`: negative
    weights 0, classes balanced by weight), early stopping on the weighted validation loss of a
    shuffled ``validation_fraction``; the best epoch's weights are kept. Seeded and run with
    ``threads`` torch threads, so a rerun gives the same model.
    """

    name = "mlp"

    def __init__(self, features: list[str], seed: int = 0, threads: int = 1, hidden: list[int] | None = None,
                 epochs: int = 60, batch_size: int = 256, learning_rate: float = 2e-3, weight_decay: float = 1e-5,
                 patience: int = 8, validation_fraction: float = 0.2, log_inputs: bool = True) -> None:
        super().__init__(features, seed, threads)
        self.params = {"hidden": list(hidden or [64, 64]), "epochs": epochs, "batch_size": batch_size,
                       "learning_rate": learning_rate, "weight_decay": weight_decay, "patience": patience,
                       "validation_fraction": validation_fraction, "log_inputs": log_inputs}
        self.net = None
        self.best_epoch: int | None = None

    def _build(self, mean, std, log):
        self.net = _network(len(self.features), self.params["hidden"], mean, std, log)
        return self.net

    def fit(self, X, y, sample_weight) -> "MLP":
        import torch

        torch.manual_seed(self.seed)
        torch.set_num_threads(self.threads)
        X = np.asarray(X, dtype=np.float32)
        w = training_weights(y, sample_weight).astype(np.float32)
        train, val = shuffled_split(len(X), self.params["validation_fraction"], self.seed)
        log = np.nan_to_num(np.nanmin(X[train], axis=0), nan=-1.0) >= 0 if self.params["log_inputs"] \
            else np.zeros(X.shape[1], bool)
        Z = np.where(log, np.log1p(np.clip(X[train], 0, None)), X[train])
        mean = np.nan_to_num(np.nanmean(Z, axis=0))
        std = np.nan_to_num(np.nanstd(Z, axis=0), nan=1.0)
        std[std == 0] = 1.0
        net = self._build(mean, std, log)
        xt, yt, wt = (torch.as_tensor(a) for a in (X[train], np.asarray(y, np.float32)[train], w[train]))
        xv, yv, wv = (torch.as_tensor(a) for a in (X[val], np.asarray(y, np.float32)[val], w[val]))
        opt = torch.optim.Adam(net.parameters(), lr=self.params["learning_rate"], weight_decay=self.params["weight_decay"])
        loss_fn = torch.nn.BCEWithLogitsLoss(reduction="none")
        gen = torch.Generator().manual_seed(self.seed)
        best, best_state, waited = float("inf"), None, 0
        bs = self.params["batch_size"]
        for epoch in range(self.params["epochs"]):
            net.train()
            order = torch.randperm(len(xt), generator=gen)
            for start in range(0, len(xt), bs):
                idx = order[start:start + bs]
                loss = (loss_fn(net.logits(xt[idx]), yt[idx]) * wt[idx]).sum() / wt[idx].sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
            net.eval()
            with torch.no_grad():
                val_loss = float((loss_fn(net.logits(xv), yv) * wv).sum() / wv.sum())
            if val_loss < best - 1e-6:
                best, waited, self.best_epoch = val_loss, 0, epoch
                best_state = {k: v.clone() for k, v in net.state_dict().items()}
            else:
                waited += 1
                if waited >= self.params["patience"]:
                    break
        net.load_state_dict(best_state)
        net.eval()
        return self

    def predict(self, X) -> np.ndarray:
        import torch

        torch.set_num_threads(self.threads)
        with torch.no_grad():
            return self.net(torch.as_tensor(np.asarray(X, dtype=np.float32))).numpy().astype(np.float64)

    def save(self, directory) -> None:
        import torch

        directory = Path(directory)
        self._write_meta(directory, {"params": self.params, "best_epoch": self.best_epoch})
        torch.save(self.net.state_dict(), directory / "state_dict.pt")

    @classmethod
    def load(cls, directory) -> "MLP":
        import torch

        meta = read_meta(directory)
        mlp = cls(meta["features"], meta["seed"], **meta["params"])
        mlp.best_epoch = meta["best_epoch"]
        state = torch.load(Path(directory) / "state_dict.pt", weights_only=True)  # tensors only, never a pickle
        n = len(mlp.features)
        mlp._build(np.zeros(n, np.float32), np.ones(n, np.float32), np.zeros(n, bool)).load_state_dict(state)
        mlp.net.eval()
        return mlp

    def to_onnx(self, path) -> Path:
        import torch

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        example = torch.zeros(2, len(self.features))
        torch.onnx.export(self.net, (example,), str(path), input_names=["features"], output_names=["score"],
                          dynamic_axes={"features": {0: "N"}, "score": {0: "N"}}, opset_version=17, dynamo=False)
        return path
