"""Theory uncertainties of simulated events from the standard NanoAOD weight branches.

Every branch holds ratios ``w_var / w_nominal`` per event (NanoAOD's GenWeightsTableProducer):

* ``LHEScaleWeight``, 9 entries ``[muR, muF]``: [0] (0.5, 0.5), [1] (0.5, 1), [2] (0.5, 2), [3] (1, 0.5),
  [4] (1, 1), [5] (1, 2), [6] (2, 0.5), [7] (2, 1), [8] (2, 2); samples that drop the nominal have 8
  entries, the same order without [4]. ``scale_muR`` is (2, 1) up / (0.5, 1) down and ``scale_muF``
  (1, 2) / (1, 0.5): two independent nuisance parameters, not a 7-point envelope (the envelope is a
  per-bin maximum, not an event weight, and hides which scale moves the shape).
* ``LHEPdfWeight``: entry 0 the central member, then the set's members. ``hessian`` (e.g. NNPDF3.1
  ``325300``: members 1-100 eigenvectors, 101-102 alpha_s): ``delta = sqrt(sum_k (r_k - r_0)^2)``;
  ``replicas``: ``delta`` = the standard deviation of ``r_k``, with ``r_k = w_k / w_0``. ``pdfUp/Down``
  weight events by ``1 +- delta``, a per-event quadrature: it can only overestimate the per-bin
  Hessian uncertainty (equal for events that move coherently).
* ``PSWeight``, 4 entries: [0] ISR=2 FSR=1, [1] ISR=1 FSR=2, [2] ISR=0.5 FSR=1, [3] ISR=1 FSR=0.5;
  ``ps_isr`` up/down = [0]/[2], ``ps_fsr`` up/down = [1]/[3] (2: the shower scale variation CMS calls up).

A branch the file lacks leaves its variations out for that dataset (the run logs a notice at start-up,
:meth:`TheoryWeights.optional_branches`); the weights are never replaced by a flat 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import awkward as ak
import numpy as np
from coffea.analysis_tools import Weights

from crema.schema import ConfigError

# LHEScaleWeight length -> variation -> (up index, down index)
SCALE_INDICES = {9: {"scale_muR": (7, 1), "scale_muF": (5, 3)}, 8: {"scale_muR": (6, 1), "scale_muF": (4, 3)}}
PS_INDICES = {"ps_isr": (0, 2), "ps_fsr": (1, 3)}
BRANCHES = {"scale": "LHEScaleWeight", "pdf": "LHEPdfWeight", "ps": "PSWeight"}


@dataclass(frozen=True)
class PdfOptions:
    """How the PDF members combine: ``hessian`` or ``replicas``; ``members``: the first and last entry used."""

    convention: Literal["hessian", "replicas"] = "hessian"
    members: list[int] = field(default_factory=lambda: [1, 100])

    def validate(self) -> None:
        if len(self.members) != 2 or not 1 <= self.members[0] <= self.members[1]:
            raise ConfigError(f"members: expected [first, last] with 1 <= first <= last, got {self.members}")


@dataclass(frozen=True)
class TheoryOptions:
    """Which theory variations fill the systematic axis (simulation only); null sections are off."""

    scale: bool = True
    pdf: PdfOptions | None = field(default_factory=PdfOptions)
    ps: bool = True


def _matrix(jagged: ak.Array, width: int, branch: str) -> np.ndarray:
    counts = ak.to_numpy(ak.num(jagged, axis=1))
    if np.any(counts != width):
        bad = sorted(set(counts.tolist()) - {width})
        raise ValueError(f"{branch}: expected {width} entries per event, found events with {bad}")
    return np.asarray(ak.to_numpy(ak.flatten(jagged)), dtype=np.float64).reshape(-1, width)


class TheoryWeights:
    """Adds the configured theory variations to a coffea ``Weights`` (as factor 1 with up/down ratios)."""

    def __init__(self, options: TheoryOptions) -> None:
        self.options = options

    @property
    def groups(self) -> dict[str, list[str]]:
        """Branch -> the variation names it gives."""
        out = {}
        if self.options.scale:
            out[BRANCHES["scale"]] = list(SCALE_INDICES[9])
        if self.options.pdf is not None:
            out[BRANCHES["pdf"]] = ["pdf"]
        if self.options.ps:
            out[BRANCHES["ps"]] = list(PS_INDICES)
        return out

    @property
    def variations(self) -> list[str]:
        """Systematic-axis names: ``<name>Up``, ``<name>Down``."""
        return [f"{n}{d}" for names in self.groups.values() for n in names for d in ("Up", "Down")]

    def optional_branches(self) -> dict[str, str]:
        """Branches read when present -> the variations lost without them (for the start-up notice)."""
        return {b: f"theory variations {', '.join(names)} (processor.options.corrections.theory)"
                for b, names in self.groups.items()}

    def factors(self, events: ak.Array) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Variation name -> (up, down) per-event ratios, for the branches ``events`` has."""
        fields = set(events.fields)
        out = {}
        if self.options.scale and BRANCHES["scale"] in fields:
            jagged = events[BRANCHES["scale"]]
            counts = ak.to_numpy(ak.num(jagged, axis=1))
            width = int(counts[0]) if len(counts) else 9
            if width not in SCALE_INDICES:
                raise ValueError(f"LHEScaleWeight: expected 9 or 8 entries per event, found {width}")
            scale = _matrix(jagged, width, BRANCHES["scale"])
            for name, (up, down) in SCALE_INDICES[width].items():
                out[name] = (scale[:, up], scale[:, down])
        if self.options.pdf is not None and BRANCHES["pdf"] in fields:
            first, last = self.options.pdf.members
            pdf = _matrix(events[BRANCHES["pdf"]], _width(events[BRANCHES["pdf"]], last + 1), BRANCHES["pdf"])
            ratios = pdf[:, first:last + 1] / pdf[:, :1]
            if self.options.pdf.convention == "hessian":
                delta = np.sqrt(np.sum((ratios - 1.0) ** 2, axis=1))
            else:
                delta = np.std(ratios, axis=1, ddof=1) if ratios.shape[1] > 1 else np.zeros(len(ratios))
            out["pdf"] = (1.0 + delta, np.clip(1.0 - delta, 0.0, None))
        if self.options.ps and BRANCHES["ps"] in fields:
            ps = _matrix(events[BRANCHES["ps"]], 4, BRANCHES["ps"])
            for name, (up, down) in PS_INDICES.items():
                out[name] = (ps[:, up], ps[:, down])
        return out

    def add(self, weights: Weights, events: ak.Array) -> None:
        """Add each available variation to ``weights`` (nominal factor 1)."""
        for name, (up, down) in self.factors(events).items():
            weights.add(name, np.ones(len(up)), weightUp=up, weightDown=down)


def _width(jagged: ak.Array, needed: int) -> int:
    """Entries per event of ``jagged`` (at least ``needed``: the configured PDF members must exist)."""
    counts = ak.to_numpy(ak.num(jagged, axis=1))
    width = int(counts[0]) if len(counts) else needed
    if width < needed:
        raise ValueError(f"LHEPdfWeight: {width} entries per event, but the configured members reach entry {needed - 1}")
    return width
