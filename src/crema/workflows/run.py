"""Running a config: preflight checks, executors (iterative, futures, dask), bad-file accounting."""

from __future__ import annotations

import contextlib
import warnings
import zlib
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import uproot
from coffea import processor
from coffea.nanoevents import NanoAODSchema

from crema.corrections.era import load_era
from crema.processors.hhbbww import HHbbWWOptions, HHbbWWProcessor
from crema.processors.spanet_dataset import SpanetDataset, SpanetDatasetOptions
from crema.processors.tth import TTHOptions, TTHProcessor
from crema.schema import from_dict
from crema.selections.jetid import resolve_needs, version_hint
from crema.workflows.config import Config, ExecutorConfig, JobQueue

# processor name -> (options schema, how to build it from options and the whole config)
PROCESSORS: dict[str, tuple[type, Any]] = {
    "hhbbww": (HHbbWWOptions, lambda o, c: HHbbWWProcessor(o, c.samples, load_era(c.era), c.luminosity_fb)),
    "tth": (TTHOptions, lambda o, c: TTHProcessor(o, c.samples, load_era(c.era), c.luminosity_fb)),
    "spanet_dataset": (SpanetDatasetOptions,
                       lambda o, c: SpanetDataset.from_options(o, {d.name: d.kind for d in c.datasets})),
}

# What a damaged file raises while a chunk is read; such chunks are skipped (and reported) with
# --skip-bad-files. Errors of the processor's own logic are not in this list and always propagate.
BAD_FILE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    EOFError,
    zlib.error,
    uproot.deserialization.DeserializationError,
)


class InputError(RuntimeError):
    """An input file is unreadable or lacks a branch the processor needs; the message names it."""


@dataclass
class RunReport:
    """What a run read, skipped and lost."""

    expected: dict[str, int] = field(default_factory=dict)  # file -> entries scheduled
    processed: dict[str, int] = field(default_factory=dict)  # file -> entries processed
    bad_files: dict[str, str] = field(default_factory=dict)  # file -> why it was skipped
    bad_entries: dict[str, int] = field(default_factory=dict)  # file -> its entries, where known

    @property
    def lost(self) -> dict[str, int]:
        """Entries scheduled but not processed (chunks that failed to read), per file."""
        return {f: n - self.processed.get(f, 0) for f, n in self.expected.items() if n != self.processed.get(f, 0)}

    def to_dict(self) -> dict[str, Any]:
        return {
            "bad_files": [{"file": f, "error": e, "events_lost": self.bad_entries.get(f, "all (count unknown)")}
                          for f, e in self.bad_files.items()],
            "lost_events": self.lost,
            "processed_events": sum(self.processed.values()),
        }

    def lines(self) -> list[str]:
        """Human-readable summary lines (empty when nothing was lost)."""
        out = [f"skipped bad file {f}: {e} ({self.bad_entries.get(f, 'all')} events lost)"
               for f, e in self.bad_files.items()]
        out += [f"lost {n} of {self.expected[f]} events of {f} (chunks failed to read)" for f, n in self.lost.items()]
        return out


def _chain(err: BaseException) -> Iterator[BaseException]:
    while err is not None:
        yield err
        err = err.__cause__ or err.__context__


def generate_inputs(config: Config, directory: str | Path, scale: float = 1.0, log=None,
                    only_missing: bool = False) -> Config:
    """Write every dataset that has a ``generate`` spec with crema's generator into ``directory``.

    Returns the config with those datasets pointing at the new files (event counts scaled by
    ``scale``, at least one event); datasets without a spec (or, with ``only_missing``, with
    files already given) are left as they are.
    """
    from crema.generate import write_nanoaod

    directory = Path(directory)
    datasets = []
    for d in config.datasets:
        g = d.generate
        if g is None or (only_missing and d.files):
            datasets.append(d)
            continue
        path = directory / f"{d.name}.root"
        path.parent.mkdir(parents=True, exist_ok=True)
        n = max(1, int(g.events * scale))
        if log is not None:
            log(f"generating {n} {g.process} events -> {path}")
        write_nanoaod(path, g.process, n, seed=g.seed, mass=g.mass, pfnano=g.pfnano)
        datasets.append(replace(d, files=[str(path)], generate=replace(g, events=n)))
    return replace(config, datasets=datasets)


def build_processor(config: Config) -> processor.ProcessorABC:
    """Instantiate the configured processor; option errors name the key under ``processor.options``."""
    options_cls, build = PROCESSORS[config.processor.name]
    return build(from_dict(options_cls, config.processor.options, "processor.options"), config)


def preflight(config: Config, proc: processor.ProcessorABC) -> tuple[dict[str, Any], RunReport]:
    """Open every input file once: check the tree and the branches the processor needs.

    An unreadable file raises :class:`InputError` naming it, or with ``skip_bad_files`` is dropped
    and recorded in the report. A missing branch always raises, naming file, branch and its use.
    """
    report = RunReport()
    fileset = config.fileset()
    for dataset in config.datasets:
        needs = proc.required_branches(dataset.sample)
        files = fileset[dataset.name]["files"]
        for path, treename in list(files.items()):
            entries = None
            try:
                with uproot.open(path) as f:
                    tree = f[treename]
                    entries = tree.num_entries
                    branches = set(tree.keys())
                    size, end = f.file.source.num_bytes, f.file.fEND
                    if size < end:  # the header says the file is longer than what is on disk
                        raise OSError(f"file is truncated: {size} of {end} bytes present")
            except Exception as err:
                reason = f"{type(err).__name__}: {err}"
                if not config.executor.skip_bad_files:
                    raise InputError(f"{path}: cannot read tree {treename!r} ({reason}); "
                                     "use --skip-bad-files to skip it") from err
                report.bad_files[path] = reason
                if entries is not None:
                    report.bad_entries[path] = entries
                del files[path]
                continue
            file_needs, notices = resolve_needs(needs, branches)  # NanoAODv15: jet ID from its inputs
            for notice in notices:
                warnings.warn(f"{path}: {notice}", stacklevel=2)
            missing = sorted(set(file_needs) - branches)
            if missing:
                b = missing[0]
                more = f" (and {len(missing) - 1} more: {', '.join(missing[1:4])}...)" if len(missing) > 1 else ""
                raise InputError(f"{path}: branch {b!r} is missing; it is needed by {file_needs[b]}{more}"
                                 f"{version_hint(branches)}")
    return fileset, report


@contextlib.contextmanager
def executor_for(cfg: ExecutorConfig) -> Iterator[processor.executor.ExecutorBase]:
    """The coffea executor for ``cfg``; a dask cluster started here is closed on exit."""
    if cfg.name == "iterative":
        yield processor.IterativeExecutor(status=cfg.progress)
    elif cfg.name == "futures":
        yield processor.FuturesExecutor(workers=cfg.workers, status=cfg.progress)
    else:
        from distributed import Client

        with contextlib.ExitStack() as stack:
            if cfg.scheduler:
                client = stack.enter_context(Client(cfg.scheduler))
            else:
                cluster = stack.enter_context(_cluster(cfg))
                client = stack.enter_context(Client(cluster))
            yield processor.DaskExecutor(client=client, status=cfg.progress)


def _cluster(cfg: ExecutorConfig):
    if cfg.jobqueue is not None:
        cluster = jobqueue_cluster(cfg.jobqueue)
        cluster.scale(jobs=cfg.jobqueue.jobs)
        return cluster
    from distributed import LocalCluster

    return LocalCluster(n_workers=cfg.workers, threads_per_worker=cfg.threads_per_worker,
                        processes=True, dashboard_address=None)


def jobqueue_cluster(jq: JobQueue):
    """A dask-jobqueue HTCondor or SLURM cluster (not yet scaled) from the config's settings."""
    import dask_jobqueue

    cls = {"htcondor": dask_jobqueue.HTCondorCluster, "slurm": dask_jobqueue.SLURMCluster}[jq.kind]
    return cls(cores=jq.cores, memory=jq.memory, **jq.options)


def run(config: Config, proc: processor.ProcessorABC | None = None) -> tuple[dict[str, Any], RunReport]:
    """Run the configured processor (or ``proc``) over all datasets; returns (post-processed output, report)."""
    proc = build_processor(config) if proc is None else proc
    fileset, report = preflight(config, proc)
    if hasattr(proc, "generator_sumw"):  # simulation normalised with the Runs trees of all files
        from crema.workflows.normalisation import runs_tree_sums

        proc.generator_sumw = runs_tree_sums(config)
    ex = config.executor
    with executor_for(ex) as executor:
        runner = processor.Runner(
            executor=executor,
            schema=NanoAODSchema,
            chunksize=ex.chunksize,
            maxchunks=ex.maxchunks,
            skipbadfiles=BAD_FILE_ERRORS if ex.skip_bad_files else False,
        )
        chunks = list(runner.preprocess(fileset, treename="Events"))
        expected: dict[str, int] = defaultdict(int)
        for chunk in chunks:
            expected[chunk.filename] += chunk.entrystop - chunk.entrystart
        report.expected = dict(expected)
        with warnings.catch_warnings():
            # coffea warns once per skipped chunk; crema reports them together in RunReport
            warnings.filterwarnings("ignore", message="Skipping bad file")
            # the Runner calls proc.postprocess on the merged output
            try:
                output = runner(chunks, proc, treename="Events") if chunks else proc.postprocess({})
            except Exception as err:
                if not any(isinstance(e, BAD_FILE_ERRORS) for e in _chain(err)):
                    raise
                # coffea's message names the work item (file and entry range) that failed
                raise InputError(f"reading a chunk failed: {err}; use --skip-bad-files to skip such chunks") from err
    report.processed = dict(output["processed"])
    return output, report
