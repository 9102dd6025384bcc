"""Generator-level filters and biased sampling with per-event weights.

A simulated background that dominates an analysis selection is usually far larger than the part the
selection keeps: generated inclusively, each selected event stands for a huge number of real ones.
Here the hard event (before jets, leptons and the detector are simulated, which is where generation
spends its time) is tested against

* a **filter**: minimum generator-level values (leading prompt lepton pT, parton HT, number of
  partons, hard-system pT) and upper bounds on HT and the hard-system pT (slices of a process,
  as CMS's HT- and pT-binned V+jets samples: datasets of one process with adjacent slices add up
  to the whole). Events outside are not written; the weights of written events are unchanged.
* an **ISR multiplicity bias**: the number of ISR partons is drawn from a harder Poisson law and
  each event carries the ratio of the process's to the sampled probability of its count (exact
  reweighting, no rejection).
* a **b-tag bias** (``tag_bias``): each reconstructed AK4 jet not from a b hadron (pT above
  ``pt_min``, within the b-tagging acceptance) draws its b-tag score, with probability ``share``,
  from the part of its law above ``score_min`` (the working point) instead of the whole law, and
  the event's weight is multiplied, per such jet, by the law's density over the sampled mixture:
  ``1 / ((1 - share) + share / S)`` for a score above ``score_min`` (``S``: the law's probability to
  be above, per jet class) and ``1 / (1 - share)`` below. Mistagged jets are then ~``share / S``
  times more frequent and every weighted distribution is the unbiased one (importance sampling,
  no rejection), so regions that require b-tags get far more simulated events of backgrounds that
  reach them through mistags (W+jets, DY).
* a **bias**: each event is kept with probability ``a(x) = clip((x / reference)^power, min_keep, 1)``
  of a generator-level variable ``x`` (times ``light_keep`` for events without a b or c parton in
  the jet acceptance) and written with its weight multiplied by ``1 / a``. The written sample
  follows the harder spectrum ``a(x) p(x)``; ``1 / a`` is the true density over the sampled one
  (up to the sample's normalisation), so weighted distributions are those of the unbiased process.

Normalisation convention: the ``Runs`` tree's ``genEventCount``, ``genEventSumw`` and
``genEventSumw2`` count every *attempted* event with its nominal weight (before filter and bias;
with the ISR multiplicity bias the nominal weight includes its factor),
so ``xsec_pb`` stays the process's inclusive cross section and crema's normalisation
``xsec x luminosity / genEventSumw`` needs nothing else. The filter efficiency (sum of written
weights over ``genEventSumw``) is written beside it as ``GenFilter_filterEfficiency``, with
``GenFilter_numEventsTotal`` and ``GenFilter_numEventsPassed``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from crema.schema import ConfigError

# generator-level jet acceptance of the partons counted in HT, N(partons) and heavy flavour:
# the analysis' AK4 selection (pT > 20 GeV, |eta| < 2.5)
PARTON_PT_MIN = 20.0
PARTON_ABS_ETA_MAX = 2.5
# leptons count within the tracker acceptance
LEPTON_ABS_ETA_MAX = 2.5
# a sampled ISR mean above this puts nearly every event at the cap (crema.generate.processes.MAX_ISR)
MAX_ISR_MEAN = 10.0
# stop when fewer than this share of attempted events passes (a filter that nothing passes)
MIN_EFFICIENCY = 1e-4



@dataclass(frozen=True)
class GeneratorFilter:
    """Generator-level minimums, and upper bounds (exclusive) for slices of a process such as the
    HT- or pT-binned V+jets samples; an event outside any of them is not written (GeV, count)."""

    lepton_pt: float = 0.0  # leading prompt e/mu within |eta| < 2.5
    ht: float = 0.0  # scalar pT sum of partons (ISR and hard-process quarks) in the jet acceptance
    partons: int = 0  # partons in the jet acceptance
    system_pt: float = 0.0  # pT of the hard system (the W, Z, ttbar, X)
    ht_max: float | None = None
    system_pt_max: float | None = None

    def validate(self) -> None:
        for name in ("lepton_pt", "ht", "partons", "system_pt"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: a minimum must be >= 0")
        for name in ("ht", "system_pt"):
            upper = getattr(self, f"{name}_max")
            if upper is not None and not upper > getattr(self, name):
                raise ConfigError(f"{name}_max: must be above {name} ({getattr(self, name):g})")


@dataclass(frozen=True)
class GeneratorBias:
    """Keep an event with probability ``clip((variable / reference)^power, min_keep, 1)`` (x
    ``light_keep`` without a b/c parton in the jet acceptance); its weight is multiplied by 1 / that."""

    reference: float
    variable: Literal["ht", "lepton_pt", "system_pt"] = "ht"
    power: float = 2.0
    min_keep: float = 0.01
    light_keep: float = 1.0

    def validate(self) -> None:
        if not self.reference > 0:
            raise ConfigError("reference: must be > 0 (GeV)")
        if not self.power >= 0:
            raise ConfigError("power: must be >= 0")
        if not 0 < self.min_keep <= 1:
            raise ConfigError("min_keep: a keep probability in (0, 1]")
        if not 0 < self.light_keep <= 1:
            raise ConfigError("light_keep: a keep probability in (0, 1]")


@dataclass(frozen=True)
class TagBias:
    """Mistag enrichment of the b-tag score (PNet B, DeepJet follows it): see the module docstring."""

    score_min: float  # the working point the analysis cuts on (btagPNetB)
    share: float = 0.1  # probability that an eligible jet draws its score from above score_min
    pt_min: float = 20.0  # reco pT (GeV) from which a jet is eligible: the analysis' AK4 threshold

    def validate(self) -> None:
        if not 0 < self.score_min < 1:
            raise ConfigError("score_min: a b-tag score in (0, 1)")
        if not 0 < self.share < 1:
            raise ConfigError("share: a probability in (0, 1)")
        if not self.pt_min >= 0:
            raise ConfigError("pt_min: must be >= 0 (GeV)")


@dataclass(frozen=True)
class Enrichment:
    """A filter and/or a bias applied to the hard events of a generated sample, and how it is sampled.

    ``isr_mean``: the number of ISR partons is drawn as ``isr_min`` + Poisson(``isr_mean``) instead of
    the process's mean, and each event's weight multiplied by p(n) / q(n) of its count ``n`` (the
    process's over the sampled probability; no event is rejected). ``negative_weights=False``: every
    event has a positive weight (an LO-like sample instead of the NLO-like share of negative weights).
    """

    filter: GeneratorFilter | None = None
    bias: GeneratorBias | None = None
    isr_mean: float | None = None
    negative_weights: bool = True
    tag_bias: TagBias | None = None

    def __bool__(self) -> bool:
        return (self.filter is not None or self.bias is not None or self.isr_mean is not None
                or not self.negative_weights or self.tag_bias is not None)

    def validate(self) -> None:
        if self.tag_bias is not None:
            self.tag_bias.validate()
        if self.isr_mean is not None and not 0 < self.isr_mean <= MAX_ISR_MEAN:
            raise ConfigError(f"isr_mean: a mean number of ISR partons in (0, {MAX_ISR_MEAN:g}]")

    def keep(self, quantities: dict[str, np.ndarray], u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mask of kept events and their weight factors (1 / keep probability), from uniforms ``u``."""
        n = u.size
        passed = np.ones(n, bool)
        f = self.filter
        if f is not None:
            passed &= quantities["lepton_pt"] >= f.lepton_pt
            passed &= quantities["ht"] >= f.ht
            passed &= quantities["partons"] >= f.partons
            passed &= quantities["system_pt"] >= f.system_pt
            if f.ht_max is not None:
                passed &= quantities["ht"] < f.ht_max
            if f.system_pt_max is not None:
                passed &= quantities["system_pt"] < f.system_pt_max
        prob = np.ones(n)
        b = self.bias
        if b is not None:
            x = np.maximum(quantities[b.variable], 0.0)
            prob = np.clip((x / b.reference) ** b.power, b.min_keep, 1.0)
            prob = np.where(quantities["heavy"], prob, prob * b.light_keep)
        kept = passed & (u < prob)
        return kept, 1.0 / prob


def hard_quantities(hard) -> dict[str, np.ndarray]:
    """Generator-level values the filter and bias read from a :class:`~crema.generate.processes.HardEvent`."""
    rec = hard.rec
    n = rec.n
    lepton_pt = np.zeros(n)
    ht = np.zeros(n)
    partons = np.zeros(n, np.int64)
    heavy = np.zeros(n, bool)
    for s in hard.finals + hard.isr:
        slot = rec[s]
        apdg = np.abs(slot.pdg)
        pt = slot.p4.pt
        is_lep = slot.present & np.isin(apdg, (11, 13)) & (np.abs(slot.p4.eta) < LEPTON_ABS_ETA_MAX)
        lepton_pt = np.where(is_lep, np.maximum(lepton_pt, pt), lepton_pt)
        in_acc = (slot.present & ((apdg <= 5) | (apdg == 21)) & (pt > PARTON_PT_MIN)
                  & (np.abs(slot.p4.eta) < PARTON_ABS_ETA_MAX))
        ht += np.where(in_acc, pt, 0.0)
        partons += in_acc
        heavy |= in_acc & ((apdg == 4) | (apdg == 5))
    return {"lepton_pt": lepton_pt, "ht": ht, "partons": partons, "heavy": heavy, "system_pt": hard.system.pt}


__all__ = ["Enrichment", "GeneratorBias", "GeneratorFilter", "TagBias", "hard_quantities", "MIN_EFFICIENCY"]
