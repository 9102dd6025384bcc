"""Fit settings of a run config (the ``fit:`` block), validated like every crema config."""

from __future__ import annotations

from dataclasses import dataclass, field

from crema.schema import ConfigError


@dataclass(frozen=True)
class FitConfig:
    """What ``crema fit`` fits by default and the normalisation uncertainties it assigns.

    ``observable``: the histogram fitted; ``channels``/``regions``: which (channel, region) pairs
    become pyhf channels (``channels: null``: every channel of the run); ``norm_uncertainties``:
    process -> relative log-normal normalisation uncertainty (0.05 = 5%), one nuisance parameter per
    process (``norm_<process>``); ``shape_systematics``: include every variation on the systematic axis;
    ``ranking``: how many nuisance parameters the impact plot ranks (0: no ranking, the fastest);
    ``rebin``: merge this many adjacent bins of the observable before fitting (fewer, better-populated
    bins: fewer MC-statistics parameters and a faster fit); ``prune``: leave out a sample's shape
    variation when it moves no bin by more than this fraction (0: keep all);
    ``max_mc_stat``: after ``rebin``, merge adjacent bins until the background's relative MC
    statistical uncertainty in each is at most this (null: no merging); ``confidence_level`` of the CLs limits.
    """

    observable: str = "hme_mass"
    channels: list[str] | None = None
    regions: list[str] = field(default_factory=lambda: ["resolved_2b", "boosted"])
    norm_uncertainties: dict[str, float] = field(default_factory=dict)
    shape_systematics: bool = True
    ranking: int = 10
    rebin: int = 1
    prune: float = 0.0
    max_mc_stat: float | None = None
    confidence_level: float = 0.95

    def validate(self) -> None:
        for process, value in self.norm_uncertainties.items():
            if not 0.0 < value < 1.0:
                raise ConfigError(f"norm_uncertainties.{process}: expected a relative uncertainty in (0, 1), got {value}")
        if not self.regions:
            raise ConfigError("regions: name at least one region")
        if not 0.0 <= self.prune < 1.0:
            raise ConfigError(f"prune: expected a fraction in [0, 1), got {self.prune}")
        if self.max_mc_stat is not None and not 0.0 < self.max_mc_stat < 1.0:
            raise ConfigError(f"max_mc_stat: expected a fraction in (0, 1), got {self.max_mc_stat}")
        if self.rebin < 1:
            raise ConfigError("rebin: must be >= 1")
        if self.ranking < 0:
            raise ConfigError("ranking: must be >= 0")
        if not 0.5 < self.confidence_level < 1.0:
            raise ConfigError(f"confidence_level: expected a value in (0.5, 1), got {self.confidence_level}")
