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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from crema.models.spanet import EventFile, builtin_event_file

__all__ = ["AssignmentNet", "TrainConfig", "load_h5", "train", "export_onnx"]


def _log_if(x: np.ndarray, norm: str) -> np.ndarray:
    return np.log1p(np.maximum(x, 0.0)) if norm == "log_normalize" else x


def load_h5(path: str | os.PathLike, event: EventFile) -> dict[str, np.ndarray | dict]:
    """Read a training file into network-ready arrays (log(1+x) applied, not standardised)."""
    import h5py

    out: dict = {"inputs": {}, "masks": {}, "targets": {}, "regressions": {}, "classifications": {}}
    with h5py.File(path) as f:
        for src in event.inputs:
            cols = [_log_if(f[f"INPUTS/{src.name}/{feat}"][:].astype(np.float32), norm) for feat, norm in src.features]
            x = np.stack(cols, axis=-1).astype(np.float32)
            if src.sequential:
                out["masks"][src.name] = f[f"INPUTS/{src.name}/MASK"][:].astype(bool)
            else:
                x = x[:, None, :]
                out["masks"][src.name] = np.ones((len(x), 1), dtype=bool)
            out["inputs"][src.name] = x
        for p in event.particles:
            out["targets"][p.name] = np.stack([f[f"TARGETS/{p.name}/{q}"][:] for q in p.products], axis=1).astype(np.int64)
        for name in event.regression_names:
            out["regressions"][name] = f[f"REGRESSIONS/{name}"][:].astype(np.float32)
        for name in event.classification_names:
            out["classifications"][name] = f[f"CLASSIFICATIONS/{name}"][:].astype(np.int64)
    return out


class _TupleScore(nn.Module):
    """Symmetric score over k-tuples of jets for one particle."""

    def __init__(self, products: Sequence[str], groups: Sequence[Sequence[int]], hidden: int, n_jets: int):
        super().__init__()
        self.k = len(products)
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

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
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
            M = self.pair[f"{min(ra, rb)}_{max(ra, rb)}"]
            if ra == rb:
                M = 0.5 * (M + M.T)  # same group: the pair term itself must be symmetric
            elif ra > rb:
                M = M.T  # (a, b) uses the transposed parameter of (b, a)
            pair = torch.einsum("bih,hg,bjg->bij", h, M, h)
            shape = [B] + [1] * self.k
            shape[a + 1] = shape[b + 1] = N
            score = score + pair.reshape(shape)
            valid = valid & self.offdiag.reshape(shape[1:])
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
        self.tuples = nn.ModuleDict({p.name: _TupleScore(p.products, p.groups, hidden, max_jets) for p in event.particles})
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
        probs = [self.tuples[p.name](jets, jet_mask) for p in self.event.particles]
        det = torch.sigmoid(self.detect(pooled))
        reg = self.regress(pooled) * self.reg_std + self.reg_mean
        cls = [torch.softmax(self.classify[n.replace("/", "_")](pooled), dim=-1) for n in self.event.classification_names]
        return (*probs, *[det[:, j] for j in range(det.shape[1])],
                *[reg[:, j] for j in range(len(self.event.regression_names))], *cls)

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
    """Training hyper-parameters (small defaults: a smoke run, not a physics training)."""

    epochs: int = 5
    batch_size: int = 256
    learning_rate: float = 2e-3
    hidden: int = 32
    layers: int = 2
    heads: int = 4
    seed: int = 0


def _target_logprob(prob: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """log of the probability of the target tuple (any permutation: the tensor is symmetric, so the canonical entry)."""
    B = prob.shape[0]
    flat = prob.reshape(B, -1)
    N = prob.shape[1]
    idx = torch.zeros(B, dtype=torch.long)
    for a in range(target.shape[1]):
        idx = idx * N + target[:, a].clamp(min=0)
    return torch.log(flat.gather(1, idx[:, None])[:, 0].clamp(min=1e-12))


def train(h5_path: str | os.PathLike, event_file: str | os.PathLike | EventFile, output: str | os.PathLike,
          config: TrainConfig = TrainConfig()) -> Path:
    """Train on a crema SPANet HDF5 file and write the ONNX export to ``output``; returns its path."""
    event = builtin_event_file(event_file)
    torch.manual_seed(config.seed)
    torch.use_deterministic_algorithms(True)
    gen = torch.Generator().manual_seed(config.seed)
    data = load_h5(h5_path, event)
    seq = event.sequential[0].name
    n, max_jets = data["inputs"][seq].shape[:2]
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
    net = AssignmentNet(event, max_jets, stats, reg_stats, config.hidden, config.layers, config.heads)
    opt = torch.optim.AdamW(net.parameters(), lr=config.learning_rate)
    tensors = {k: {n_: torch.as_tensor(v) for n_, v in d.items()} for k, d in data.items()}
    for _ in range(config.epochs):
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, config.batch_size):
            b = perm[start : start + config.batch_size]
            args = []
            for src in event.inputs:
                args += [tensors["inputs"][src.name][b], tensors["masks"][src.name][b]]
            outs = net(*args)
            loss = torch.zeros(())
            P = len(event.particles)
            for j, p in enumerate(event.particles):
                t = tensors["targets"][p.name][b]
                full = (t >= 0).all(1)
                if full.any():
                    loss = loss - _target_logprob(outs[j][full], t[full]).mean()
                loss = loss + nn.functional.binary_cross_entropy(outs[P + j].clamp(1e-6, 1 - 1e-6), full.float())
            R = len(event.regression_names)
            for j, name in enumerate(event.regression_names):
                y = tensors["regressions"][name][b]
                ok = torch.isfinite(y)
                if ok.any():
                    m, s = reg_stats[name]
                    loss = loss + (((outs[2 * P + j][ok] - y[ok]) / s) ** 2).mean()
            for j, name in enumerate(event.classification_names):
                y = tensors["classifications"][name][b]
                ok = y >= 0
                if ok.any():
                    loss = loss + nn.functional.nll_loss(torch.log(outs[2 * P + R + j][ok].clamp(min=1e-12)), y[ok])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
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
