"""Running a config: preflight checks, executors (iterative, futures, dask), bad-file accounting."""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import lzma
import os
import shutil
import signal
import tempfile
import threading
import time
import logging
import uuid
import warnings
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cramjam
import uproot
from coffea import processor
from coffea.nanoevents import NanoAODSchema
from coffea.processor.executor import FileMeta

from crema.corrections.era import load_era
from crema.processors.hhbbww import HHbbWWOptions, HHbbWWProcessor
from crema.processors.spanet_dataset import SpanetDataset, SpanetDatasetOptions
from crema.processors.tth import TTHOptions, TTHProcessor
from crema.processors.ttbar_eft import TTbarEFTOptions, TTbarEFTProcessor
from crema.histograms import io as store
from crema.schema import ConfigError, from_dict
from crema.workflows.config import Config, ExecutorConfig, JobQueue, expand_files
from crema.workflows.errors import InputError, RunInterrupted  # noqa: F401 (part of this module's API)
from crema.workflows.opentrees import OpenTrees, inspect_tree
from crema.selections.jetid import resolve_needs, version_hint

# processor name -> (options schema, how to build it from options and the whole config)
PROCESSORS: dict[str, tuple[type, Any]] = {
    "hhbbww": (HHbbWWOptions, lambda o, c: HHbbWWProcessor(o, c.samples, load_era(c.era), c.luminosity_fb)),
    "tth": (TTHOptions, lambda o, c: TTHProcessor(o, c.samples, load_era(c.era), c.luminosity_fb)),
    "ttbar_eft": (TTbarEFTOptions, lambda o, c: TTbarEFTProcessor(o, c.samples, load_era(c.era), c.luminosity_fb,
                                                                 {d.name: d.eft_points for d in c.datasets})),
    "spanet_dataset": (SpanetDatasetOptions,
                       lambda o, c: SpanetDataset.from_options(o, {d.name: d.kind for d in c.datasets})),
}

# What a damaged file raises while a chunk is read (uproot deserialisation, decompression, I/O). Any
# exception while a chunk is processed is also a read error when re-reading that chunk's branches
# with uproot fails (a checksum mismatch is a plain ValueError); errors of the processor's own logic
# always propagate.
BAD_FILE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    EOFError,
    zlib.error,
    lzma.LZMAError,
    cramjam.DecompressionError,
    uproot.deserialization.DeserializationError,
)
# errors that may go away on a second try (a remote read timing out): these are left to the
# executor's retries instead of being recorded as a bad chunk
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (TimeoutError, ConnectionError)


log = logging.getLogger(__name__)


class RunFailed(InputError):
    """A run stopped on an input error; ``report`` holds what it did (status ``failed``)."""

    def __init__(self, message: str, report: RunReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class RunReport:
    """What a run read, skipped and lost; ``to_dict`` is report.json."""

    datasets: dict[str, list[str]] = field(default_factory=dict)  # dataset -> its files, config order
    expected: dict[str, int] = field(default_factory=dict)  # file -> entries scheduled
    processed: dict[str, int] = field(default_factory=dict)  # file -> entries processed
    bad_files: dict[str, str] = field(default_factory=dict)  # file -> why it was skipped
    bad_entries: dict[str, int] = field(default_factory=dict)  # file -> its entries, where known
    bad_chunks: list[dict[str, Any]] = field(default_factory=list)  # file, entry_start/stop, branch, error
    total_chunks: int = 0
    processed_chunks: int = 0  # chunks whose output is in the result (resumed ones included)
    resumed_chunks: int = 0  # of those, taken from an earlier run's checkpoint
    status: str = "complete"
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # processor counters passed through (nonfinite, ...)
    timings: dict[str, float] = field(default_factory=dict)  # stage -> wall-clock seconds
    chunks: list[tuple[str, str, int, int]] = field(default_factory=list, repr=False)  # (key, file, start, stop)
    trees: list[tuple] = field(default_factory=list, repr=False)  # kept input trees (see OpenTrees.of)
    # (dataset, file, tree) -> entries and UUID read in preflight: coffea's preprocessing need not open the file again
    file_meta: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict, repr=False)

    def count_done(self, done: set[str]) -> None:
        """Set ``processed`` and ``processed_chunks`` from the chunks whose checkpoint is in ``done``."""
        self.processed = {}
        for key, f, start, stop in self.chunks:
            self.processed[f] = self.processed.get(f, 0) + (stop - start if key in done else 0)
        self.processed_chunks = sum(key in done for key, *_ in self.chunks)

    @property
    def lost(self) -> dict[str, int]:
        """Entries of readable files lost in chunks that failed to read, per file."""
        out: dict[str, int] = defaultdict(int)
        for c in self.bad_chunks:
            out[c["file"]] += c["entry_stop"] - c["entry_start"]
        return dict(out)

    def to_dict(self) -> dict[str, Any]:
        lost = self.lost
        per_dataset = {}
        for ds, files in self.datasets.items():
            per_dataset[ds] = {
                "processed_events": sum(self.processed.get(f, 0) for f in files),
                "lost_events": sum(lost.get(f, 0) + self.bad_entries.get(f, 0) for f in files),
                "bad_files": sum(f in self.bad_files for f in files),
            }
        out = {
            "status": self.status,
            "processed_events": sum(self.processed.values()),
            "lost_events_total": sum(lost.values()) + sum(self.bad_entries.values()),
            "lost_events": {f: n + self.bad_entries.get(f, 0) for f, n in lost.items()}
            | {f: n for f, n in self.bad_entries.items() if f not in lost},
            "bad_files": [{"file": f, "events_lost": self.bad_entries.get(f), "reason": e}
                          for f, e in self.bad_files.items()],
            "bad_chunks": list(self.bad_chunks),
            "processed_chunks": self.processed_chunks,
            "resumed_chunks": self.resumed_chunks,
            "total_chunks": self.total_chunks,
            "datasets": per_dataset,
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
        }
        if self.error is not None:
            out["error"] = self.error
        out.update(_plain(self.extra))
        return out

    def lines(self) -> list[str]:
        """Human-readable problem lines (empty when nothing was lost)."""
        out = [f"skipped bad file {f}: {e} ({self.bad_entries.get(f, 'all')} events lost)"
               for f, e in self.bad_files.items()]
        per_file: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for c in self.bad_chunks:
            per_file[c["file"]].append(c)
        for f, chunks in per_file.items():
            c = chunks[0]
            branch = f", branch {c['branch']}" if c.get("branch") else ""
            out.append(f"lost {self.lost[f]} of {self.expected.get(f, '?')} events of {f} ({len(chunks)} chunk(s) "
                       f"failed to read; first: entries {c['entry_start']}-{c['entry_stop']}{branch}: {c['error']})")
        return out


def _plain(obj: Any) -> Any:
    """``obj`` with numpy scalars turned into Python numbers (for JSON)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:
        return obj.item()
    return obj


def _chain(err: BaseException) -> Iterator[BaseException]:
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def _one_line(err: BaseException) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())[:400]


def generate_inputs(config: Config, directory: str | Path, scale: float = 1.0, log=None,
                    only_missing: bool = False, reuse: bool = False) -> Config:
    """Write every dataset that has a ``generate`` spec with crema's generator into ``directory``.

    Returns the config with those datasets pointing at the new files (event counts scaled by
    ``scale``, at least one event); datasets without a spec (or, with ``only_missing``, with
    files already given) are left as they are. With ``reuse`` a file already in ``directory`` is kept
    (files are written under a temporary name and renamed, so one found there is complete).
    Samples are written in parallel by as many processes as the run's executor has workers
    (futures and dask; one with the iterative executor), largest first; each file is the same
    whatever the number of processes (one seed per dataset).
    """
    directory = Path(directory)
    datasets, todo = [], []
    for d in config.datasets:
        g = d.generate
        if g is None or (only_missing and d.files):
            datasets.append(d)
            continue
        path = directory / f"{d.name}.root"
        path.parent.mkdir(parents=True, exist_ok=True)
        n = max(1, int(g.events * scale))
        if not (reuse and path.is_file()):
            todo.append((n, path, g))
        datasets.append(replace(d, files=[str(path)], generate=replace(g, events=n)))
    todo.sort(key=lambda job: -job[0])
    workers = min(len(todo), config.executor.local_processes)
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context

        # spawn: forking a process that may hold threads (dask, onnxruntime) is unsafe
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            pending = [pool.submit(_write_sample, path, g, n) for n, path, g in todo]
            for (n, path, g), job in zip(todo, pending):
                if log is not None:
                    log(f"generating {n} {g.process} events -> {path}")
                job.result()
    else:
        for n, path, g in todo:
            if log is not None:
                log(f"generating {n} {g.process} events -> {path}")
            _write_sample(path, g, n)
    return replace(config, datasets=datasets)


def _write_sample(path: Path, g, n: int) -> None:
    """One generated file, under a temporary name renamed when complete."""
    from crema.generate import write_nanoaod

    tmp = path.with_name(f".{path.name}.tmp")
    write_nanoaod(tmp, g.process, n, seed=g.seed, mass=g.mass, pfnano=g.pfnano, enrich=g.enrichment)
    os.replace(tmp, path)


def build_processor(config: Config) -> processor.ProcessorABC:
    """Instantiate the configured processor; option errors name the key under ``processor.options``."""
    options_cls, build = PROCESSORS[config.processor.name]
    return build(from_dict(options_cls, config.processor.options, "processor.options"), config)


def required_branches(proc: processor.ProcessorABC, dataset) -> dict[str, str]:
    """The processor's required branches for ``dataset`` (branch -> what needs it); {} if it does not say."""
    needs = getattr(proc, "required_branches", None)
    return dict(needs(dataset.sample)) if callable(needs) else {}


def _not_root(path: str) -> str | None:
    """"not a ROOT file" when a local file does not start with ROOT's magic bytes, else None."""
    if "://" in path:
        return None
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return None
    return None if head == b"root" else "not a ROOT file"


def preflight(config: Config, proc: processor.ProcessorABC,
              inspect_files: Callable[[list[tuple[str, str]]], list[dict[str, Any]]] | None = None) -> tuple[dict[str, Any], RunReport]:
    """Open every input file once: check the tree and the branches the processor needs.

    An unreadable file raises :class:`InputError` naming it, or with ``skip_bad_files`` is dropped
    and recorded in the report. A missing branch always raises, naming file, branch and its use.
    ``inspect_files`` reads the files' trees elsewhere (a dask cluster's workers, which keep them for
    their chunks): ``[(path, tree name)] -> [what inspect_tree returns, or {"error": ...}]``.
    """
    report = RunReport()
    fileset = config.fileset()
    items = [(d.name, path, tree) for d in config.datasets for path, tree in fileset[d.name]["files"].items()]
    # read last file first: of the trees this leaves open (the most recently read), the chunks,
    # which run in config order, then start on theirs instead of reading each tree again
    backwards = items[::-1]
    found = dict(zip(backwards, (inspect_files or _inspect_here)([(path, tree) for _, path, tree in backwards])))
    for dataset in config.datasets:
        needs = required_branches(proc, dataset)
        optional = getattr(proc, "optional_branches", lambda sample: {})(dataset.sample)
        files = fileset[dataset.name]["files"]
        report.datasets[dataset.name] = list(files)
        for path, treename in list(files.items()):
            info, entries = found[dataset.name, path, treename], None
            try:
                if "error" in info:
                    raise _InspectError(info["error"])
                entries = info["entries"]
                branches = set(info["branches"])
                if info["size"] < info["end"]:  # the header says the file is longer than what is on disk
                    raise OSError(f"file is truncated: {info['size']} of {info['end']} bytes present")
            except Exception as err:
                reason = _not_root(path) or (str(err) if isinstance(err, _InspectError) else f"{type(err).__name__}: {err}")
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
            for b in sorted(set(optional) - branches):
                log.warning("%s (dataset %s): no branch %r, so these are left out: %s", path, dataset.name, b, optional[b])
            report.file_meta[dataset.name, path, treename] = {"numentries": entries, "uuid": info["uuid"]}
            if info["record"] is not None:
                report.trees.append(info["record"])
    return fileset, report


class _InspectError(Exception):
    """A file that could not be read where it was inspected: its type and message."""


def _inspect(path: str, treename: str) -> dict[str, Any]:
    try:
        return inspect_tree(path, treename)  # kept open: coffea's opens per chunk reuse it
    except Exception as err:  # the message, not the exception: from a dask worker it need not unpickle here
        return {"error": f"{type(err).__name__}: {err}"}


def _inspect_here(items: list[tuple[str, str]]) -> list[dict[str, Any]]:
    return [_inspect(path, treename) for path, treename in items]


def _inspect_on(client) -> Callable[[list[tuple[str, str]]], list[dict[str, Any]]]:
    """Preflight's file reading on a dask cluster's workers: each keeps the trees it read for its chunks,
    and this process reads no input tree."""
    def inspect(items: list[tuple[str, str]]) -> list[dict[str, Any]]:
        if not items:
            return []
        paths, trees = zip(*items)
        return client.gather(client.map(_inspect, paths, trees, pure=False))
    return inspect


SCHEDULER_TIMEOUT_S = 10


@contextlib.contextmanager
def executor_for(cfg: ExecutorConfig) -> Iterator[processor.executor.ExecutorBase]:
    """The coffea executor for ``cfg``; a process pool or dask cluster started here is closed on exit.

    On an exception (Ctrl-C included) a futures pool is shut down at once: queued chunks are
    cancelled and running workers stopped, instead of waiting for every chunk to finish.
    """
    if cfg.name == "iterative":
        yield processor.IterativeExecutor(status=cfg.progress)
    elif cfg.name == "futures":
        from concurrent.futures import ProcessPoolExecutor

        # workers ignore Ctrl-C (a terminal signals the whole process group): this process stops them
        pool = ProcessPoolExecutor(max_workers=cfg.workers, initializer=_worker_signals)
        try:
            yield processor.FuturesExecutor(pool=pool, workers=cfg.workers, status=cfg.progress)
        except BaseException:
            workers = list((getattr(pool, "_processes", None) or {}).values())
            pool.shutdown(wait=False, cancel_futures=True)
            for p in workers:
                p.terminate()
            raise
        pool.shutdown(wait=True)
    else:
        from distributed import Client

        with contextlib.ExitStack() as stack:
            if cfg.scheduler:
                try:
                    client = stack.enter_context(Client(cfg.scheduler, timeout=SCHEDULER_TIMEOUT_S))
                except (OSError, TimeoutError) as err:
                    raise InputError(f"cannot reach the dask scheduler at {cfg.scheduler} "
                                     f"within {SCHEDULER_TIMEOUT_S} s ({type(err).__name__})") from None
            else:
                with _workers_ignore_sigint():
                    cluster = stack.enter_context(_cluster(cfg))
                client = stack.enter_context(Client(cluster))
            yield SpreadDaskExecutor(client=client, status=cfg.progress)


class SpreadDaskExecutor(processor.DaskExecutor):
    """coffea's DaskExecutor with the processor copied to every worker before the chunks are submitted.

    coffea sends the processor as one task that every chunk depends on; dask's scheduler then places
    each chunk on the worker holding it, and the other workers get chunks only by work stealing (measured:
    3 of 4 chunks on one of 2 workers). With a copy on each worker, chunks go to the least busy one.
    """

    def __call__(self, items, function, accumulator):
        if self.heavy_input is None or not items:
            return super().__call__(items, function, accumulator)
        heavy = self.client.submit(_same, self.heavy_input, pure=False)
        self.client.replicate([heavy])  # workers that join later fetch it from one that has it
        plain = self.copy(heavy_input=None)
        # items as coffea pairs them with the processor for a work function built with processor_instance="heavy"
        return processor.DaskExecutor.__call__(plain, [(item, heavy) for item in items], function, accumulator)


def _same(x: Any) -> Any:
    return x


def _worker_signals() -> None:
    """In a pool worker: ignore Ctrl-C and die quietly on SIGTERM (the parent's handlers are inherited
    on fork; the parent stops its workers itself)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def _workers_ignore_sigint() -> Iterator[None]:
    """Processes started inside inherit an ignored SIGINT, so Ctrl-C reaches only this process
    (which then closes the cluster) instead of printing a traceback from every dask worker."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _cluster(cfg: ExecutorConfig):
    if cfg.jobqueue is not None:
        cluster = jobqueue_cluster(cfg.jobqueue)
        cluster.scale(jobs=cfg.jobqueue.jobs)
        return cluster
    return local_cluster(cfg.workers, cfg.threads_per_worker)


# dask's nanny starts its workers with MALLOC_TRIM_THRESHOLD_=65536 (freed memory goes back to the OS at
# once), which also turns off glibc's adaptive mmap threshold: every array above 128 kB is then a fresh
# mapping whose pages fault in again, and the processor took 1.2-1.3x the CPU time (200k events,
# alternating runs). With this dask setting unset, a worker allocates as any other Python process does.
GLIBC_MALLOC = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"


# Every dask server (scheduler, nanny, worker) wakes its event loop every 20 ms to check that the loop
# is responsive, and samples its process with psutil every 500 ms; idle, that cost the client process
# (which holds a LocalCluster's scheduler) 0.044 s and each worker 0.025 s of CPU per second, about 0.2 s
# for a 3 s run of one worker. With a 1 s check (dask still warns of a loop blocked for over 3 s) and a
# 2 s sample: 0.015 s and 0.011 s per second. The memory monitor (pause, spill, restart) is left as is.
QUIET_EVENT_LOOPS = {"distributed.admin.tick.interval": "1s", "distributed.admin.system-monitor.interval": "2s"}


def local_cluster(workers: int, threads_per_worker: int = 1):
    """The dask ``LocalCluster`` crema starts: worker processes, no dashboard, glibc's own memory allocation,
    quieter event loops (``QUIET_EVENT_LOOPS``)."""
    import dask
    from distributed import LocalCluster

    # No dashboard; the scheduler's HTTP server (which it starts even without one) on a free local
    # port: its default, 8787, is often taken by another cluster, and dask then warns and retries.
    # Without a dashboard nothing shows the workers' statistical profile: not sampled (every 10 ms).
    with dask.config.set({GLIBC_MALLOC: None, "distributed.worker.profile.enabled": False, **QUIET_EVENT_LOOPS}):
        return LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker, processes=True,
                            dashboard_address="127.0.0.1:0", scheduler_kwargs={"dashboard": False})


def jobqueue_cluster(jq: JobQueue):
    """A dask-jobqueue HTCondor or SLURM cluster (not yet scaled) from the config's settings."""
    import dask.config
    import dask_jobqueue

    cls = {"htcondor": dask_jobqueue.HTCondorCluster, "slurm": dask_jobqueue.SLURMCluster}[jq.kind]
    options = dict(jq.options)
    # the workers' nannies read their dask settings on the batch nodes, so the settings travel in the job
    # script (see GLIBC_MALLOC and QUIET_EVENT_LOOPS); dask's DASK_* variables lower-case their keys, so
    # they go as the serialised settings dask hands to processes it starts
    setting = dask.config.serialize(_nested({GLIBC_MALLOC: None, **QUIET_EVENT_LOOPS}))
    options["job_script_prologue"] = [f"export DASK_INTERNAL_INHERIT_CONFIG={setting}",
                                      *options.get("job_script_prologue", [])]
    with dask.config.set(QUIET_EVENT_LOOPS):  # the scheduler runs in this process
        return cls(cores=jq.cores, memory=jq.memory, **options)


def _nested(settings: dict[str, Any]) -> dict:
    """Dotted dask settings (``{"a.b.c": 1}``) as the nested mapping dask serialises (``{"a": {"b": {"c": 1}}}``)."""
    nested: dict = {}
    for dotted, value in settings.items():
        *sections, key = dotted.split(".")
        level = nested
        for section in sections:
            level = level.setdefault(section, {})
        level[key] = value
    return nested


# ---------------------------------------------------------------------------------------- checkpoints
def chunk_key(dataset: str, filename: str, treename: str, start: int, stop: int) -> str:
    """File name (without ``.npz``) of one chunk's checkpoint."""
    return hashlib.sha1(f"{dataset}\0{filename}\0{treename}\0{int(start)}\0{int(stop)}".encode()).hexdigest()[:24]


def _key(item) -> str:
    return chunk_key(item.dataset, item.filename, item.treename, item.entrystart, item.entrystop)


def run_manifest(config: Config, proc: processor.ProcessorABC) -> dict[str, Any]:
    """What a checkpoint is valid for: processor and options, era, luminosity, chunk size, datasets
    and their input files (size and modification time of local files)."""
    from crema import __version__

    datasets = []
    for d in config.datasets:
        files = []
        for path in expand_files(d):
            entry: dict[str, Any] = {"path": path}
            if "://" not in path:
                with contextlib.suppress(OSError):
                    st = os.stat(path)
                    entry.update(size=st.st_size, mtime_ns=st.st_mtime_ns)
            files.append(entry)
        datasets.append({"name": d.name, "kind": d.kind, "process": d.process, "xsec_pb": d.xsec_pb,
                         "treename": d.treename, "files": files})
    return {
        "crema_version": __version__,
        "processor": {"name": config.processor.name, "class": f"{type(proc).__module__}.{type(proc).__qualname__}",
                      "options": config.processor.options},
        "era": config.era,
        "luminosity_fb": config.luminosity_fb,
        "chunksize": config.executor.chunksize,
        "datasets": datasets,
    }


def _manifest_hash(manifest: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Names of what differs between two manifests (``datasets.NAME.files`` level for datasets)."""
    out = [k for k in sorted(set(old) | set(new)) if k != "datasets" and old.get(k) != new.get(k)]
    if k := next((k for k in ("processor",) if k in out), None):
        out[out.index(k)] = ", ".join(f"processor.{f}" for f in ("name", "class", "options")
                                      if old.get(k, {}).get(f) != new.get(k, {}).get(f)) or k
    old_ds = {d["name"]: d for d in old.get("datasets", [])}
    new_ds = {d["name"]: d for d in new.get("datasets", [])}
    if list(old_ds) != list(new_ds):
        out.append("the list of datasets")
    for name in new_ds:
        if name in old_ds and old_ds[name] != new_ds[name]:
            parts = [f for f in new_ds[name] if old_ds[name].get(f) != new_ds[name][f]]
            out += [f"datasets.{name}.{f}" + (" (input files changed)" if f == "files" else "") for f in parts]
    return out


def open_checkpoint(root: str | Path, manifest: dict[str, Any], resume: bool) -> Path:
    """The chunk folder for this run under ``root`` (created).

    Without ``resume`` an earlier checkpoint under ``root`` is removed (a fresh start). With ``resume``
    a checkpoint of another config, processor options or input files is refused, naming what differs.
    """
    root = Path(root)
    run_dir = root / _manifest_hash(manifest)
    if not resume:
        if root.exists():
            shutil.rmtree(root)
    elif not run_dir.exists():
        others = sorted(p for p in root.glob("*/manifest.json")) if root.exists() else []
        if others:
            old = json.loads(others[-1].read_text())
            what = ", ".join(_differences(old, manifest)) or "the run's settings"
            raise ConfigError(f"{root}: the checkpoint there was made with a different {what}; "
                              "it cannot be resumed with this config (rerun without --resume to start over)")
    (run_dir / "chunks").mkdir(parents=True, exist_ok=True)
    for stale in (run_dir / "chunks").glob(".*.tmp"):  # a writer killed before its rename
        stale.unlink()
    manifest_path = run_dir / "manifest.json"
    if not manifest_path.exists():
        manifest_path.write_text(json.dumps(manifest, indent=1, default=str))
    return run_dir / "chunks"


def _done_keys(chunk_dir: Path) -> set[str]:
    return {p.stem for p in chunk_dir.glob("*.npz")}


class OrderedMerge:
    """Adds up a run's chunk outputs in the run's order (dataset, file, entry), so the sums do not
    depend on the executor, with the additions coffea's ``accumulate`` makes over the whole sequence.

    :meth:`following` reads them in a thread while the chunks run in other processes (dask workers):
    each output as soon as it and every one before it are written, so what is left after the last
    chunk is the few not yet read. The files of one run share their histogram layouts (see
    :func:`crema.histograms.io.load`).
    """

    POLL_S = 0.05

    def __init__(self, chunk_dir: Path, keys: list[str]) -> None:
        self._paths = [chunk_dir / f"{k}.npz" for k in keys]
        self._layouts: dict = {}
        self._total: Any = None
        self.next = 0  # outputs before this one are read
        self._stop = threading.Event()
        self._error: BaseException | None = None

    def _add(self, path: Path) -> None:
        # added in place into the first output read (this merge's own object): the same sums, in the same
        # order and key order, as accumulate() over the sequence, which copies the first to spare its input
        if self._total is None:
            self._total = store.load(path, self._layouts)
        else:
            self._total = store.load_into(self._total, path, self._layouts)

    def _follow(self) -> None:
        try:
            while not self._stop.is_set():
                while self.next < len(self._paths) and self._paths[self.next].exists():  # written atomically
                    self._add(self._paths[self.next])
                    self.next += 1
                self._stop.wait(self.POLL_S)
        except BaseException as err:  # raised again by finish()
            self._error = err

    @contextlib.contextmanager
    def following(self, enabled: bool = True) -> Iterator[None]:
        """Read outputs in a thread while the block runs (no thread when not ``enabled``)."""
        if not enabled:
            yield
            return
        thread = threading.Thread(target=self._follow, name="crema-merge", daemon=True)
        thread.start()
        try:
            yield
        finally:
            self._stop.set()
            thread.join()

    def finish(self, done: set[str]) -> Any:
        """The sum over every output in ``done`` (chunk keys), reading those not read yet."""
        if self._error is not None:
            raise self._error
        for path in self._paths[self.next:]:
            if path.stem in done:
                self._add(path)
        self.next = len(self._paths)
        return self._total


class CheckpointingProcessor(processor.ProcessorABC):
    """Runs ``proc`` on a chunk and writes its output to ``directory/<chunk key>.npz`` (crema.histograms.io).

    Returns only ``{"done": {key: entries}}`` to the executor, or ``{"bad_chunks": {key: {...}}}``
    when the chunk could not be read (such errors are not raised, so no executor retries them).
    ``branches`` lists per dataset what to re-read with uproot to find the failing branch.
    """

    def __init__(self, proc: processor.ProcessorABC, directory: Path, branches: dict[str, list[str]]) -> None:
        self.proc = proc
        self.directory = Path(directory)
        self.branches = branches

    def process(self, events):
        meta = events.metadata
        key = chunk_key(meta["dataset"], meta["filename"], meta["treename"], meta["entrystart"], meta["entrystop"])
        try:
            out = self.proc.process(events)
        except Exception as err:
            bad = read_error(meta, err, self.branches.get(meta["dataset"]))
            if bad is None:
                raise
            return {"bad_chunks": {key: bad}}
        store.save(out, self.directory / f"{key}.npz")
        return {"done": {key: int(meta["entrystop"] - meta["entrystart"])}}

    def postprocess(self, accumulator):
        return accumulator


def read_error(meta: dict[str, Any], err: BaseException, branches: list[str] | None) -> dict[str, Any] | None:
    """Whether ``err``, raised while a chunk was processed, is a read error of that chunk.

    Re-reads ``branches`` (all of the tree's when None) over the chunk's entries with uproot: the
    first that fails is the bad branch. Returns ``{"branch", "error"}`` for a read error; None for
    an error of the processor's logic or a transient one (timeouts: left to the executor's retries).
    """
    if any(isinstance(e, TRANSIENT_ERRORS) for e in _chain(err)):
        return None
    start, stop = int(meta["entrystart"]), int(meta["entrystop"])
    try:
        with uproot.open(meta["filename"]) as f:
            tree = f[meta["treename"]]
            names = [b for b in branches if b in tree] if branches else list(tree.keys())
            for b in names:
                try:
                    tree[b].array(entry_start=start, entry_stop=stop)
                except Exception as probe:
                    if isinstance(probe, TRANSIENT_ERRORS):
                        return None
                    return {"branch": b, "error": _one_line(probe)}
    except Exception as probe:  # the file itself no longer opens
        return None if isinstance(probe, TRANSIENT_ERRORS) else {"branch": None, "error": _one_line(probe)}
    if any(isinstance(e, BAD_FILE_ERRORS) for e in _chain(err)):
        deepest = list(_chain(err))[-1]
        return {"branch": None, "error": _one_line(deepest)}
    return None


def _probe_branches(proc: processor.ProcessorABC, config: Config) -> dict[str, list[str]]:
    """Per dataset: the collection counters (read by NanoEvents for every collection) then the branches
    the processor needs; empty (probe all) when the processor does not say."""
    out = {}
    for d in config.datasets:
        needs = list(required_branches(proc, d))
        counters = sorted({"n" + b.split("_", 1)[0] for b in needs if "_" in b})
        out[d.name] = counters + needs
    return out


# ---------------------------------------------------------------------------------------- run
@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (batch systems, ``kill``) ends a run like Ctrl-C does, so checkpoints and report stay."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(config: Config, proc: processor.ProcessorABC | None = None, *, checkpoint: str | Path | None = None,
        resume: bool = False) -> tuple[dict[str, Any], RunReport]:
    """Run the configured processor (or ``proc``) over all datasets; returns (post-processed output, report).

    Every finished chunk's output is kept under ``checkpoint`` (a temporary folder when None, removed
    at the end); with ``resume`` chunks already there are not run again. Chunk outputs are merged in
    config order (dataset, file, entry), so results do not depend on the executor or on interruptions.
    Workers of a remote dask cluster must see ``checkpoint`` (a shared file system).

    Raises :class:`RunFailed` (an :class:`InputError`) on an unreadable chunk without
    ``skip_bad_files`` and :class:`RunInterrupted` on SIGINT/SIGTERM; both carry the report.
    """
    proc = build_processor(config) if proc is None else proc
    with contextlib.ExitStack() as stack:
        executor, inspect_files = None, None
        if config.executor.name == "dask":  # the workers read the input trees, and keep them for their chunks
            executor = stack.enter_context(executor_for(config.executor))
            inspect_files = _inspect_on(executor.client)
        refreeze = stack.enter_context(_frozen_heap(executor.client if executor is not None else None))
        start = time.perf_counter()
        fileset, report = preflight(config, proc, inspect_files)
        runs_sums = None
        if hasattr(proc, "generator_sumw"):  # simulation normalised with the files' Runs trees
            from crema.workflows.normalisation import runs_tree_sums

            runs_sums = runs_tree_sums(config)
        report.timings["preflight"] = time.perf_counter() - start
        refreeze()  # the input trees preflight keeps open are left alone too
        if checkpoint is None:
            checkpoint = stack.enter_context(tempfile.TemporaryDirectory(prefix="crema-checkpoint-"))
            resume, resumable = False, False
        else:
            resumable = True
        chunk_dir = open_checkpoint(checkpoint, run_manifest(config, proc), resume)
        stack.enter_context(_sigterm_interrupts())
        stack.enter_context(_progress_bars(config.executor.progress))
        try:
            output = _run_chunks(config, proc, fileset, report, chunk_dir, runs_sums, executor)
        except KeyboardInterrupt:
            report.status = "interrupted"
            report.count_done(_done_keys(chunk_dir))
            raise RunInterrupted(report, resumable) from None
        except RunFailed:
            raise
        except Exception as err:  # the processor's own error: propagates, with the report attached
            report.status, report.error = "failed", _one_line(err)
            report.count_done(_done_keys(chunk_dir))
            err.crema_report = report
            raise
    return output, report


@contextlib.contextmanager
def _progress_bars(shown: bool) -> Iterator[None]:
    """Without ``progress``, coffea's console is muted for the run: coffea 2026.9 draws the iterative and
    futures executors' progress bars whatever their ``status`` says (the iterative executor hands it to
    rich as a task field, the futures executor never reads it)."""
    from coffea.util import coffea_console

    if shown:
        yield
        return
    quiet, coffea_console.quiet = coffea_console.quiet, True
    try:
        yield
    finally:
        coffea_console.quiet = quiet


@contextlib.contextmanager
def _frozen_heap(client=None) -> Iterator[Callable[[], None]]:
    """Objects alive before the run (imported libraries: ~250k) are left out of the garbage collector's
    full collections until it ends; each of those otherwise walks them all, about 0.15 s, several times
    a run (reading the input trees' metadata in preflight alone triggers some; pool workers forked
    meanwhile inherit this). With a dask ``client``, in its workers too (between two runs they hold no
    chunk). Yields a function that freezes what was made since (the kept trees)."""
    token = uuid.uuid4().hex

    def freeze() -> None:
        _freeze_for(token)
        if client is not None:
            client.run(_freeze_for, token)

    freeze()
    try:
        yield freeze
    finally:
        if client is not None:
            # a worker lost meanwhile has nothing to undo; one that cannot be reached keeps its pre-run
            # objects out of full collections (held, never wrong), and the run's own outcome matters more
            with contextlib.suppress(Exception):
                client.run(_unfreeze_for, token)
        _unfreeze_for(token)


_FROZEN_FOR: str | None = None  # the run that froze this process's heap


def _freeze_for(token: str) -> None:
    """``gc.freeze()`` for run ``token``, unless somebody else (the caller, an enclosing run) froze the
    heap: theirs to undo."""
    global _FROZEN_FOR
    if _FROZEN_FOR == token:
        # again (the kept trees): the run's garbage so far (the Runs trees read for normalisation, cyclic
        # uproot objects) is collected first, walking only what the run made, or it would stay frozen
        gc.collect()
    # get_freeze_count() walks the frozen objects (~20 ms for 300k): asked only when this run froze nothing
    elif gc.get_freeze_count():
        return
    gc.freeze()
    _FROZEN_FOR = token


def _unfreeze_for(token: str) -> None:
    global _FROZEN_FOR
    if _FROZEN_FOR == token:
        # the run's cyclic garbage is collected now, walking only what the run made: once unfrozen, the
        # next run would freeze it again and it would never be collected (measured: ~650 objects per run)
        gc.collect()
        gc.unfreeze()
        _FROZEN_FOR = None


def _run_chunks(config: Config, proc, fileset, report: RunReport, chunk_dir: Path,
                runs_sums: dict[str, dict[str, float]] | None = None,
                executor: processor.executor.ExecutorBase | None = None) -> dict[str, Any]:
    ex = config.executor
    order = {d.name: (i, {f: j for j, f in enumerate(report.datasets[d.name])}) for i, d in enumerate(config.datasets)}

    def position(item) -> tuple:
        ds, files = order[item.dataset]
        return ds, files.get(item.filename, len(files)), item.entrystart

    with contextlib.nullcontext(executor) if executor is not None else executor_for(ex) as executor:
        runner = processor.Runner(
            executor=executor,
            schema=NanoAODSchema,
            chunksize=ex.chunksize,
            skipbadfiles=BAD_FILE_ERRORS if ex.skip_bad_files else False,
            # this run's preflight read: coffea opens no file to preprocess, and its process-wide cache
            # (keyed by name only) cannot give a rewritten file's old entry count
            metadata_cache={FileMeta(*k): dict(m) for k, m in report.file_meta.items()},
        )
        # input trees read once per process, not once per chunk (see crema.workflows.opentrees)
        uproot_options = {"object_cache": OpenTrees.of(report.trees)}
        chunks = sorted(runner.preprocess(fileset, treename="Events", uproot_options=uproot_options), key=position)
        file_entries: dict[str, int] = defaultdict(int)  # the chunks of a file cover all of its entries
        for c in chunks:
            file_entries[c.filename] += c.entrystop - c.entrystart
        if ex.maxchunks is not None:  # the first maxchunks chunks of each dataset, in config order
            rank: dict[str, int] = defaultdict(int)
            kept = []
            for c in chunks:
                rank[c.dataset] += 1
                if rank[c.dataset] <= ex.maxchunks:
                    kept.append(c)
            chunks = kept
        keys = [_key(c) for c in chunks]
        report.chunks = [(k, c.filename, int(c.entrystart), int(c.entrystop)) for k, c in zip(keys, chunks)]
        report.total_chunks = len(chunks)
        expected: dict[str, int] = defaultdict(int)
        for chunk in chunks:
            expected[chunk.filename] += chunk.entrystop - chunk.entrystart
        report.expected = dict(expected)
        if not chunks and report.bad_files:
            report.status, report.error = "failed", "no input left: every input file was skipped as unreadable"
            raise RunFailed(report.error, report)
        done_before = _done_keys(chunk_dir) & set(keys)
        report.resumed_chunks = len(done_before)
        todo = [c for c, k in zip(chunks, keys) if k not in done_before]
        start = time.perf_counter()
        wrapper = CheckpointingProcessor(proc, chunk_dir, _probe_branches(proc, config))
        merge = OrderedMerge(chunk_dir, keys)
        # on dask the chunks run in the workers' processes: this one reads their outputs meanwhile.
        # Not beside the iterative executor (the chunks run in this process) nor the futures pool (it
        # forks its workers when the first chunk is submitted; a fork copies no thread but this one)
        follow = isinstance(executor, processor.DaskExecutor)
        with warnings.catch_warnings(), merge.following(follow):
            # coffea warns once per chunk it skips; crema reports them together in RunReport
            warnings.filterwarnings("ignore", message="Skipping bad file")
            try:
                acc = (runner(todo, wrapper, treename="Events", uproot_options=uproot_options) or {}) if todo else {}
            except Exception as err:
                if not any(isinstance(e, BAD_FILE_ERRORS) for e in _chain(err)):
                    raise
                # coffea's message names the work item (file and entry range) that failed
                report.status = "failed"
                report.error = f"reading a chunk failed: {err}; use --skip-bad-files to skip such chunks"
                report.count_done(_done_keys(chunk_dir))
                raise RunFailed(report.error, report) from err
    report.timings["processing"] = time.perf_counter() - start
    done = _done_keys(chunk_dir)
    unseen = set(acc.get("done", {})) - done
    if unseen:  # workers wrote them where this process cannot see (a remote cluster without a shared folder)
        raise InputError(f"{len(unseen)} chunk outputs the workers wrote are not in {chunk_dir}: the workers and "
                         "this process must share that folder (on a remote dask cluster, crema run -o on a "
                         "shared file system)")
    report.count_done(done)
    bad = acc.get("bad_chunks", {})
    for chunk, key in zip(chunks, keys):
        if key in done:
            continue
        # not done: its read error, or coffea skipped it (the file failed to open during the run)
        info = bad.get(key, {"branch": None, "error": "the file could not be opened during the run"})
        report.bad_chunks.append({"dataset": chunk.dataset, "file": chunk.filename, "entry_start": int(chunk.entrystart),
                                  "entry_stop": int(chunk.entrystop), "branch": info["branch"], "error": info["error"]})
    if report.bad_chunks and not ex.skip_bad_files:
        c = report.bad_chunks[0]
        where = f", branch {c['branch']!r}" if c["branch"] else ""
        report.status = "failed"
        report.error = (f"{c['file']}: entries {c['entry_start']}-{c['entry_stop']}{where} cannot be read "
                        f"({c['error']}); use --skip-bad-files to skip such chunks")
        raise RunFailed(report.error, report)
    if runs_sums is not None:
        from crema.workflows.normalisation import processed_sums

        processed: dict[str, int] = defaultdict(int)
        for chunk, key in zip(chunks, keys):
            if key in done:
                processed[chunk.filename] += chunk.entrystop - chunk.entrystart
        proc.generator_sumw = processed_sums(runs_sums, file_entries, processed)
    start = time.perf_counter()
    merged = merge.finish(done)
    output = proc.postprocess(merged if merged is not None else {})
    report.timings["merge"] = time.perf_counter() - start
    for name in ("nonfinite", "undefined", "normalisation"):
        if isinstance(output, dict) and name in output:
            report.extra[name] = output[name]
    return output
