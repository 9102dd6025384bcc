"""A small SPANet-style assignment network: training on crema's HDF5 files and ONNX export.

This is a compact stand-in for SPANet's own trainer, meant for tests, smoke runs
and the export contract (``docs/spanet.md``), not for physics performance:

* jets (and one token per global input) pass through a few self-attention layers;
* each particle gets a *symmetric* tuple score: per-product linear scores plus
  bilinear pair scores, with parameters tied so that the score is invariant
  under the particle's permutation groups; softmax over the valid flattened
  tuples (distinct, unpadded jets), exactly zero elsewhere;
* detection (sigmoid), regressions (in physical units: the standardisation is
  undone inside the graph) and classifications (softmax).

Standardisation of the inputs (mean/std per feature) is part of the graph, the
``log(1+x)`` of ``log_normalize`` features is not (the wrapper applies it).
Training is reproducible from ``seed`` (CPU, deterministic algorithms).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from crema.models.spanet import EventFile, builtin_event_file, network_inputs

__all__ = ["AssignmentNet", "TrainConfig", "export_onnx", "load_h5", "load_train_config", "train"]


def load_h5(path: str | os.PathLike, event: EventFile) -> dict[str, np.ndarray | dict]:
    """Read a training file into network-ready arrays (log(1+x) applied, not standardised)."""
    import h5py

    with h5py.File(path) as f:
        arrays = {k: f[k][:] for k in _keys(f)}
    feeds = network_inputs(arrays, event)
    return {
        "inputs": {src.name: feeds[f"{src.name}_data"] for src in event.inputs},
        "masks": {src.name: feeds[f"{src.name}_mask"] for src in event.inputs},
        "targets": {p.name: np.stack([arrays[f"TARGETS/{p.name}/{q}"] for q in p.products], 1).astype(np.int64)
                    for p in event.particles},
        "regressions": {n: arrays[f"REGRESSIONS/{n}"].astype(np.float32) for n in event.regression_names},
        "classifications": {n: arrays[f"CLASSIFICATIONS/{n}"].astype(np.int64) for n in event.classification_names},
    }


def _keys(f) -> list[str]:
    keys: list[str] = []
    f.visititems(lambda name, obj: keys.append(name) if hasattr(obj, "shape") else None)
    return keys


def _mlp(n_in: int, hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.GELU(), nn.Linear(hidden, 1))


class _TupleScore(nn.Module):
    """Symmetric score over k-tuples of jets for one particle.

    Terms: per-product linear scores of the jet embeddings, bilinear pair scores, a small MLP of
    each pair's kinematics (log(1+m_ij), Delta R_ij) and, for three or more products, an MLP of
    log(1+m) of the whole tuple (the invariant masses are what a chi-square fit uses too; as
    interaction features in the manner of ParT they make mass windows easy to learn).  Products in
    one permutation group share parameters, so the score is invariant under the group.
    """

    def __init__(self, products: Sequence[str], groups: Sequence[Sequence[int]], hidden: int, n_jets: int,
                 kinematics: bool):
        super().__init__()
        self.k = len(products)
        self.kinematics = kinematics
        # (a constant: onnxruntime has no boolean EyeLike kernel)
        self.register_buffer("offdiag", ~torch.eye(n_jets, dtype=torch.bool), persistent=False)
        rep = list(range(self.k))  # products in one group share parameters
        for g in groups:
            for a in g:
                rep[a] = g[0]
        self.rep = rep
        reps = sorted(set(rep))
        self.unary = nn.ModuleDict({str(r): nn.Linear(hidden, 1) for r in reps})
        pairs = sorted({tuple(sorted((rep[a], rep[b]))) for a, b in itertools.combinations(range(self.k), 2)})
        self.pair = nn.ParameterDict({f"{a}_{b}": nn.Parameter(torch.randn(hidden, hidden) * hidden**-0.5) for a, b in pairs})
        if kinematics:
            self.pair_mlp = nn.ModuleDict({f"{a}_{b}": _mlp(2, 16) for a, b in pairs})
            self.tuple_mlp = _mlp(1, 16) if self.k >= 3 else None

    def forward(self, h: torch.Tensor, mask: torch.Tensor, pair_kin: torch.Tensor | None,
                p4: torch.Tensor | None) -> torch.Tensor:
        B, N, _ = h.shape
        score, valid = None, None
        for a in range(self.k):
            shape = [B] + [1] * self.k
            shape[a + 1] = N
            term = self.unary[str(self.rep[a])](h).reshape(shape)
            score = term if score is None else score + term
            valid = mask.reshape(shape) if valid is None else valid & mask.reshape(shape)
        for a, b in itertools.combinations(range(self.k), 2):
            ra, rb = self.rep[a], self.rep[b]
            key = f"{min(ra, rb)}_{max(ra, rb)}"
            M = self.pair[key]
            if ra == rb:
                M = 0.5 * (M + M.T)  # same group: the pair term itself must be symmetric
            elif ra > rb:
                M = M.T  # (a, b) uses the transposed parameter of (b, a)
            pair = torch.einsum("bih,hg,bjg->bij", h, M, h)
            if self.kinematics:
                pair = pair + self.pair_mlp[key](pair_kin).squeeze(-1)  # symmetric in (i, j)
            shape = [B] + [1] * self.k
            shape[a + 1] = shape[b + 1] = N
            score = score + pair.reshape(shape)
            valid = valid & self.offdiag.reshape(shape[1:])
        if self.kinematics and self.tuple_mlp is not None:
            total = None
            for a in range(self.k):
                shape = [B] + [1] * self.k + [4]
                shape[a + 1] = N
                term = p4.reshape(shape)
                total = term if total is None else total + term
            m2 = total[..., 3] ** 2 - (total[..., :3] ** 2).sum(-1)
            score = score + self.tuple_mlp(torch.log1p(torch.sqrt(m2.clamp(min=1e-6)))[..., None]).squeeze(-1)
        flat = torch.where(valid, score, torch.full_like(score, -1e4)).reshape(B, -1)
        return torch.softmax(flat, dim=1).reshape(score.shape) * valid.to(score.dtype)


class _Attention(nn.Module):
    """Multi-head self-attention with a key mask (hand-written: torch's fused kernel does not export to ONNX)."""

    def __init__(self, hidden: int, heads: int):
        super().__init__()
        if hidden % heads:
            raise ValueError("hidden must be a multiple of heads")
        self.heads, self.dim = heads, hidden // heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, T, H = h.shape
        q, k, v = self.qkv(h).reshape(B, T, 3, self.heads, self.dim).permute(2, 0, 3, 1, 4).unbind(0)
        logits = q @ k.transpose(-1, -2) / self.dim**0.5  # (B, heads, T, T)
        logits = torch.where(mask[:, None, None, :], logits, torch.full_like(logits, -1e4))
        return self.out((torch.softmax(logits, dim=-1) @ v).transpose(1, 2).reshape(B, T, H))


def _kinematic_features(source) -> tuple[dict[str, int], dict[str, bool]] | None:
    """Positions of pt, eta, mass, sin_phi, cos_phi among the jet features and whether each is
    log(1+x)-transformed; None when the event file lacks one (then no kinematic terms)."""
    names = ("pt", "eta", "mass", "sin_phi", "cos_phi")
    feats = dict(source.features)
    if not all(n in feats for n in names):
        return None
    order = list(source.feature_names)
    return {n: order.index(n) for n in names}, {n: feats[n] == "log_normalize" for n in names}


class AssignmentNet(nn.Module):
    """Inputs ``(data, mask)`` per event-file input, in event-file order; outputs in the contract's order."""

    def __init__(self, event: EventFile, max_jets: int, stats: dict[str, tuple[np.ndarray, np.ndarray]],
                 regression_stats: dict[str, tuple[float, float]], hidden: int = 32, layers: int = 2, heads: int = 4):
        super().__init__()
        self.event, self.max_jets = event, max_jets
        self.names = [i.name for i in event.inputs]
        for src in event.inputs:
            mean, std = stats[src.name]
            self.register_buffer(f"mean_{src.name}", torch.as_tensor(mean, dtype=torch.float32))
            self.register_buffer(f"std_{src.name}", torch.as_tensor(std, dtype=torch.float32))
        self.embed = nn.ModuleDict({i.name: nn.Linear(len(i.features), hidden) for i in event.inputs})
        self.attn = nn.ModuleList([_Attention(hidden, heads) for _ in range(layers)])
        self.ff = nn.ModuleList([nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, hidden)) for _ in range(layers)])
        self.norm1 = nn.ModuleList([nn.LayerNorm(hidden) for _ in range(layers)])
        self.norm2 = nn.ModuleList([nn.LayerNorm(hidden) for _ in range(layers)])
        self.kinematics = _kinematic_features(event.sequential[0])
        self.tuples = nn.ModuleDict({p.name: _TupleScore(p.products, p.groups, hidden, max_jets, self.kinematics is not None)
                                     for p in event.particles})
        self.detect = nn.Linear(hidden, len(event.particles))
        self.regress = nn.Linear(hidden, max(1, len(event.regression_names)))
        rs = [regression_stats[n] for n in event.regression_names] or [(0.0, 1.0)]
        self.register_buffer("reg_mean", torch.tensor([m for m, _ in rs], dtype=torch.float32))
        self.register_buffer("reg_std", torch.tensor([s for _, s in rs], dtype=torch.float32))
        self.classify = nn.ModuleDict({n.replace("/", "_"): nn.Linear(hidden, 2) for n in event.classification_names})

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        tokens, masks, seq_len = [], [], 0
        for j, src in enumerate(self.event.inputs):
            x, m = args[2 * j], args[2 * j + 1]
            x = (x - getattr(self, f"mean_{src.name}")) / getattr(self, f"std_{src.name}")
            tokens.append(self.embed[src.name](x) * m[..., None].to(x.dtype))
            masks.append(m)
            if j == 0:
                seq_len = x.shape[1]
        h = torch.cat(tokens, dim=1)
        mask = torch.cat(masks, dim=1)
        for attn, ff, n1, n2 in zip(self.attn, self.ff, self.norm1, self.norm2):
            h = n1(h + attn(h, mask))  # (finite masking: an event without jets gives no NaN)
            h = n2(h + ff(h))
        jets, jet_mask = h[:, :seq_len], mask[:, :seq_len]
        mf = mask.to(h.dtype)
        pooled = (h * mf[..., None]).sum(1) / mf.sum(1, keepdim=True).clamp(min=1.0)
        pair_kin, p4 = self._kinematics(args[0]) if self.kinematics is not None else (None, None)
        probs = [self.tuples[p.name](jets, jet_mask, pair_kin, p4) for p in self.event.particles]
        det = torch.sigmoid(self.detect(pooled))
        reg = self.regress(pooled) * self.reg_std + self.reg_mean
        cls = [torch.softmax(self.classify[n.replace("/", "_")](pooled), dim=-1) for n in self.event.classification_names]
        return (*probs, *[det[:, j] for j in range(det.shape[1])],
                *[reg[:, j] for j in range(len(self.event.regression_names))], *cls)

    def _kinematics(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Jet four-vectors (B, N, 4) and pair features (B, N, N, 2) from the unstandardised inputs."""
        idx, logged = self.kinematics
        def value(name: str) -> torch.Tensor:
            v = x[..., idx[name]]
            return torch.exp(v) - 1.0 if logged[name] else v  # undo the log(1+x) applied outside
        pt, eta, mass = value("pt").clamp(min=0.0), value("eta"), value("mass").clamp(min=0.0)
        sin_phi, cos_phi = value("sin_phi"), value("cos_phi")
        px, py = pt * cos_phi, pt * sin_phi
        pz = pt * 0.5 * (torch.exp(eta) - torch.exp(-eta))  # sinh (no ONNX export for aten::sinh)
        p4 = torch.stack([px, py, pz, torch.sqrt(px**2 + py**2 + pz**2 + mass**2 + 1e-6)], dim=-1)
        pair = p4[:, :, None, :] + p4[:, None, :, :]
        m = torch.sqrt((pair[..., 3] ** 2 - (pair[..., :3] ** 2).sum(-1)).clamp(min=1e-6))  # (finite gradient at m = 0)
        cos_dphi = cos_phi[:, :, None] * cos_phi[:, None, :] + sin_phi[:, :, None] * sin_phi[:, None, :]
        sin_dphi = sin_phi[:, :, None] * cos_phi[:, None, :] - cos_phi[:, :, None] * sin_phi[:, None, :]
        dphi = torch.atan(sin_dphi / (1.0 + cos_dphi).clamp(min=1e-6)) * 2.0  # atan2 without atan2
        deta = eta[:, :, None] - eta[:, None, :]
        return torch.stack([torch.log1p(m), torch.sqrt(deta**2 + dphi**2 + 1e-6)], dim=-1), p4

    @property
    def output_names(self) -> list[str]:
        e = self.event
        return ([f"{p.name}_assignment_probability" for p in e.particles] + [f"{p.name}_detection_probability" for p in e.particles]
                + list(e.regression_names) + list(e.classification_names))

    @property
    def input_names(self) -> list[str]:
        return [f"{n}_{s}" for n in self.names for s in ("data", "mask")]


@dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters (defaults: the shipped models, minutes on 2 CPU cores).

    The learning rate follows a cosine decay to zero over ``epochs``; a ``validation``
    fraction of the events (chosen with ``seed``) is held out and the weights of the epoch
    with the lowest validation loss are exported.
    """

    epochs: int = 5
    batch_size: int = 256
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    hidden: int = 32
    layers: int = 2
    heads: int = 4
    seed: int = 0
    validation: float = 0.1
    threads: int = 2
    regression_weight: float = 1.0  # weight of the regression terms in the loss


def load_train_config(path: str | os.PathLike | None) -> TrainConfig:
    """Training settings from YAML (keys: the :class:`TrainConfig` fields); None gives the defaults."""
    from crema.schema import load

    return TrainConfig() if path is None else load(TrainConfig, path)


def _target_logprob(prob: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """log of the probability of the target tuple (any permutation: the tensor is symmetric, so the canonical entry)."""
    B = prob.shape[0]
    flat = prob.reshape(B, -1)
    N = prob.shape[1]
    idx = torch.zeros(B, dtype=torch.long)
    for a in range(target.shape[1]):
        idx = idx * N + target[:, a].clamp(min=0)
    return torch.log(flat.gather(1, idx[:, None])[:, 0].clamp(min=1e-12))


def _stats(data: dict, event: EventFile) -> tuple[dict, dict]:
    """Input mean/std per feature (``none`` features untouched) and regression mean/std."""
    stats = {}
    for src in event.inputs:
        x, m = data["inputs"][src.name], data["masks"][src.name]
        vals = x[m]
        mean, std = vals.mean(0), vals.std(0)
        for i, (_, norm) in enumerate(src.features):
            if norm == "none":
                mean[i], std[i] = 0.0, 1.0
        stats[src.name] = (mean, np.where(std > 1e-6, std, 1.0))
    reg_stats = {}
    for name, v in data["regressions"].items():
        f = v[np.isfinite(v)]
        reg_stats[name] = (float(f.mean()) if len(f) else 0.0, float(f.std()) if len(f) > 1 and f.std() > 0 else 1.0)
    return stats, reg_stats


def _loss(net: AssignmentNet, tensors: dict, b: torch.Tensor, reg_stats: dict,
          regression_weight: float = 1.0) -> tuple[torch.Tensor, int]:
    """Summed loss over assignment (target tuple), detection, regressions and classifications; and the
    number of particles whose highest-probability tuple is the target (for monitoring)."""
    event = net.event
    args = []
    for src in event.inputs:
        args += [tensors["inputs"][src.name][b], tensors["masks"][src.name][b]]
    outs = net(*args)
    loss = torch.zeros(())
    correct = 0
    P = len(event.particles)
    for j, p in enumerate(event.particles):
        t = tensors["targets"][p.name][b]
        full = (t >= 0).all(1)
        if full.any():
            logp = _target_logprob(outs[j][full], t[full])
            loss = loss - logp.mean()
            best = outs[j][full].reshape(int(full.sum()), -1).max(dim=1).values
            correct += int((logp >= torch.log(best.clamp(min=1e-12)) - 1e-6).sum())
        loss = loss + nn.functional.binary_cross_entropy(outs[P + j].clamp(1e-6, 1 - 1e-6), full.float())
    R = len(event.regression_names)
    for j, name in enumerate(event.regression_names):
        y = tensors["regressions"][name][b]
        ok = torch.isfinite(y)
        if ok.any():
            loss = loss + regression_weight * (((outs[2 * P + j][ok] - y[ok]) / reg_stats[name][1]) ** 2).mean()
    for j, name in enumerate(event.classification_names):
        y = tensors["classifications"][name][b]
        ok = y >= 0
        if ok.any():
            loss = loss + nn.functional.nll_loss(torch.log(outs[2 * P + R + j][ok].clamp(min=1e-12)), y[ok])
    return loss, correct


def train(h5_path: str | os.PathLike, event_file: str | os.PathLike | EventFile, output: str | os.PathLike,
          config: TrainConfig = TrainConfig(), log=None) -> Path:
    """Train on a crema SPANet HDF5 file and write the ONNX export to ``output``; returns its path.

    ``log`` (a callable taking a string) receives one line per epoch.
    """
    import copy
    import time

    event = builtin_event_file(event_file)
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    torch.use_deterministic_algorithms(True)
    gen = torch.Generator().manual_seed(config.seed)
    data = load_h5(h5_path, event)
    seq = event.sequential[0].name
    n, max_jets = data["inputs"][seq].shape[:2]
    order = torch.randperm(n, generator=gen)
    n_val = int(round(config.validation * n)) if n > 1 else 0
    val_idx, train_idx = order[:n_val], order[n_val:]
    stats, reg_stats = _stats({k: ({n_: v[train_idx.numpy()] for n_, v in d.items()}) for k, d in data.items()}, event)
    net = AssignmentNet(event, max_jets, stats, reg_stats, config.hidden, config.layers, config.heads)
    opt = torch.optim.AdamW(net.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    steps = config.epochs * max(1, -(-len(train_idx) // config.batch_size))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))
    tensors = {k: {n_: torch.as_tensor(v) for n_, v in d.items()} for k, d in data.items()}
    best, best_state = float("inf"), None
    for epoch in range(config.epochs):
        start = time.perf_counter()
        net.train()
        perm = train_idx[torch.randperm(len(train_idx), generator=gen)]
        total = 0.0
        for s in range(0, len(perm), config.batch_size):
            loss, _ = _loss(net, tensors, perm[s : s + config.batch_size], reg_stats, config.regression_weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
            total += loss.item() * min(config.batch_size, len(perm) - s)
        net.eval()
        val_loss, val_correct = 0.0, 0
        with torch.no_grad():
            for s in range(0, n_val, 2048):
                loss, correct = _loss(net, tensors, val_idx[s : s + 2048], reg_stats, config.regression_weight)
                val_loss += float(loss) * min(2048, n_val - s)
                val_correct += correct
        val_loss = val_loss / n_val if n_val else total / max(1, len(perm))
        if val_loss < best:
            best, best_state = val_loss, copy.deepcopy(net.state_dict())
        if log is not None:
            log(f"epoch {epoch + 1}/{config.epochs}: train loss {total / max(1, len(perm)):.4f}, "
                f"validation loss {val_loss:.4f}, particles with the target as best tuple {val_correct}, "
                f"{time.perf_counter() - start:.1f} s")
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    # the weights first: an export failure must not lose a training
    torch.save({"state_dict": net.state_dict(), "config": asdict(config)}, Path(output).with_suffix(".pt"))
    return export_onnx(net, output)


def export_onnx(net: AssignmentNet, output: str | os.PathLike, opset: int = 17) -> Path:
    """Export with the contract's names; batch dimension dynamic, jet slots fixed."""
    output = Path(output)
    args = []
    for src in net.event.inputs:
        n = net.max_jets if src.sequential else 1
        args += [torch.zeros(2, n, len(src.features)), torch.ones(2, n, dtype=torch.bool)]
    names_in, names_out = net.input_names, net.output_names
    with torch.no_grad():
        torch.onnx.export(net, tuple(args), str(output), input_names=names_in, output_names=names_out,
                          opset_version=opset, dynamic_axes={k: {0: "batch"} for k in names_in + names_out}, dynamo=False)
    return output
