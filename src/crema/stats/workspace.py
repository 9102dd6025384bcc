"""A pyhf workspace from per-process templates.

One pyhf channel per (channel, region); samples are the processes; signal samples carry the free
normalisation ``mu``; every simulated sample carries the luminosity uncertainty (``lumi``), its
normalisation uncertainty (``norm_<process>``) where one is given, one histosys + normsys pair per
shape variation and the MC statistical uncertainty (``staterror_<channel>``, Barlow-Beeston lite).
Log-normal normalisation uncertainties (CMS ``lnN``) are normsys modifiers with ``hi = kappa``,
``lo = 1/kappa``; pyhf interpolates them exponentially (code 4). See docs/fit.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyhf

POI = "mu"
# a variation or shape this close to nominal carries no information and is left out
PRUNE_THRESHOLD = 1e-6


@dataclass
class ChannelTemplates:
    """The templates of one pyhf channel.

    ``nominal``: process -> (values, variances) per bin; ``variations``: process -> systematic
    stem -> (up values, down values), either side ``None`` where absent; ``data``: observed counts
    (``None``: no data). ``edges``: the bin edges (for plots).
    """

    name: str
    edges: np.ndarray
    nominal: dict[str, tuple[np.ndarray, np.ndarray]]
    variations: dict[str, dict[str, tuple[np.ndarray | None, np.ndarray | None]]] = field(default_factory=dict)
    data: np.ndarray | None = None

    def merged(self, n: int) -> "ChannelTemplates":
        """Every ``n`` adjacent bins merged into one (the last group may be smaller); variances add."""
        return self if n == 1 else self.grouped(np.arange(0, len(self.edges) - 1, n))

    def grouped(self, starts: np.ndarray) -> "ChannelTemplates":
        """Bins merged into groups beginning at the bin indices ``starts`` (the first must be 0)."""
        def merge(values):
            return None if values is None else np.add.reduceat(values, starts)

        return ChannelTemplates(
            self.name, np.append(self.edges[starts], self.edges[-1]),
            {p: (merge(v), merge(var)) for p, (v, var) in self.nominal.items()},
            {p: {s: (merge(up), merge(down)) for s, (up, down) in by.items()} for p, by in self.variations.items()},
            merge(self.data))

    def background_groups(self, signals: list[str], max_stat: float) -> np.ndarray:
        """Group starts such that each group's background has a relative MC statistical uncertainty
        of at most ``max_stat`` (groups grow left to right; a short last group joins the one before)."""
        backgrounds = [p for p in self.nominal if p not in signals]
        value = sum(np.clip(self.nominal[p][0], 0, None) for p in backgrounds)
        variance = sum(np.clip(self.nominal[p][1], 0, None) for p in backgrounds)
        starts, total, var = [0], 0.0, 0.0
        for i in range(len(value)):
            total, var = total + value[i], var + variance[i]
            if total > 0 and np.sqrt(var) <= max_stat * total and i + 1 < len(value):
                starts.append(i + 1)
                total, var = 0.0, 0.0
        if len(starts) > 1 and (total <= 0 or np.sqrt(var) > max_stat * total):
            starts.pop()  # the tail did not reach the threshold: merge it into the group before
        return np.asarray(starts)


@dataclass
class BuiltWorkspace:
    """A workspace spec and what was done to the inputs to build it.

    ``kept_bins``: channel -> indices of the input bins kept (bins without background are dropped);
    ``notes``: human-readable lines (dropped bins, variations left out, clipped yields);
    ``observed``: whether the observations are data (else the background-only Asimov dataset).
    """

    spec: dict[str, Any]
    kept_bins: dict[str, np.ndarray]
    edges: dict[str, np.ndarray]
    signals: list[str]
    observed: bool
    notes: list[str] = field(default_factory=list)

    def workspace(self) -> pyhf.Workspace:
        """The validated :class:`pyhf.Workspace` (raises on an invalid spec)."""
        return pyhf.Workspace(self.spec, validate=True)


def lognormal(kappa: float) -> dict[str, float]:
    """normsys data of a symmetric log-normal uncertainty ``kappa`` (1.05 for 5%)."""
    return {"hi": kappa, "lo": 1.0 / kappa}


def build_workspace(channels: list[ChannelTemplates], signals: list[str], lumi_uncertainty: float,
                    norm_uncertainties: dict[str, float] | None = None, mu_max: float | None = None,
                    prune: float = 0.0) -> BuiltWorkspace:
    """Build the pyhf workspace of ``channels`` with ``signals`` scaled by ``mu``.

    Bins without background (total background <= 0) are dropped from a channel: pyhf's staterror
    (and any Poisson model with a signal-only bin) is undefined there; signal in such bins is lost
    and reported in ``notes``. Negative yields (from negative generator weights) are clipped to 0.
    Observations are the data when every channel has them, else the background-only Asimov
    dataset (the sum of the background templates). Templates without variances get no staterror,
    ``lumi_uncertainty = 0`` no luminosity modifier (closed-form checks). ``mu_max``: the upper bound of ``mu`` (default:
    10x a rough expected limit, at least 10). ``prune``: a shape variation that moves no bin of a
    sample by more than this fraction is left out for that sample (the count is noted).
    """
    norm_uncertainties = norm_uncertainties or {}
    if not channels:
        raise ValueError("no channels to fit")
    observed = all(c.data is not None for c in channels)
    notes: list[str] = []
    out_channels, observations, kept_bins, edges = [], [], {}, {}
    s2_over_b = 0.0
    pruned = 0
    for ch in channels:
        backgrounds = [p for p in ch.nominal if p not in signals]
        if not backgrounds:
            raise ValueError(f"channel {ch.name}: no background process")
        total_b = sum(np.clip(ch.nominal[p][0], 0.0, None) for p in backgrounds)
        keep = np.flatnonzero(total_b > 0)
        if keep.size == 0:
            raise ValueError(f"channel {ch.name}: no bin has background")
        dropped = np.setdiff1d(np.arange(total_b.size), keep)
        if dropped.size:
            lost = sum(float(np.clip(ch.nominal[p][0][dropped], 0, None).sum()) for p in signals if p in ch.nominal)
            notes.append(f"{ch.name}: dropped {dropped.size} of {total_b.size} bins without background "
                         f"(signal yield lost: {lost:.4g})")
        kept_bins[ch.name] = keep
        edges[ch.name] = np.asarray(ch.edges)
        samples = []
        for process, (values, variances) in ch.nominal.items():
            if np.any(values[keep] < 0):
                notes.append(f"{ch.name}/{process}: negative yields clipped to 0")
            nominal = np.clip(values[keep], 0.0, None)
            if nominal.sum() <= 0:
                if process in signals:
                    notes.append(f"{ch.name}/{process}: no signal yield in this channel")
                continue
            modifiers: list[dict[str, Any]] = []
            if np.any(variances[keep] > 0):
                modifiers.append({"name": f"staterror_{ch.name}", "type": "staterror",
                                  "data": np.sqrt(np.clip(variances[keep], 0.0, None)).tolist()})
            if lumi_uncertainty > 0:
                modifiers.append({"name": "lumi", "type": "normsys", "data": lognormal(1.0 + lumi_uncertainty)})
            if process in signals:
                modifiers.insert(0, {"name": POI, "type": "normfactor", "data": None})
                s2_over_b += float(np.sum(nominal**2 / total_b[keep]))
            if process in norm_uncertainties:
                modifiers.append({"name": f"norm_{process}", "type": "normsys",
                                  "data": lognormal(1.0 + norm_uncertainties[process])})
            for stem, (up, down) in sorted(ch.variations.get(process, {}).items()):
                shape = _shape_modifiers(stem, nominal, up, down, keep, f"{ch.name}/{process}", notes)
                if prune > 0 and _largest_effect(nominal, shape) < prune:
                    pruned += 1
                    continue
                modifiers += shape
            samples.append({"name": process, "data": nominal.tolist(), "modifiers": modifiers})
        out_channels.append({"name": ch.name, "samples": samples})
        data = ch.data[keep] if observed else total_b[keep]
        observations.append({"name": ch.name, "data": np.asarray(data, dtype=float).tolist()})
    if pruned:
        notes.append(f"pruned {pruned} sample variations moving no bin by more than {prune:g}")
    if s2_over_b <= 0:
        raise ValueError(f"no signal yield ({', '.join(signals)}) in any fitted bin")
    if mu_max is None:
        # Asimov approximation of the 95% CL limit, 2/sqrt(sum s^2/b); the +2 sigma band is ~2x that
        mu_max = max(10.0, 10.0 * 2.0 / np.sqrt(s2_over_b))
    spec = {
        "channels": out_channels,
        "observations": observations,
        "measurements": [{"name": "crema", "config": {
            "poi": POI, "parameters": [{"name": POI, "bounds": [[0.0, float(mu_max)]], "inits": [1.0]}]}}],
        "version": "1.0.0",
    }
    built = BuiltWorkspace(spec, kept_bins, edges, list(signals), observed, notes)
    built.workspace()  # schema validation now, not at the first fit
    return built


def _largest_effect(nominal: np.ndarray, modifiers: list[dict[str, Any]]) -> float:
    """The largest relative change of any bin under a normsys + histosys pair at +-1 sigma."""
    norm = next((m["data"] for m in modifiers if m["type"] == "normsys"), {"hi": 1.0, "lo": 1.0})
    shape = next((m["data"] for m in modifiers if m["type"] == "histosys"), {"hi_data": nominal, "lo_data": nominal})
    with np.errstate(divide="ignore", invalid="ignore"):
        effects = [np.abs(norm[k] * np.asarray(shape[f"{k}_data"]) / nominal - 1) for k in ("hi", "lo")]
    return float(np.nanmax(np.concatenate(effects))) if nominal.any() else 0.0


def _shape_modifiers(stem: str, nominal: np.ndarray, up: np.ndarray | None, down: np.ndarray | None,
                     keep: np.ndarray, where: str, notes: list[str]) -> list[dict[str, Any]]:
    """normsys (the yield change) + histosys (the shape at fixed yield) of one variation.

    A side that is absent or was never filled (all zero where the nominal is not) is taken as the
    mirror image of the other side, ``2 nominal - other`` (symmetrisation, as the AGC does); with
    neither side the variation is left out (noted).
    """
    sides = []
    for side in (up, down):
        values = None if side is None else np.clip(side[keep], 0.0, None)
        sides.append(None if values is None or not values.any() else values)
    if sides[0] is None and sides[1] is None:
        notes.append(f"{where}: variation {stem} has no filled template; left out")
        return []
    if sides[0] is None or sides[1] is None:
        present = sides[0] if sides[0] is not None else sides[1]
        mirror = np.clip(2 * nominal - present, 0.0, None)
        sides = [present, mirror] if sides[0] is not None else [mirror, present]
        notes.append(f"{where}: variation {stem} is one-sided; symmetrised")
    total = nominal.sum()
    hi, lo = (float(s.sum() / total) for s in sides)
    modifiers = []
    if max(abs(hi - 1), abs(lo - 1)) > PRUNE_THRESHOLD and hi > 0 and lo > 0:
        modifiers.append({"name": stem, "type": "normsys", "data": {"hi": hi, "lo": lo}})
    shapes = [s * total / s.sum() if s.sum() > 0 else nominal for s in sides]
    if max(np.abs(s - nominal).max() for s in shapes) > PRUNE_THRESHOLD * nominal.max():
        modifiers.append({"name": stem, "type": "histosys",
                          "data": {"hi_data": shapes[0].tolist(), "lo_data": shapes[1].tolist()}})
    return modifiers
