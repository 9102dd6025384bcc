"""The run configuration: datasets, processor, era, executor and output, validated at start-up."""

from __future__ import annotations

import glob
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from crema.generate.enrich import Enrichment, GeneratorBias, GeneratorFilter, TagBias
from crema.processors.classifier_dataset import ClassifierDatasetConfig
from crema.plotting import ProcessStyle
from crema.processors.common import SampleInfo
from crema.schema import ConfigError, from_dict, load, to_dict
from crema.stats.config import FitConfig


@dataclass(frozen=True)
class GenerateSpec:
    """How a dataset is made with crema's generator (used by ``crema demo``)."""

    process: str
    events: int
    seed: int = 0
    mass: float = 800.0
    pfnano: bool = False  # also write the PFNano constituent tables (PFCands, JetPFCands, SV, JetSVs)
    # generator-level filter and biased sampling (crema.generate.enrich); ``events`` are then the events
    # written, and the file's Runs tree counts all attempted events so ``xsec_pb`` stays inclusive
    filter: GeneratorFilter | None = None
    bias: GeneratorBias | None = None
    # draw the ISR parton multiplicity from isr_min + Poisson(isr_mean) and reweight each event exactly
    isr_mean: float | None = None
    # false: an LO-like sample, all weights positive (default: the process's NLO-like negative share)
    negative_weights: bool = True
    # draw the b-tag scores of jets not from b hadrons from above a working point with a probability
    # (mistag enrichment), each event weighted exactly
    tag_bias: TagBias | None = None

    def validate(self) -> None:
        self.enrichment.validate()

    @property
    def enrichment(self) -> Enrichment:
        """The filter, biases and weight model as the generator takes them."""
        return Enrichment(self.filter, self.bias, self.isr_mean, self.negative_weights, self.tag_bias)


@dataclass(frozen=True)
class Dataset:
    """One dataset: files (paths or globs, relative to the config file) and its physics metadata."""

    name: str
    kind: Literal["signal", "background", "data"]
    process: str
    files: list[str] = field(default_factory=list)
    xsec_pb: float | None = None
    treename: str = "Events"
    generate: GenerateSpec | None = None
    mass: float | None = None  # signal mass hypothesis in GeV (crema fit --scan)
    eft_points: str | None = None  # EFTReweightPoints JSON for files without it (the gridpack's reweight card)
    primary_dataset: str | None = None  # collision data: the CMS primary dataset (era primary_datasets)

    def validate(self) -> None:
        if self.mass is not None and (self.kind != "signal" or self.mass <= 0):
            raise ConfigError("mass: a positive mass hypothesis, for signal datasets only")
        if self.eft_points is not None:
            from crema.histograms.eft import EFTPoints

            EFTPoints.from_json(self.eft_points, "eft_points")
        if self.kind != "data" and self.xsec_pb is None:
            raise ConfigError("xsec_pb: simulated datasets need a cross section in pb")
        if self.kind != "data" and self.primary_dataset is not None:
            raise ConfigError("primary_dataset: only collision data (kind: data) has a primary dataset")
        if not self.files and self.generate is None:
            raise ConfigError("files: no input files given")

    @property
    def sample(self) -> SampleInfo:
        return SampleInfo(self.name, self.kind, self.process, self.xsec_pb, self.primary_dataset)


@dataclass(frozen=True)
class JobQueue:
    """A dask-jobqueue batch cluster; ``options`` go to the cluster class unchanged."""

    kind: Literal["htcondor", "slurm"]
    jobs: int = 1
    cores: int = 1
    memory: str = "2GB"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ExecutorConfig:
    """How chunks are run. ``dask`` starts a LocalCluster unless ``scheduler`` or ``jobqueue`` is set."""

    name: Literal["iterative", "futures", "dask"] = "iterative"
    workers: int = 1
    threads_per_worker: int = 1
    scheduler: str | None = None
    jobqueue: JobQueue | None = None
    chunksize: int = 100_000
    maxchunks: int | None = None
    skip_bad_files: bool = False
    progress: bool = True

    def validate(self) -> None:
        if self.workers < 1:
            raise ConfigError("workers: must be >= 1")
        if self.chunksize < 1:
            raise ConfigError("chunksize: must be >= 1")
        if self.maxchunks is not None and self.maxchunks < 1:
            raise ConfigError("maxchunks: must be >= 1 (0 chunks would be an empty run)")
        if (self.scheduler or self.jobqueue) and self.name != "dask":
            raise ConfigError("name: scheduler/jobqueue settings need the dask executor")

    @property
    def local_processes(self) -> int:
        """Processes this machine may use beside the run (generating samples, plots, the fit's scan):
        the executor's workers, one with the iterative executor."""
        return 1 if self.name == "iterative" else self.workers


@dataclass(frozen=True)
class ProcessorConfig:
    """Which processor runs and its options (validated by the processor's own schema)."""

    name: Literal["hhbbww", "tth", "spanet_dataset", "ttbar_eft"] = "hhbbww"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PlotConfig:
    """Which nominal histograms ``crema run`` draws (null: all) and how (see the README's plots section)."""

    regions: list[str] | None = field(default_factory=lambda: ["inclusive"])
    observables: list[str] | None = None
    signal_scale: float | None = None  # null: the power of ten that makes the largest signal 2-20% of the background
    logy: bool = False
    label: str | None = None  # experiment label text (null: "Private work", with "Simulation" when no data)
    energy_tev: float = 13.6  # centre-of-mass energy in the luminosity label

    def validate(self) -> None:
        if self.signal_scale is not None and not self.signal_scale > 0:
            raise ConfigError(f"signal_scale: must be > 0, got {self.signal_scale:g}")
        if not self.energy_tev > 0:
            raise ConfigError(f"energy_tev: must be > 0, got {self.energy_tev:g}")


@dataclass(frozen=True)
class Config:
    """A whole crema run."""

    datasets: list[Dataset]
    luminosity_fb: float
    processor: ProcessorConfig = field(default_factory=ProcessorConfig)
    era: str = "2022"
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    output: str = "crema-out"
    plots: PlotConfig = field(default_factory=PlotConfig)
    processes: dict[str, ProcessStyle] = field(default_factory=dict)  # colour and legend label per process
    fit: FitConfig = field(default_factory=FitConfig)
    classifier: ClassifierDatasetConfig | None = None  # crema classifier-dataset: features per selected event

    def validate(self) -> None:
        names = [d.name for d in self.datasets]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"datasets: dataset name {dupes[0]!r} appears twice")
        if not self.datasets:
            raise ConfigError("datasets: at least one dataset is needed")
        known = [d.process for d in self.datasets if d.kind != "data"]
        for name in self.processes:
            if name not in known:
                raise ConfigError(f"processes.{name}: no simulated dataset has process {name!r} "
                                  f"(known: {', '.join(dict.fromkeys(known))})")

    @property
    def samples(self) -> dict[str, SampleInfo]:
        return {d.name: d.sample for d in self.datasets}

    def fileset(self) -> dict[str, dict[str, Any]]:
        """coffea fileset ``{dataset: {"files": {path: treename}}}`` with globs expanded."""
        return {d.name: {"files": {f: d.treename for f in expand_files(d)}} for d in self.datasets}

    def with_executor(self, **changes: Any) -> "Config":
        """A copy with executor settings replaced (command-line overrides)."""
        changes = {k: v for k, v in changes.items() if v is not None}
        executor = from_dict(ExecutorConfig, {**to_dict(self.executor), **changes}, "executor")
        return replace(self, executor=executor)


def expand_files(dataset: Dataset) -> list[str]:
    """Expand the dataset's globs; a pattern that matches nothing is an error naming it.

    A ``.json`` entry is a coffea dataset-tools fileset (``{dataset: {"files": {path: treename}}}``);
    the files of the entry named like this dataset are taken.
    """
    files: list[str] = []
    for pattern in dataset.files:
        if pattern.endswith(".json") and "://" not in pattern:
            files.extend(fileset_json_files(pattern, dataset))
            continue
        if "://" in pattern:  # remote (xrootd, https): taken as is
            files.append(pattern)
            continue
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches:
            raise ConfigError(f"datasets.{dataset.name}.files: {pattern!r} matches no file")
        files.extend(matches)
    return files


def fileset_json_files(path: str, dataset: Dataset) -> list[str]:
    """The files of ``dataset`` in a coffea fileset JSON (their tree must be the dataset's ``treename``)."""
    import json

    where = f"datasets.{dataset.name}.files"
    try:
        fileset = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{where}: cannot read fileset JSON {path!r} ({err})") from None
    entry = fileset.get(dataset.name) if isinstance(fileset, dict) else None
    if not isinstance(entry, dict) or not isinstance(entry.get("files"), (dict, list)):
        known = ", ".join(sorted(fileset)) if isinstance(fileset, dict) else "not a mapping"
        raise ConfigError(f"{where}: {path} has no dataset {dataset.name!r} with files (it has: {known})")
    files = entry["files"]
    if isinstance(files, dict):
        wrong = [f for f, tree in files.items() if (tree or dataset.treename) != dataset.treename]
        if wrong:
            raise ConfigError(f"{where}: {wrong[0]} in {path} names tree {files[wrong[0]]!r}, "
                              f"the dataset reads {dataset.treename!r}")
    return list(files)


def _absolute(dataset: Dataset, base: Path) -> Dataset:
    files = [f if "://" in f or Path(f).is_absolute() else str((base / f).resolve()) for f in dataset.files]
    return replace(dataset, files=files)


def load_config(path: str | Path) -> Config:
    """Read and validate a run config; relative file paths resolve against the config's folder."""
    path = Path(path)
    config = load(Config, path)
    base = path.resolve().parent
    return replace(config, datasets=[_absolute(d, base) for d in config.datasets])


def dump_config(config: Config, path: str | Path) -> None:
    """Write ``config`` as YAML (what ``crema run`` reads back)."""
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
