"""Training of the Deep Sets jet calibration (torch; needs the ``train`` extra) and its ONNX export.

The master config (``crema/configs/calibration/deepsets.yaml``, ``jet_only.yaml``)
has four sections: ``dataset`` (read by ``crema calib-dataset``), ``features``
(:class:`~crema.models.jet_calibration.FeatureConfig`), ``model``
(:class:`ModelConfig`) and ``training`` (:class:`TrainingConfig`).

Network (:class:`JetCalibrationNet`): the transform of ``transform.yaml`` as
fixed graph operations; per constituent type a Deep Sets block (numerical
features + embeddings of the categorical ones -> MLP or ResNet with shared
weights -> sum over the jet's constituents); the block sums, the transformed
jet-level features and their embeddings -> head MLP/ResNet -> one output, the
predicted ``log(pt_gen / pt_raw)``.

Training is fast on a couple of CPU cores: the transform is applied once to
the whole dataset, constituents stay in flat (CSR) form and each batch runs
the block MLP on its real constituents only (no padding; batch norm sees only
real constituents) and sums them with ``index_add``.  The exported graph uses
the padded form with masks (:data:`~crema.models.jet_calibration` contract);
both forms give the same numbers in eval mode.  Reproducible from
``training.seed`` with the same number of threads (deterministic algorithms).
"""

from __future__ import annotations

import copy
import itertools
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml
from torch import nn

from crema.models.jet_calibration import (
    LOG_FLOOR,
    Arcsinh,
    FeatureArrays,
    FeatureConfig,
    GroupTransform,
    Transform,
    config_path,
    feeds,
    fit_transform,
    input_names,
    load_dataset,
    load_transform,
    save_transform,
)
from crema.schema import ConfigError, from_dict, load_yaml, to_dict

__all__ = [
    "BlockConfig",
    "CalibrationConfig",
    "JetCalibrationNet",
    "ModelConfig",
    "ReweightConfig",
    "ScheduleConfig",
    "TrainingConfig",
    "build_network",
    "export_onnx",
    "load_checkpoint",
    "load_config",
    "predict",
    "save_model",
    "train",
    "training_weights",
]


# ---------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class BlockConfig:
    """An MLP (``Linear -> [BatchNorm] -> activation -> [Dropout]`` per width) or a ResNet
    (input layer to ``units[0]``, then one residual block of two layers per width)."""

    type: Literal["mlp", "resnet"] = "mlp"
    units: list[int] = field(default_factory=lambda: [64, 64])
    batch_norm: bool = True
    dropout: float = 0.0
    activation: Literal["relu", "silu", "gelu"] = "relu"

    def validate(self) -> None:
        if not self.units or any(u < 1 for u in self.units):
            raise ConfigError("units: a non-empty list of positive widths is needed")
        if not 0 <= self.dropout < 1:
            raise ConfigError("dropout: must be in [0, 1)")


@dataclass(frozen=True)
class ModelConfig:
    """Network shape: categorical embedding sizes, one block per constituent type, the head."""

    embedding_dim: int = 4
    embeddings: dict[str, int] = field(default_factory=dict)  # feature name -> size (overrides embedding_dim)
    blocks: dict[str, BlockConfig] = field(default_factory=dict)  # per type (missing: BlockConfig())
    head: BlockConfig = field(default_factory=lambda: BlockConfig(units=[64, 64]))

    def validate(self) -> None:
        if self.embedding_dim < 1:
            raise ConfigError("embedding_dim: must be >= 1")
        for k, v in self.embeddings.items():
            if v < 1:
                raise ConfigError(f"embeddings.{k}: must be >= 1")


@dataclass(frozen=True)
class ScheduleConfig:
    """Learning-rate schedule per epoch: ``cosine`` (to lr x min_factor), ``plateau``
    (x factor after ``patience`` epochs without improvement), ``step`` (x factor every ``step_epochs``) or ``none``."""

    type: Literal["none", "cosine", "plateau", "step"] = "cosine"
    min_factor: float = 0.01
    factor: float = 0.5
    patience: int = 2
    step_epochs: int = 10


@dataclass(frozen=True)
class ReweightConfig:
    """Training weights that give every flavour the same GenJet pt spectrum (``training.reweight``).

    Why: a regression learns the pt_gen spectrum of its training jets as a prior. Flavours with
    different spectra (soft ISR gluons, b jets from top decays peaking near 60 GeV) then get
    different biases of the response in pt_gen bins, which reads as a flavour dependence.
    ``target: flat`` makes log(pt_gen) flat for every flavour (also removing most of the low-pt
    bias); ``inclusive`` reweights each flavour to the spectrum of all jets. Bins: ``bins``
    log-spaced between ``pt_min`` and ``pt_max`` GeV (jets outside count in the edge bins). Each
    flavour keeps its number of jets as total weight; weights are normalised to mean 1, then capped
    at ``max_weight``.
    """

    target: Literal["flat", "inclusive"] = "flat"
    bins: int = 16
    pt_min: float = 10.0
    pt_max: float = 1000.0
    max_weight: float = 10.0

    def validate(self) -> None:
        if self.bins < 1:
            raise ConfigError("bins: must be >= 1")
        if not 0 < self.pt_min < self.pt_max:
            raise ConfigError("pt_max: must be larger than pt_min (> 0)")
        if not self.max_weight >= 1:
            raise ConfigError("max_weight: must be >= 1")


@dataclass(frozen=True)
class TrainingConfig:
    batch_size: int = 1024
    epochs: int = 20
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    patience: int = 5  # early stopping; 0: off
    loss: Literal["mse", "huber", "mae"] = "huber"
    huber_delta: float = 0.2
    outlier: float | None = 1.0  # drop jets with |target| above this
    validation_fraction: float = 0.1
    seed: int = 0
    threads: int = 2
    max_jets: int | None = None  # use at most this many jets of the dataset
    data: str | None = None  # dataset directory (relative to the config file); --data overrides
    reweight: ReweightConfig | None = None  # null: every jet weight 1

    def validate(self) -> None:
        if self.batch_size < 2:
            raise ConfigError("batch_size: must be >= 2")
        if self.epochs < 1:
            raise ConfigError("epochs: must be >= 1")
        if not self.learning_rate > 0:
            raise ConfigError("learning_rate: must be positive")
        if not 0 <= self.validation_fraction < 1:
            raise ConfigError("validation_fraction: must be in [0, 1)")
        if self.outlier is not None and not self.outlier > 0:
            raise ConfigError("outlier: must be positive (or null)")
        if self.threads < 1:
            raise ConfigError("threads: must be >= 1")


@dataclass(frozen=True)
class CalibrationConfig:
    """A master config; ``dataset`` is validated by the dataset processor, not here."""

    features: FeatureConfig
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    dataset: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        for name in self.model.blocks:
            if name not in self.features.constituents:
                raise ConfigError(f"model.blocks.{name}: not a constituent type of features.constituents "
                                  f"({', '.join(self.features.types()) or 'none'})")


def load_config(source: str | os.PathLike | Mapping) -> CalibrationConfig:
    """A master config by shipped name (``deepsets``), path or mapping; errors name the key.
    A relative ``training.data`` is resolved against the config file's folder."""
    if isinstance(source, Mapping):
        return from_dict(CalibrationConfig, source, "")
    path = config_path(source)
    try:
        config = from_dict(CalibrationConfig, load_yaml(path), "")
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    data = config.training.data
    if data and not Path(data).is_absolute():
        config = replace(config, training=replace(config.training, data=str((path.resolve().parent / data).resolve())))
    return config


# ---------------------------------------------------------------------------
# network
# ---------------------------------------------------------------------------
_ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU}


class _Layer(nn.Sequential):
    def __init__(self, n_in: int, n_out: int, cfg: BlockConfig, act: bool = True):
        mods: list[nn.Module] = [nn.Linear(n_in, n_out)]
        if cfg.batch_norm:
            mods.append(nn.BatchNorm1d(n_out))
        if act:
            mods.append(_ACTIVATIONS[cfg.activation]())
        if act and cfg.dropout:
            mods.append(nn.Dropout(cfg.dropout))
        super().__init__(*mods)


class _Residual(nn.Module):
    def __init__(self, n_in: int, n_out: int, cfg: BlockConfig):
        super().__init__()
        self.body = nn.Sequential(_Layer(n_in, n_out, cfg), _Layer(n_out, n_out, cfg, act=False))
        self.skip = nn.Identity() if n_in == n_out else nn.Linear(n_in, n_out, bias=False)
        self.act = _ACTIVATIONS[cfg.activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.skip(x))


def _stack(n_in: int, cfg: BlockConfig) -> nn.Sequential:
    """(rows, n_in) -> (rows, units[-1])."""
    if cfg.type == "mlp":
        widths = [n_in, *cfg.units]
        return nn.Sequential(*[_Layer(a, b, cfg) for a, b in itertools.pairwise(widths)])
    widths = [cfg.units[0], *cfg.units]
    return nn.Sequential(_Layer(n_in, cfg.units[0], cfg), *[_Residual(a, b, cfg) for a, b in itertools.pairwise(widths)])


_OPS = ("log", "log1p", "abs", "arcsinh")


class _GroupTransform(nn.Module):
    """The transform of one group as graph operations (buffers only, no parameters)."""

    def __init__(self, group: GroupTransform):
        super().__init__()
        D = len(group.numerical)
        depth = max([len(t.steps) for t in group.numerical] or [0])
        masks = torch.zeros(depth, len(_OPS), D, dtype=torch.bool)
        asinh_scale = torch.ones(depth, D)
        for j, t in enumerate(group.numerical):
            for k, step in enumerate(t.steps):
                op = "arcsinh" if isinstance(step, Arcsinh) else step
                masks[k, _OPS.index(op), j] = True
                if isinstance(step, Arcsinh):
                    asinh_scale[k, j] = step.arcsinh
        self.depth = depth
        self.used = [[bool(masks[k, o].any()) for o in range(len(_OPS))] for k in range(depth)]
        self.register_buffer("masks", masks)
        self.register_buffer("asinh_scale", asinh_scale)
        self.register_buffer("center", torch.tensor([t.center for t in group.numerical], dtype=torch.float32))
        self.register_buffer("scale", torch.tensor([t.scale for t in group.numerical], dtype=torch.float32))
        self.sizes = [len(t.values) + 1 for t in group.categorical]
        for i, t in enumerate(group.categorical):
            self.register_buffer(f"values_{i}", torch.tensor(t.values or [-(2**62)], dtype=torch.int64))
            self.register_buffer(f"index_{i}", torch.arange(1, len(t.values) + 1, dtype=torch.int64) if t.values else torch.zeros(1, dtype=torch.int64))

    def numerical(self, x: torch.Tensor) -> torch.Tensor:
        for k in range(self.depth):
            for o, op in enumerate(_OPS):
                if not self.used[k][o]:
                    continue
                if op == "log":
                    y = torch.log(torch.clamp(x, min=LOG_FLOOR))
                elif op == "log1p":
                    y = torch.log1p(torch.clamp(x, min=0.0))
                elif op == "abs":
                    y = torch.abs(x)
                else:  # asinh, written out: ONNX export has no aten::asinh
                    z = x / self.asinh_scale[k]
                    y = torch.sign(z) * torch.log(torch.abs(z) + torch.sqrt(z * z + 1.0))
                x = torch.where(self.masks[k, o], y, x)
        x = (x - self.center) / self.scale
        return torch.where(torch.isfinite(x), x, torch.zeros_like(x))

    def categorical(self, codes: torch.Tensor) -> torch.Tensor:
        cols = []
        for i in range(len(self.sizes)):
            hit = codes[..., i : i + 1] == getattr(self, f"values_{i}")
            cols.append((hit.to(torch.int64) * getattr(self, f"index_{i}")).sum(-1))
        return torch.stack(cols, dim=-1) if cols else codes


class _Embed(nn.Module):
    """Numerical features + embeddings of categorical indices -> one input row per object."""

    def __init__(self, n_num: int, sizes: list[int], dims: list[int]):
        super().__init__()
        self.embeddings = nn.ModuleList([nn.Embedding(s, d) for s, d in zip(sizes, dims)])
        self.width = n_num + sum(dims)

    def forward(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        if not len(self.embeddings):
            return x
        return torch.cat([x, *[emb(idx[..., i]) for i, emb in enumerate(self.embeddings)]], dim=-1)


class _DeepSets(nn.Module):
    """Per-constituent MLP/ResNet with shared weights, summed over the jet's constituents."""

    def __init__(self, n_num: int, sizes: list[int], dims: list[int], cfg: BlockConfig):
        super().__init__()
        self.embed = _Embed(n_num, sizes, dims)
        self.net = _stack(self.embed.width, cfg)
        self.width = cfg.units[-1]

    def flat(self, x: torch.Tensor, idx: torch.Tensor, seg: torch.Tensor, n_jets: int) -> torch.Tensor:
        """Constituents as rows ``(M, D)`` with their jet row ``seg`` -> ``(n_jets, width)``."""
        if len(x) < 2 and self.training:  # batch norm cannot train on fewer than two rows
            if not len(x):
                return torch.zeros(n_jets, self.width, dtype=x.dtype)
            self.net.eval()
            try:
                h = self.net(self.embed(x, idx))
            finally:
                self.net.train()
        else:
            h = self.net(self.embed(x, idx))
        return torch.zeros(n_jets, self.width, dtype=h.dtype).index_add_(0, seg, h)

    def padded(self, x: torch.Tensor, mask: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """``(B, N, D)`` with mask ``(B, N)`` -> ``(B, width)``; masked slots contribute exactly 0."""
        B, N = mask.shape
        e = self.embed(x, idx)
        h = self.net(e.reshape(B * N, e.shape[-1])).reshape(B, N, self.width)
        return torch.where(mask.unsqueeze(-1), h, torch.zeros_like(h)).sum(dim=1)


class JetCalibrationNet(nn.Module):
    """Raw features -> predicted ``log(pt_gen / pt_raw)``.

    :meth:`forward` takes the ONNX inputs (raw, padded) in :func:`input_names` order and
    returns ``(log_correction, correction)``; :meth:`core_flat` takes *transformed* flat
    inputs (the training path).
    """

    def __init__(self, features: FeatureConfig, transform: Transform, model: ModelConfig):
        super().__init__()
        transform.check(features)
        self.features = features
        self.types = features.types()
        self.input_names = input_names(features)

        def dims(group) -> list[int]:
            return [model.embeddings.get(n, model.embedding_dim) for n in group.categorical]

        self.tf = nn.ModuleDict({"jet": _GroupTransform(transform.jet)})
        self.blocks = nn.ModuleDict()
        width = 0
        for t in self.types:
            g = transform.constituents[t]
            self.tf[t] = _GroupTransform(g)
            block = _DeepSets(len(g.numerical), self.tf[t].sizes, dims(features.constituents[t]), model.blocks.get(t, BlockConfig()))
            self.blocks[t] = block
            width += block.width
        self.jet_embed = _Embed(len(transform.jet.numerical), self.tf["jet"].sizes, dims(features.jet))
        self.head = _stack(self.jet_embed.width + width, model.head)
        self.out = nn.Linear(model.head.units[-1], 1)

    # -- transformed inputs -------------------------------------------------------
    def core_flat(self, jet: torch.Tensor, jet_idx: torch.Tensor, consts: Mapping[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Transformed jet features ``(B, D)``, indices ``(B, C)`` and per type (rows, indices, jet row) -> ``(B,)``."""
        parts = [self.jet_embed(jet, jet_idx)]
        for t in self.types:
            x, idx, seg = consts[t]
            parts.append(self.blocks[t].flat(x, idx, seg, jet.shape[0]))
        return self.out(self.head(torch.cat(parts, dim=1)))[:, 0]

    # -- raw padded inputs (the ONNX graph) ----------------------------------------
    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        named = dict(zip(self.input_names, inputs))
        jet = self.tf["jet"].numerical(named["jet"])
        jet_idx = self.tf["jet"].categorical(named["jet_cat"]) if "jet_cat" in named else jet
        parts = [self.jet_embed(jet, jet_idx)]
        for t in self.types:
            x = self.tf[t].numerical(named[f"{t}_data"])
            idx = self.tf[t].categorical(named[f"{t}_cat"]) if f"{t}_cat" in named else x
            parts.append(self.blocks[t].padded(x, named[f"{t}_mask"], idx))
        log_corr = self.out(self.head(torch.cat(parts, dim=1)))[:, 0]
        return log_corr, torch.exp(log_corr)


def build_network(config: CalibrationConfig, transform: Transform) -> JetCalibrationNet:
    return JetCalibrationNet(config.features, transform, config.model)


# ---------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------
@dataclass
class _Tensors:
    """Transformed training arrays: jets and per type flat rows with CSR offsets."""

    jet: torch.Tensor
    jet_idx: torch.Tensor
    consts: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # rows, indices, offsets
    target: torch.Tensor
    weight: torch.Tensor | None = None  # per jet (training.reweight), None: all 1

    def batch(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        consts = {}
        for t, (x, idx, off) in self.consts.items():
            counts = off[rows + 1] - off[rows]
            starts = off[rows]
            seg = torch.repeat_interleave(torch.arange(len(rows)), counts)
            first = torch.cumsum(counts, 0) - counts
            take = starts[seg] + torch.arange(int(counts.sum())) - first[seg]
            consts[t] = (x[take], idx[take], seg)
        return self.jet[rows], self.jet_idx[rows], consts


@torch.no_grad()
def _prepare(net: JetCalibrationNet, data: FeatureArrays, chunk: int = 1 << 20) -> _Tensors:
    """Apply the network's own transform once to all data (the same graph operations as at inference)."""

    def tf(group: str, num: np.ndarray, cat: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        m = net.tf[group]
        xs = [m.numerical(torch.from_numpy(num[i : i + chunk])) for i in range(0, len(num), chunk)]
        cs = [m.categorical(torch.from_numpy(cat[i : i + chunk])) for i in range(0, len(cat), chunk)]
        return (torch.cat(xs) if xs else torch.zeros(num.shape)), (torch.cat(cs) if cs else torch.zeros(cat.shape, dtype=torch.int64))

    jet, jet_idx = tf("jet", data.jet.numerical, data.jet.categorical)
    consts = {}
    for t in net.types:
        g = data.constituents[t]
        x, idx = tf(t, g.numerical, g.categorical)
        consts[t] = (x, idx, torch.from_numpy(g.offsets))
    weight = torch.from_numpy(np.asarray(data.extra["weight"], dtype=np.float32)) if "weight" in data.extra else None
    return _Tensors(jet, jet_idx, consts, torch.from_numpy(np.asarray(data.extra["target"], dtype=np.float32)), weight)


def training_weights(pt_gen: np.ndarray, flavour: np.ndarray, cfg: ReweightConfig) -> np.ndarray:
    """Per-jet weights of :class:`ReweightConfig` (mean 1 before the cap at ``max_weight``)."""
    pt_gen, flavour = np.asarray(pt_gen, dtype=np.float64), np.asarray(flavour, dtype=np.int64)
    if not len(pt_gen):
        return np.ones(0)
    edges = np.geomspace(cfg.pt_min, cfg.pt_max, cfg.bins + 1)
    b = np.clip(np.searchsorted(edges, pt_gen, side="right") - 1, 0, cfg.bins - 1)
    counts = np.zeros((int(flavour.max()) + 1, cfg.bins))
    np.add.at(counts, (flavour, b), 1.0)
    per_flavour = counts.sum(axis=1, keepdims=True)
    if cfg.target == "flat":  # each flavour's jets spread evenly over the bins it populates
        shape = (counts > 0) / np.maximum((counts > 0).sum(axis=1, keepdims=True), 1)
    else:  # the all-flavour spectrum
        shape = np.broadcast_to(counts.sum(axis=0) / counts.sum(), counts.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        table = np.where(counts > 0, per_flavour * shape / counts, 0.0)
    w = table[flavour, b]
    return np.minimum(w / w.mean(), cfg.max_weight)


def _loss_fn(cfg: TrainingConfig):
    """``loss(pred, target, weight=None)``: the configured loss, weighted mean over the jets."""

    def loss(pred: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
        if cfg.loss == "mse":
            each = (pred - y) ** 2
        elif cfg.loss == "mae":
            each = torch.abs(pred - y)
        else:
            each = nn.functional.huber_loss(pred, y, reduction="none", delta=cfg.huber_delta)
        return each.mean() if w is None else (each * w).sum() / w.sum()

    return loss


@torch.no_grad()
def _evaluate(net: JetCalibrationNet, data: _Tensors, rows: torch.Tensor, loss_fn, batch: int = 8192) -> tuple[float, float]:
    """(mean loss, rms of the residual) over ``rows`` in eval mode."""
    net.eval()
    total, weights, sq, n = 0.0, 0.0, 0.0, len(rows)
    for start in range(0, n, batch):
        b = rows[start : start + batch]
        pred = net.core_flat(*data.batch(b))
        y = data.target[b]
        w = None if data.weight is None else data.weight[b]
        weight = float(len(b) if w is None else w.sum())
        total += float(loss_fn(pred, y, w)) * weight
        weights += weight
        sq += float(((pred - y) ** 2).sum())
    return (total / weights, math.sqrt(sq / n)) if n else (float("nan"), float("nan"))


def _scheduler(opt, cfg: TrainingConfig):
    s = cfg.schedule
    if s.type == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs, eta_min=cfg.learning_rate * s.min_factor)
    if s.type == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=s.step_epochs, gamma=s.factor)
    if s.type == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=s.factor, patience=s.patience)
    return None


def _select(data: FeatureArrays, cfg: TrainingConfig) -> FeatureArrays:
    target = np.asarray(data.extra["target"], dtype=np.float64)
    keep = np.isfinite(target)
    if cfg.outlier is not None:
        keep &= np.abs(target) <= cfg.outlier
    return data if keep.all() else data.take(np.flatnonzero(keep))


def train(
    config: CalibrationConfig | str | os.PathLike | Mapping,
    data: str | os.PathLike | FeatureArrays | None = None,
    output: str | os.PathLike | None = None,
    *,
    transform: Transform | str | os.PathLike | None = None,
    log=print,
) -> dict[str, Any]:
    """Train on a calibration dataset and write the model directory.

    ``data``: a dataset directory (default ``training.data``) or loaded arrays.  ``transform``:
    a :class:`Transform` or path; default: the dataset's ``transform.yaml`` if it fits the
    features, else one fitted on the training data.  ``output`` (optional) receives
    ``model.onnx``, ``checkpoint.pt``, ``config.yaml``, ``transform.yaml`` and ``history.yaml``.
    Returns ``{"net", "transform", "history", "paths"}``.
    """
    config = config if isinstance(config, CalibrationConfig) else load_config(config)
    cfg = config.training
    data = data if data is not None else cfg.data
    if data is None:
        raise ConfigError("training.data: no dataset given (set it in the config or pass --data)")
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True)
    try:
        return _train(config, data, output, transform, log)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _resolve_transform(config: CalibrationConfig, data, arrays: FeatureArrays, transform, log) -> Transform:
    if isinstance(transform, Transform):
        transform.check(config.features)
        return transform
    if transform is not None:
        t = load_transform(transform)
        t.check(config.features)
        return t
    if not isinstance(data, FeatureArrays) and (Path(data) / "transform.yaml").exists():
        t = load_transform(Path(data) / "transform.yaml")
        try:
            t.check(config.features)
            log(f"using {Path(data) / 'transform.yaml'}")
            return t
        except ConfigError as err:
            log(f"not using {Path(data) / 'transform.yaml'} ({err}); fitting the transform on the training data")
    return fit_transform(config.features, arrays)


def _train(config: CalibrationConfig, data, output, transform, log) -> dict[str, Any]:
    cfg = config.training
    extra = ("target", "flavour") + (("pt_gen",) if cfg.reweight is not None else ())
    arrays = data if isinstance(data, FeatureArrays) else load_dataset(data, config.features, max_jets=cfg.max_jets, extra=extra)
    n_all = len(arrays)
    arrays = _select(arrays, cfg)
    if len(arrays) < 2:
        raise ConfigError(f"training: only {len(arrays)} usable jets (of {n_all}) in the dataset")
    if cfg.reweight is not None:
        missing = [k for k in ("pt_gen", "flavour") if k not in arrays.extra]
        if missing:
            raise ConfigError(f"training.reweight: the data have no {missing[0]!r} (a calib-dataset dataset has)")
        w = training_weights(arrays.extra["pt_gen"], arrays.extra["flavour"], cfg.reweight)
        arrays = FeatureArrays(arrays.jet, arrays.constituents, {**arrays.extra, "weight": w})
        log(f"reweighting ({cfg.reweight.target}): weights {w.min():.3g} .. {w.max():.3g}, "
            f"effective jets {w.sum() ** 2 / (w * w).sum():.0f} of {len(w)}")
    transform = _resolve_transform(config, data, arrays, transform, log)

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    net = build_network(config, transform)
    tensors = _prepare(net, arrays)
    n = len(arrays)
    perm = torch.from_numpy(np.random.default_rng(cfg.seed).permutation(n))
    n_val = round(cfg.validation_fraction * n)
    val_rows, train_rows = perm[:n_val], perm[n_val:]
    with torch.no_grad():
        net.out.bias.fill_(float(tensors.target[train_rows].mean()))
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    sched = _scheduler(opt, cfg)
    loss_fn = _loss_fn(cfg)
    history: list[dict[str, float]] = []
    best, best_state, best_epoch, stale = math.inf, None, 0, 0
    log(f"training on {len(train_rows)} jets ({n_val} validation, {n_all - n} outliers dropped), "
        f"{sum(p.numel() for p in net.parameters())} parameters, {torch.get_num_threads()} threads")
    for epoch in range(1, cfg.epochs + 1):
        net.train()
        start = time.perf_counter()
        order = train_rows[torch.randperm(len(train_rows), generator=gen)]
        total = 0.0
        for s in range(0, len(order), cfg.batch_size):
            b = order[s : s + cfg.batch_size]
            if len(b) < 2:  # batch norm needs two rows
                continue
            pred = net.core_flat(*tensors.batch(b))
            loss = loss_fn(pred, tensors.target[b], None if tensors.weight is None else tensors.weight[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(b)
        seconds = time.perf_counter() - start
        val_loss, val_rms = _evaluate(net, tensors, val_rows, loss_fn) if n_val else (total / len(order), float("nan"))
        lr = opt.param_groups[0]["lr"]
        if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            sched.step(val_loss)
        elif sched is not None:
            sched.step()
        row = {"epoch": epoch, "train_loss": total / max(len(order), 1), "val_loss": val_loss, "val_rms": val_rms,
               "lr": lr, "seconds": seconds, "jets_per_s": len(order) / seconds if seconds else float("inf")}
        history.append(row)
        log(f"epoch {epoch:3d}  train {row['train_loss']:.5f}  val {val_loss:.5f}  rms {val_rms:.4f}  "
            f"lr {lr:.2e}  {seconds:.1f} s ({row['jets_per_s']:.0f} jets/s)")
        if val_loss < best:
            best, best_epoch, stale = val_loss, epoch, 0
            best_state = copy.deepcopy(net.state_dict())
        else:
            stale += 1
            if cfg.patience and stale >= cfg.patience:
                log(f"early stop: no better validation loss for {stale} epochs")
                break
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    result = {"net": net, "transform": transform, "history": history, "best_epoch": best_epoch, "paths": {}}
    if output is not None:
        result["paths"] = save_model(net, config, transform, output, history=history, best_epoch=best_epoch)
    return result


# ---------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------
def save_model(net: JetCalibrationNet, config: CalibrationConfig, transform: Transform, output: str | os.PathLike,
               *, history: list | None = None, best_epoch: int | None = None) -> dict[str, Path]:
    """Write the model directory the :class:`~crema.models.jet_calibration.JetCalibration` wrapper reads."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "config": out / "config.yaml",
        "transform": save_transform(transform, out / "transform.yaml"),
        "checkpoint": out / "checkpoint.pt",
        "onnx": out / "model.onnx",
    }
    paths["config"].write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    torch.save({"state_dict": net.state_dict(), "config": to_dict(config), "transform": to_dict(transform),
                "history": history or [], "best_epoch": best_epoch}, paths["checkpoint"])
    export_onnx(net, paths["onnx"])
    if history is not None:
        paths["history"] = out / "history.yaml"
        paths["history"].write_text(yaml.safe_dump({"best_epoch": best_epoch, "epochs": history}, sort_keys=False))
    return paths


def load_checkpoint(path: str | os.PathLike) -> tuple[JetCalibrationNet, CalibrationConfig, Transform]:
    """The network (eval mode), config and transform of a ``checkpoint.pt``."""
    # weights_only: tensors and plain containers only, so a crafted checkpoint cannot run code
    state = torch.load(path, map_location="cpu", weights_only=True)
    config = load_config(state["config"])
    transform = from_dict(Transform, state["transform"], "transform")
    net = build_network(config, transform)
    net.load_state_dict(state["state_dict"])
    return net.eval(), config, transform


def _example_inputs(net: JetCalibrationNet, B: int = 2, N: int = 3) -> tuple[torch.Tensor, ...]:
    f = net.features
    args = [torch.zeros(B, len(f.jet.numerical))]
    if f.jet.categorical:
        args.append(torch.zeros(B, len(f.jet.categorical), dtype=torch.int64))
    for c in f.constituents.values():
        args += [torch.zeros(B, N, len(c.numerical)), torch.ones(B, N, dtype=torch.bool)]
        if c.categorical:
            args.append(torch.zeros(B, N, len(c.categorical), dtype=torch.int64))
    return tuple(args)


def export_onnx(net: JetCalibrationNet, output: str | os.PathLike, opset: int = 17) -> Path:
    """Export with the contract's names; batch and constituent axes dynamic."""
    output = Path(output)
    net = net.eval()
    dynamic = {"jet": {0: "batch"}, "jet_cat": {0: "batch"}, "log_correction": {0: "batch"}, "correction": {0: "batch"}}
    for t in net.types:
        for kind in ("data", "mask", "cat"):
            dynamic[f"{t}_{kind}"] = {0: "batch", 1: f"n_{t}"}
    names = net.input_names
    with torch.no_grad():
        torch.onnx.export(net, _example_inputs(net), str(output), input_names=names, output_names=["log_correction", "correction"],
                          opset_version=opset, dynamic_axes={k: v for k, v in dynamic.items() if k in names or "correction" in k},
                          dynamo=False)
    return output


def predict(net: JetCalibrationNet, arrays: FeatureArrays, batch: int = 4096) -> np.ndarray:
    """Torch prediction of ``log(pt_gen / pt_raw)`` on raw feature arrays (padded path, eval mode)."""
    net = net.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(arrays), batch):
            f = feeds(net.features, arrays, np.arange(start, min(start + batch, len(arrays))))
            out.append(net(*[torch.from_numpy(f[k]) for k in net.input_names])[0].numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)
