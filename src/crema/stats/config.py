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
    ``confidence_level`` of the CLs limits.
    """

    observable: str = "hme_mass"
    channels: list[str] | None = None
    regions: list[str] = field(default_factory=lambda: ["resolved_2b", "boosted"])
    norm_uncertainties: dict[str, float] = field(default_factory=dict)
    shape_systematics: bool = True
    ranking: int = 10
    confidence_level: float = 0.95

    def validate(self) -> None:
        for process, value in self.norm_uncertainties.items():
            if not 0.0 < value < 1.0:
                raise ConfigError(f"norm_uncertainties.{process}: expected a relative uncertainty in (0, 1), got {value}")
        if not self.regions:
            raise ConfigError("regions: name at least one region")
        if self.ranking < 0:
            raise ConfigError("ranking: must be >= 0")
        if not 0.5 < self.confidence_level < 1.0:
            raise ConfigError(f"confidence_level: expected a value in (0.5, 1), got {self.confidence_level}")
