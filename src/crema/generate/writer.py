"""Write generated events to a ROOT file with a NanoAODv12 ``Events`` tree (uproot)."""

from __future__ import annotations

import pathlib

import awkward as ak
import numpy as np
import uproot

from .processes import PROCESS_SPECS

from . import events as _events
from .eft import reweight_points_json
from .enrich import Enrichment
from .events import Block, block_to_records, check_process, generate_block, generate_blocks

# LZ4 keeps writing fast; the payload is dominated by float32 that zlib barely shrinks
COMPRESSION = uproot.LZ4(1)
CHUNK_SIZE = 100_000  # events per written chunk (about 0.8 GB peak memory)
PFNANO_CHUNK_SIZE = 20_000  # with ~90 PF candidates per event (about 1 GB)


# the Runs tree of real NanoAOD (one entry per run and job): generator event count and weight sums
RUNS_TYPES = {"run": np.uint32, "genEventCount": np.int64, "genEventSumw": np.float64, "genEventSumw2": np.float64}
# samples with a generator filter/bias (crema.generate.enrich): the filter's bookkeeping, as NanoAOD's GenFilter table
GENFILTER_TYPES = {"GenFilter_numEventsTotal": np.int64, "GenFilter_numEventsPassed": np.int64,
                   "GenFilter_filterEfficiency": np.float64}


def _chunks(blocks, size: int):
    """Join consecutive blocks into chunks of at least ``size`` events (the last may be smaller)."""
    pending: list[Block] = []
    n = 0
    for block in blocks:
        pending.append(block)
        n += block.n
        if n >= size:
            yield Block.concatenate(pending)
            pending, n = [], 0
    if pending:
        yield Block.concatenate(pending)


def _tree_types(pfnano: bool = False, theory_weights: bool = True, process: str = "dy", data: bool = False) -> dict:
    """Branch types for ``mktree``: dtypes for scalars, jagged record types for collections."""
    empty = block_to_records(generate_block(process, 0, seed=0, block=0, mass=800.0, pfnano=pfnano,
                                            theory_weights=theory_weights and not data, data=data))
    return {k: (v.type.content if isinstance(v, ak.Array) else v.dtype) for k, v in empty.items()}


def write_nanoaod(
    path,
    process: str,
    n_events: int,
    *,
    seed: int = 0,
    mass: float = 800.0,
    chunk_size: int | None = None,
    pfnano: bool = False,
    compression: uproot.compression.Compression | None = COMPRESSION,
    basket_size: int | None = None,
    theory_weights: bool = True,
    data: bool = False,
    enrich: Enrichment | None = None,
) -> pathlib.Path:
    """Generate ``n_events`` of ``process`` and write them to ``path`` as NanoAODv12.

    Events are generated and written chunk by chunk, so memory stays bounded by
    ``chunk_size`` (default 100 000 events, 20 000 with ``pfnano``).  Chunks are
    whole RNG blocks (``chunk_size`` is rounded down to a multiple of the block
    size, minimum one block), hence the file content does not depend on
    ``chunk_size``.  Each collection gets the single ``n<Coll>``
    int32 counter NanoAODSchema expects.  ``pfnano`` adds the PFNano tables
    (``PFCands``, ``JetPFCands``, ``SV``, ``JetSVs``; every other branch unchanged).
    ``compression`` is uproot's (default LZ4 level 1; ``uproot.LZMA(1)`` is CMS's usual one).
    Each written chunk is one basket per branch, or ``basket_size`` events per basket when given.
    ``theory_weights``: write ``LHEScaleWeight``, ``LHEPdfWeight``, ``PSWeight`` (False: a sample
    without them).
    ``data`` writes collision-data-like events (:mod:`crema.generate.data`: 2022 C-D run and
    lumi numbers, no generator branches); simulated files get a ``Runs`` tree (``run``,
    ``genEventCount``, ``genEventSumw``, ``genEventSumw2``) as real NanoAOD has.
    ``enrich`` (:mod:`crema.generate.enrich`): a generator-level filter and/or biased sampling;
    ``n_events`` are then the events written, the Runs tree counts every attempted event with its
    nominal weight (so the inclusive cross section normalises the file) and adds
    ``GenFilter_numEventsTotal``, ``GenFilter_numEventsPassed`` and ``GenFilter_filterEfficiency``.
    Returns the path written.
    """
    check_process(process, mass)
    if enrich and data:
        raise ValueError("a generator filter/bias applies to simulation only, not to data-like files")
    if n_events < 0:
        raise ValueError("n_events must be >= 0")
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if chunk_size is None:
        chunk_size = PFNANO_CHUNK_SIZE if pfnano else CHUNK_SIZE
    blocks_per_chunk = max(1, int(chunk_size) // _events.BLOCK_SIZE)
    with uproot.recreate(path, compression=compression) as f:
        tree = f.mktree("Events", _tree_types(pfnano, theory_weights, process, data), counter_name=lambda c: "n" + c)
        if PROCESS_SPECS[process].incoming == "eft" and not data:  # the WC values of LHEReweightingWeight[k]
            f["EFTReweightPoints"] = reweight_points_json()
        sums = np.zeros(3)  # attempted events, sum of weights, sum of squares
        passed = np.zeros(2)  # written events, sum of their weights
        blocks = generate_blocks(process, n_events, seed=seed, mass=mass, pfnano=pfnano,
                                 theory_weights=theory_weights and not data, data=data, enrich=enrich)
        for chunk in _chunks(blocks, blocks_per_chunk * _events.BLOCK_SIZE):
            records = block_to_records(chunk)
            if chunk.n and not basket_size:
                tree.extend(records)
            elif chunk.n:
                for i in range(0, chunk.n, basket_size):
                    tree.extend({k: v[i:i + basket_size] for k, v in records.items()})
            if not data:
                w = chunk.scalars["genWeight"].astype(np.float64)
                passed += (chunk.n, w.sum())
                sums += chunk.generated if chunk.generated is not None else (chunk.n, w.sum(), (w * w).sum())
        if not data:
            runs = f.mktree("Runs", {**RUNS_TYPES, **(GENFILTER_TYPES if enrich else {})})
            entry = {"run": np.array([1], np.uint32), "genEventCount": np.array([sums[0]], np.int64),
                     "genEventSumw": sums[1:2], "genEventSumw2": sums[2:3]}
            if enrich:
                entry.update({"GenFilter_numEventsTotal": np.array([sums[0]], np.int64),
                              "GenFilter_numEventsPassed": np.array([passed[0]], np.int64),
                              "GenFilter_filterEfficiency": np.array([passed[1] / sums[1] if sums[1] else 0.0])})
            runs.extend(entry)
    return path


__all__ = ["write_nanoaod"]
