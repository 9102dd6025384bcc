"""Fixed per-run and per-chunk costs: input trees kept open (reused only for the very file they were read
from) and the garbage collector leaving the pre-run heap alone."""

from __future__ import annotations

import gc
import os
import pickle
import shutil
import sys

import numpy as np
import pytest
import uproot

from crema.processors.hhbbww import HHbbWWProcessor
from crema.workflows import opentrees
from crema.workflows.opentrees import OpenTrees, open_tree


@pytest.fixture
def tree_file(tmp_path):
    path = tmp_path / "a.root"
    with uproot.recreate(path) as f:
        f.mktree("Events", {"x": np.float64})
        f["Events"].extend({"x": np.arange(10, dtype=np.float64)})
    return str(path)


def _cache(*paths) -> OpenTrees:
    """The cache a run over ``paths`` hands to coffea (each file inspected as preflight does)."""
    return OpenTrees.of([opentrees.inspect_tree(p, "Events")["record"] for p in paths])


@pytest.fixture(autouse=True)
def empty_store():
    opentrees._TREES.clear()
    yield
    opentrees._TREES.clear()


def test_a_second_open_of_the_file_takes_the_kept_tree(tree_file):
    kept = open_tree(tree_file, "Events")
    with uproot.open(tree_file, object_cache=_cache(tree_file)) as f:
        tree = f["Events"]
    assert tree is kept
    # read after that handle closed: the kept tree reads through its own open handle
    assert tree["x"].array(library="np").tolist() == list(range(10))


def test_a_copy_with_the_same_uuid_gets_its_own_tree(tree_file, tmp_path):
    copy = str(tmp_path / "copy.root")
    shutil.copy(tree_file, copy)
    open_tree(tree_file, "Events")
    open_tree(copy, "Events")
    with uproot.open(copy) as f, uproot.open(tree_file) as g:
        assert f.file.hex_uuid == g.file.hex_uuid
    # both in one run: their shared UUID cannot tell them apart, so neither is cached
    both = _cache(tree_file, copy)
    assert both.files == {}
    with uproot.open(copy, object_cache=both) as f:
        assert f["Events"].file.file_path == copy
    # the copy alone: its own tree, never the original's
    with uproot.open(copy, object_cache=_cache(copy)) as f:
        tree = f["Events"]
    assert tree.file.file_path == copy and not tree.file.closed


def test_a_file_changed_on_disk_is_read_again(tree_file):
    open_tree(tree_file, "Events")
    cache = _cache(tree_file)
    st = os.stat(tree_file)
    os.utime(tree_file, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with uproot.open(tree_file, object_cache=cache) as f:
        tree = f["Events"]
    assert all(t is not tree for t in opentrees._TREES.values())


def test_a_worker_reads_a_tree_it_lacks_once_on_its_own_handle(tree_file):
    open_tree(tree_file, "Events")
    cache = pickle.loads(pickle.dumps(_cache(tree_file)))  # as sent to a worker
    opentrees._TREES.clear()  # the worker's store starts empty
    with uproot.open(tree_file, object_cache=cache) as f:
        first = f["Events"]
    # not read through the caller's handle (closed after its chunk) but one kept open here
    assert not first.file.closed and list(opentrees._TREES.values()) == [first]
    with uproot.open(tree_file, object_cache=cache) as f:
        second = f["Events"]
    assert second is first
    assert second["x"].array(library="np").sum() == 45


def test_other_objects_of_an_input_file_are_not_kept(tmp_path):
    path = str(tmp_path / "two.root")
    with uproot.recreate(path) as f:
        f.mktree("Events", {"x": np.float64})
        f.mktree("Runs", {"y": np.float64})
    open_tree(path, "Events")
    cache = _cache(path)
    opentrees._TREES.clear()
    with uproot.open(path, object_cache=cache) as f:
        runs = f["Runs"]
    assert runs.name == "Runs" and not opentrees._TREES


def test_an_unreadable_file_is_left_to_the_callers_own_read(tree_file, monkeypatch):
    open_tree(tree_file, "Events")
    cache = _cache(tree_file)
    opentrees._TREES.clear()

    def fail(*args):
        raise OSError("no")

    monkeypatch.setattr(opentrees, "_open", fail)
    with pytest.raises(KeyError):
        cache[next(iter(cache.files.values()))[3]]


def test_the_store_is_bounded(tmp_path):
    paths = []
    for i in range(opentrees.MAX_OPEN + 3):
        path = tmp_path / f"f{i}.root"
        with uproot.recreate(path) as f:
            f.mktree("Events", {"x": np.float64})
        paths.append(str(path))
        open_tree(paths[-1], "Events")
    assert len(opentrees._TREES) == opentrees.MAX_OPEN
    kept = {k[1] for k in opentrees._TREES}
    assert kept == set(paths[-opentrees.MAX_OPEN:])


def test_the_store_is_bounded_by_branches(tmp_path, monkeypatch):
    """Kept trees are bounded by their branches (what their metadata costs) as well: trees of 5 branches
    under a budget of 12 keep two; a tree over the budget alone is still kept (the file being read)."""
    monkeypatch.setattr(opentrees, "MAX_BRANCHES", 12)
    paths = []
    for i in range(4):
        path = tmp_path / f"f{i}.root"
        with uproot.recreate(path) as f:
            f.mktree("Events", {f"x{j}": np.float64 for j in range(5 if i < 3 else 20)})
        paths.append(str(path))
        open_tree(paths[-1], "Events")
        if i == 2:
            assert [k[1] for k in opentrees._TREES] == paths[1:3]
    assert [k[1] for k in opentrees._TREES] == paths[3:]


def test_a_run_reads_each_input_tree_once(tmp_path, monkeypatch):
    """coffea opens the file once to preprocess and once per chunk: all of them take the tree
    preflight read (a miss would store a tree read by another handle)."""
    from conftest import REAL_NANO
    from test_run import write_config

    from crema.workflows.config import load_config
    from crema.workflows.run import run

    misses = []
    store = OpenTrees.__setitem__
    monkeypatch.setattr(OpenTrees, "__setitem__", lambda self, k, v: (misses.append(k), store(self, k, v)))
    reference, _ = run(load_config(write_config(tmp_path, [REAL_NANO], chunksize=64, maxchunks=3)))
    assert misses == []
    # the same run with every tree read anew (nothing kept) gives the same histograms
    opentrees._TREES.clear()
    monkeypatch.setattr(opentrees, "_keep", lambda ident, key, tree: None)
    again, report = run(load_config(write_config(tmp_path, [REAL_NANO], chunksize=64, maxchunks=3)))
    assert report.processed_chunks == 3 and not opentrees._TREES
    assert reference["cutflow"] == again["cutflow"] and reference["histograms"].keys() == again["histograms"].keys()
    for name, h in reference["histograms"].items():
        assert np.array_equal(h.values(flow=True), again["histograms"][name].values(flow=True)), name
        assert np.array_equal(h.variances(flow=True), again["histograms"][name].variances(flow=True)), name


def test_more_files_than_kept_trees_read_the_first_ones_once(tmp_path, monkeypatch):
    """Preflight reads the files last to first, so the trees it leaves open are those the chunks need
    first: with MAX_OPEN kept trees, a run over N > MAX_OPEN files reads N + (N - MAX_OPEN) trees, not 2N
    (the chunks, in config order, would otherwise find each tree dropped just before), and a later run in
    the same process 2 (N - MAX_OPEN), not 2N."""
    from test_run import write_config, write_subset

    from crema.workflows.config import load_config
    from crema.workflows.run import run

    files = [write_subset(tmp_path / f"f{i}.root", entry_stop=40 + i) for i in range(3)]
    monkeypatch.setattr(opentrees, "MAX_OPEN", 2)
    reads = []
    read = opentrees._open
    monkeypatch.setattr(opentrees, "_open", lambda path, *a: (reads.append(os.path.basename(path)), read(path, *a))[1])
    config = load_config(write_config(tmp_path, files, chunksize=64))
    _, report = run(config)
    assert report.processed_chunks == 3
    assert reads == ["f2.root", "f1.root", "f0.root", "f2.root"]
    # a second run in this process: preflight finds f2 and f1 kept, and what it uses counts as a use (f2
    # then goes first): 2 (N - MAX_OPEN) reads per run
    reads.clear()
    run(config)
    assert reads == ["f0.root", "f2.root"]


FREEZE_COUNTS: list[int] = []


class Recording(HHbbWWProcessor):
    """Records gc's freeze count per chunk (module level: coffea pickles the processor by reference for
    each chunk, in this process or a dask worker's, so the records land in that process's FREEZE_COUNTS)."""

    def process(self, events):
        FREEZE_COUNTS.append(gc.get_freeze_count())
        return super().process(events)


def _recording(proc):
    assert type(proc) is HHbbWWProcessor
    proc.__class__ = Recording
    return proc


def test_the_pre_run_heap_is_frozen_only_while_a_run_lasts(tmp_path):
    from conftest import REAL_NANO
    from test_run import write_config

    from crema.workflows.config import load_config
    from crema.workflows.run import build_processor, run

    config = load_config(write_config(tmp_path, [REAL_NANO], chunksize=64, maxchunks=1))
    proc = _recording(build_processor(config))
    assert gc.get_freeze_count() == 0
    run(config, proc)
    assert FREEZE_COUNTS and FREEZE_COUNTS[0] > 1000  # the imported libraries at least
    assert gc.get_freeze_count() == 0
    # a caller's own freeze is left as it is
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        run(config, proc)
        assert gc.get_freeze_count() > 0.9 * frozen  # not unfrozen by the run (a few frozen objects freed)
    finally:
        gc.unfreeze()


def test_runs_leave_no_garbage_frozen(tmp_path):
    """Garbage a run makes (the cyclic uproot objects of the Runs trees read for normalisation...) is
    collected before the heap is frozen again: else each run's garbage stayed frozen in the next run,
    and the next, never collected (~650 objects per run)."""
    from conftest import REAL_NANO
    from test_run import write_config

    from crema.workflows.config import load_config
    from crema.workflows.run import run

    config = load_config(write_config(tmp_path, [REAL_NANO], chunksize=64, maxchunks=2))
    run(config)
    run(config)  # caches filled
    counts = []
    for _ in range(3):
        run(config)
        counts.append(len(gc.get_objects()))
    assert counts[-1] - counts[0] < 50, counts


def test_dask_workers_freeze_their_heap_only_while_a_run_lasts(tmp_path):
    """A worker process lives across runs: without this, full collections walked its whole heap (one of
    0.16-0.18 s in two of three 500k-event runs)."""
    from conftest import REAL_NANO
    from distributed import Client
    from test_run import write_config

    from crema.workflows.config import load_config
    from crema.workflows.run import build_processor, local_cluster, run

    config = load_config(write_config(tmp_path, [REAL_NANO], chunksize=64, maxchunks=2))
    proc = _recording(build_processor(config))
    with local_cluster(1) as cluster, Client(cluster) as client:
        run(config.with_executor(name="dask", scheduler=cluster.scheduler_address), proc)
        counts = list(client.run(lambda: list(sys.modules[__name__].FREEZE_COUNTS)).values())[0]
        assert len(counts) == 2 and min(counts) > 1000  # the worker's imported libraries at least
        assert set(client.run(gc.get_freeze_count).values()) == {0}
    assert gc.get_freeze_count() == 0


def test_a_kept_tree_holds_no_arrays_or_mapped_pages(tree_file):
    tree = open_tree(tree_file, "Events")
    tree["x"].array()
    assert tree.file.array_cache is None  # uproot's default keeps up to 100 MB of arrays per open file
    assert not isinstance(tree.file.source, uproot.source.file.MemmapSource)  # pages read would stay resident


def _forked_lookup(cache, key, parents, queue):
    """In a forked child: whose tree the lookup under the parent's cache key returns."""
    tree = cache[key]
    queue.put("parent's" if tree is parents else f"own, sum {tree['x'].array(library='np').sum():.0f}")


def test_a_forked_worker_does_not_use_the_parents_handle(tree_file):
    """A process forked after the parent kept a tree must open its own: two processes reading through
    one inherited file descriptor share its offset and read each other's bytes."""
    import multiprocessing

    kept = open_tree(tree_file, "Events")
    key = next(k[-1] for k in opentrees._TREES if k[1] == tree_file)
    assert _cache(tree_file)[key] is kept  # this process finds it
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_forked_lookup, args=(_cache(tree_file), key, kept, queue))
    child.start()
    child.join(60)
    assert queue.get(timeout=10) == "own, sum 45"


def test_a_rewritten_input_is_chunked_by_its_new_entries(tmp_path):
    """coffea keeps each file's entry count in a process-wide cache keyed by name; a run takes the count
    its own preflight read, so a file rewritten between two runs of one process is read whole."""
    from test_run import write_config, write_subset

    from crema.workflows.config import load_config
    from crema.workflows.run import run

    path = tmp_path / "in.root"
    write_subset(path, entry_stop=100)
    config = load_config(write_config(tmp_path, [path], chunksize=64))
    assert sum(run(config)[1].processed.values()) == 100
    opentrees._TREES.clear()
    write_subset(path, entry_stop=150)
    _, report = run(config)
    assert report.expected == report.processed == {str(path): 150}


def test_inspecting_a_kept_tree_reads_nothing_again(tree_file, monkeypatch):
    first = opentrees.inspect_tree(tree_file, "Events")
    assert first["entries"] == 10 and first["branches"] == ["x"] and first["size"] >= first["end"]

    def fail(*args):
        raise AssertionError("opened again")

    monkeypatch.setattr(opentrees, "_open", fail)
    again = opentrees.inspect_tree(tree_file, "Events")
    assert again == first
    assert OpenTrees.of([again["record"]]).files == _cache(tree_file).files


def test_outputs_are_merged_in_run_order_while_chunks_run(tmp_path):
    """On dask the run reads chunk outputs as they are written, in run order: nothing past an output not
    yet written (a chunk still running, or never written: a bad chunk), and the sum is the one
    ``accumulate`` gives over the done outputs in that order, bit for bit."""
    import time

    import hist
    from coffea import processor

    from crema.histograms import io as store
    from crema.workflows.run import OrderedMerge

    rng = np.random.default_rng(3)
    keys = [f"k{i}" for i in range(5)]
    outs = {}
    for k in keys:
        h = hist.Hist(hist.axis.Regular(10, 0, 1, name="x"), storage=hist.storage.Weight())
        h.fill(x=rng.random(200), weight=rng.lognormal(0, 3, 200))  # sums that depend on their order
        outs[k] = {"h": h, "n": {"a": 1}, "files": {k}}

    def wait_for(merge, n):
        deadline = time.monotonic() + 10
        while merge.next < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return merge.next

    merge = OrderedMerge(tmp_path, keys)
    with merge.following():
        store.save(outs["k1"], tmp_path / "k1.npz")
        time.sleep(3 * OrderedMerge.POLL_S)
        assert merge.next == 0  # k0 first
        store.save(outs["k0"], tmp_path / "k0.npz")
        assert wait_for(merge, 2) == 2
        store.save(outs["k3"], tmp_path / "k3.npz")  # k2 is never written
        time.sleep(3 * OrderedMerge.POLL_S)
        assert merge.next == 2
        store.save(outs["k4"], tmp_path / "k4.npz")
    done = {"k0", "k1", "k3", "k4"}
    total = merge.finish(done)
    expected = processor.accumulate(store.load(tmp_path / f"{k}.npz") for k in keys if k in done)
    assert np.array_equal(total["h"].values(flow=True), expected["h"].values(flow=True))
    assert np.array_equal(total["h"].variances(flow=True), expected["h"].variances(flow=True))
    assert total["n"] == {"a": 4} and total["files"] == done

    one = OrderedMerge(tmp_path, keys)  # a single output is returned as read
    assert one.finish({"k3"})["files"] == {"k3"}

    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "k0.npz").write_bytes(b"not a crema file")
    broken = OrderedMerge(tmp_path / "bad", keys)
    with broken.following():
        time.sleep(3 * OrderedMerge.POLL_S)
    with pytest.raises(ValueError, match="k0.npz"):  # the reading thread's error, raised to the run
        broken.finish({"k0"})
