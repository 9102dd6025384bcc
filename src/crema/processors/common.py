"""Pieces every crema processor shares: sample metadata, histogram booking, output and normalisation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import hist

from crema.schema import ConfigError, from_dict, load_yaml

HISTOGRAM_DIR = Path(__file__).resolve().parent.parent / "configs" / "histograms"


@dataclass(frozen=True)
class SampleInfo:
    """What a processor needs to know about a dataset: its kind, process label and cross section."""

    name: str
    kind: Literal["signal", "background", "data"]
    process: str
    xsec_pb: float | None = None

    @property
    def is_mc(self) -> bool:
        return self.kind != "data"


@dataclass(frozen=True)
class HistogramSpec:
    """Regular binning of one observable."""

    bins: int
    start: float
    stop: float
    label: str = ""

    def validate(self) -> None:
        if self.bins <= 0:
            raise ConfigError("bins: must be positive")
        if self.stop <= self.start:
            raise ConfigError("stop: must be larger than start")


def load_histogram_specs(name_or_path: str | Path) -> dict[str, HistogramSpec]:
    """Histogram binning by builtin name (``hhbbww``) or YAML path."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = HISTOGRAM_DIR / f"{name_or_path}.yaml"
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of observable -> binning")
    try:
        return {name: from_dict(HistogramSpec, spec, name) for name, spec in data.items()}
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def book(specs: dict[str, HistogramSpec], datasets: list[str], channels: list[str], regions: list[str],
         systematics: list[str]) -> dict[str, hist.Hist]:
    """One weighted histogram per observable with dataset, channel, region and systematic axes.

    All categories are booked up front, so a histogram nothing was filled into still has them.
    """
    return {
        name: hist.Hist(
            hist.axis.StrCategory(datasets, name="dataset", growth=True),
            hist.axis.StrCategory(channels, name="channel"),
            hist.axis.StrCategory(regions, name="region"),
            hist.axis.StrCategory(systematics, name="systematic", growth=True),
            hist.axis.Regular(spec.bins, spec.start, spec.stop, name=name, label=spec.label or name),
            storage=hist.storage.Weight(),
        )
        for name, spec in specs.items()
    }


def scale_dataset(h: hist.Hist, dataset: str, factor: float) -> None:
    """Multiply the ``dataset`` slice of a weighted histogram by ``factor`` in place."""
    axis = h.axes["dataset"]
    if dataset not in axis:
        return
    index = axis.index(dataset)
    view = h.view(flow=True)
    slicer = tuple(index if ax.name == "dataset" else slice(None) for ax in h.axes)
    view.value[slicer] *= factor
    view.variance[slicer] *= factor**2


def normalisation(info: SampleInfo, sumw: float, luminosity_fb: float) -> float:
    """Scale factor to cross section x luminosity: xsec [pb] x 1000 x L [fb^-1] / sum of genWeight."""
    if not info.is_mc:
        return 1.0
    if info.xsec_pb is None:
        raise ConfigError(f"datasets.{info.name}.xsec_pb: a simulated dataset needs a cross section")
    if sumw == 0:
        return 0.0
    return info.xsec_pb * 1000.0 * luminosity_fb / sumw
