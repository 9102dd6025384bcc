"""Input trees kept open per process, so a file's branch metadata is read once per run, not once per chunk.

coffea opens the input file again for every chunk (and once more to preprocess it), and uproot then
deserialises the whole ``TTree`` with all its ``TBranch`` objects each time: 0.1 s CPU for a generated
NanoAOD file of 278 branches (a full NanoAOD has ~1,500), as much as processing 5-10k events. :class:`OpenTrees` is handed to those ``uproot.open`` calls
as their ``object_cache`` (an uproot option): a tree of an input file is then read once per process and
thread, attached to a file handle kept open here, and later opens of that file take it from here.

A cached tree is only returned for the file it was read from: entries are keyed by path, size and
modification time as well as by uproot's key (the file's UUID, which a copied file shares with its
original), and only for the files of the current run (:meth:`OpenTrees.of`).

A process keeps a bounded number of trees (``MAX_OPEN`` files, ``MAX_BRANCHES`` branches), the least
recently used dropped first. A run's preflight reads its files last to first, so with more files than
that the trees left open are those of the first files the chunks read: with K trees kept, N + (N - K)
tree reads in a run over N files and 2 (N - K) in a later run in the same process, where reading in
config order gave 2N in both.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, MutableMapping
from typing import Any

import uproot

# Kept per process, the least recently used dropped first (its file closes with it): at most MAX_OPEN
# trees (open files) and MAX_BRANCHES branches, the branches being what costs memory (~10 kB of metadata
# each: 2.8 MB for a generated file's 278, 6.4 MB for the 654 of the real NanoAOD test file), so about 8
# full NanoAOD trees of ~1,700 branches or 50 generated ones. The last tree read is always kept.
MAX_OPEN = 64
MAX_BRANCHES = 14_000

_LOCK = threading.Lock()
# ((process, thread), path, size, mtime_ns, uproot cache key) -> tree attached to a handle opened here
_TREES: OrderedDict[tuple, Any] = OrderedDict()
_BRANCHES: dict[tuple, int] = {}  # key in _TREES -> the number of branches of its tree
# (path, size, mtime_ns) -> uproot's cache key of the kept tree (the file's UUID, then the tree's place
# in it) and the tree's path, for files opened here
_KEPT: dict[tuple[str, int, int], tuple[str, str]] = {}


def _owner() -> tuple[int, int]:
    """The process and thread a kept handle belongs to. The process matters: a worker forked from the
    process that kept a handle inherits it, and two processes reading through one file descriptor
    share its offset (each read seeks, then reads: interleaved, they read each other's bytes)."""
    return os.getpid(), threading.get_ident()


def _identity(path: str) -> tuple[str, int, int] | None:
    """(path, size, mtime_ns) of a local file; None for a remote one (not kept open here)."""
    if "://" in path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return path, st.st_size, st.st_mtime_ns


def _keep(ident: tuple[str, int, int], cache_key: str, tree) -> tuple:
    key = (_owner(), *ident, cache_key)
    branches = len(tree.keys())
    with _LOCK:
        _TREES[key] = tree
        _TREES.move_to_end(key)
        _BRANCHES[key] = branches
        _KEPT[ident] = cache_key, tree.object_path
        while len(_TREES) > 1 and (len(_TREES) > MAX_OPEN
                                   or sum(_BRANCHES.get(k, 0) for k in _TREES) > MAX_BRANCHES):
            _BRANCHES.pop(_TREES.popitem(last=False)[0], None)
    return key


def open_tree(path: str, treename: str):
    """``uproot.open(path)[treename]``, its file left open and the tree kept for later opens of ``path``
    in this run (see :class:`OpenTrees`). The caller does not close it."""
    ident = _identity(path)
    tree, _ = _open(path, treename, ident)
    return tree


def _open(path: str, treename: str, ident: tuple[str, int, int] | None):
    """The tree and the key uproot caches it under (the file's UUID and the tree's place in it)."""
    # plain reads, no array cache: a memory map would keep every page read resident (RSS grows with
    # each chunk read through the kept handle) and uproot's default array cache up to 100 MB per file
    f = uproot.open(path, object_cache=None, array_cache=None, handler=uproot.source.file.MultithreadedFileSource,
                    use_threads=False)
    try:
        key = f.key(treename)
        tree = key.get()
    except BaseException:
        f.close()
        raise
    if ident is not None and isinstance(tree, uproot.behaviors.TTree.TTree):
        _keep(ident, key.cache_key, tree)
    return tree, key.cache_key


def inspect_tree(path: str, treename: str) -> dict[str, Any]:
    """What a run's preflight needs of an input file's tree: entries, branch names, the file's size and
    the size its header states, its UUID, and the record :meth:`OpenTrees.of` keeps it by.

    Read on a handle kept open in this process (see :func:`open_tree`); a tree this process and thread
    already keep for the unchanged file is used as it is, so a warm worker reads nothing again.
    """
    ident = _identity(path)
    tree = _kept_tree(ident, treename) if ident is not None else None
    if tree is None:
        tree = open_tree(path, treename)
    seen = _KEPT.get(ident) if ident is not None else None
    return {"entries": tree.num_entries, "branches": list(tree.keys()), "size": tree.file.source.num_bytes,
            "end": tree.file.fEND, "uuid": tree.file.fUUID,
            "record": None if seen is None else (*ident, *seen)}


def _kept_tree(ident: tuple[str, int, int], treename: str):
    seen = _KEPT.get(ident)
    if seen is None or seen[1].lstrip("/").split(";")[0] != treename.lstrip("/").split(";")[0]:
        return None
    key = (_owner(), *ident, seen[0])
    with _LOCK:
        tree = _TREES.get(key)
        if tree is not None:  # used now: the last to be dropped
            _TREES.move_to_end(key)
        return tree


class OpenTrees(MutableMapping):
    """uproot ``object_cache`` returning the trees of this run's input files from handles kept open.

    ``files`` maps a file's UUID to (path, size, mtime_ns, the tree's cache key, the tree's path); a UUID
    two input files share is left out (nothing of those files is cached). Other objects are not cached. Pickles to its ``files``
    only, so dask and process-pool workers fill their own store: a worker asked for a tree it has not
    kept reads it on a handle of its own, once, and its later chunks of that file (in this run or the
    next over the same files) take it from there.
    """

    def __init__(self, files: dict[str, tuple[str, int, int, str, str]]) -> None:
        self.files = dict(files)

    @classmethod
    def of(cls, records: Iterable[tuple[str, int, int, str, str]]) -> OpenTrees:
        """The cache for a run over the files :func:`inspect_tree` returned ``record`` for (wherever it ran)."""
        by_uuid: dict[str, list[tuple[str, int, int, str, str]]] = {}
        for record in dict.fromkeys(records):
            by_uuid.setdefault(record[3].split(":", 1)[0], []).append(record)
        return cls({u: found[0] for u, found in by_uuid.items() if len(found) == 1})

    def __reduce__(self):
        return type(self), (self.files,)

    def _key(self, key: str) -> tuple | None:
        ident = self.files.get(key.split(":", 1)[0]) if isinstance(key, str) else None
        return None if ident is None else (_owner(), *ident[:3], key)

    def __getitem__(self, key: str):
        k = self._key(key)
        if k is None or _identity(k[1]) != k[1:4]:  # not an input of this run, or changed on disk since it started
            raise KeyError(key)
        with _LOCK:
            tree = _TREES.get(k)
            if tree is not None:
                _TREES.move_to_end(k)
                return tree
        _, _, _, tree_key, tree_path = self.files[key.split(":", 1)[0]]
        if key != tree_key:  # another object of the file
            raise KeyError(key)
        # not kept in this process and thread (a worker's first chunk of the file): read it on a handle
        # kept open here instead of the caller's, which closes after the chunk; if that fails, the
        # caller's own read reports it
        try:
            tree, kept = _open(k[1], tree_path, k[1:4])
        except Exception:
            raise KeyError(key) from None
        if kept != key:  # replaced since the run started: not the file of this run
            _drop((_owner(), *k[1:4], kept))
            raise KeyError(key)
        return tree

    def __setitem__(self, key: str, value) -> None:
        """Trees this store can keep are read through :meth:`__getitem__`: nothing to add."""

    def __delitem__(self, key: str) -> None:
        k = self._key(key)
        if k is not None:
            _drop(k)

    def __iter__(self) -> Iterator[str]:
        return iter([])

    def __len__(self) -> int:
        return 0


def _drop(k: tuple) -> None:
    with _LOCK:
        _TREES.pop(k, None)
        _BRANCHES.pop(k, None)
