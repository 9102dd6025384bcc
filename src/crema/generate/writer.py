"""Write generated events to a ROOT file with a NanoAODv12 ``Events`` tree (uproot)."""

from __future__ import annotations

import pathlib

import awkward as ak
import numpy as np
import uproot

from .processes import PROCESS_SPECS

from . import events as _events
from .eft import reweight_points_json
from .events import Block, block_to_records, check_process, generate_block, generate_blocks

# LZ4 keeps writing fast; the payload is dominated by float32 that zlib barely shrinks
COMPRESSION = uproot.LZ4(1)
CHUNK_SIZE = 100_000  # events per written chunk (about 0.8 GB peak memory)
PFNANO_CHUNK_SIZE = 20_000  # with ~90 PF candidates per event (about 1 GB)


# the Runs tree of real NanoAOD (one entry per run and job): generator event count and weight sums
RUNS_TYPES = {"run": np.uint32, "genEventCount": np.int64, "genEventSumw": np.float64, "genEventSumw2": np.float64}


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
    Returns the path written.
    """
    check_process(process, mass)
    if n_events < 0:
        raise ValueError("n_events must be >= 0")
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if chunk_size is None:
        chunk_size = PFNANO_CHUNK_SIZE if pfnano else CHUNK_SIZE
    blocks_per_chunk = max(1, int(chunk_size) // _events.BLOCK_SIZE)
    n_blocks = -(-n_events // _events.BLOCK_SIZE)
    with uproot.recreate(path, compression=compression) as f:
        tree = f.mktree("Events", _tree_types(pfnano, theory_weights, process, data), counter_name=lambda c: "n" + c)
        if PROCESS_SPECS[process].incoming == "eft" and not data:  # the WC values of LHEReweightingWeight[k]
            f["EFTReweightPoints"] = reweight_points_json()
        sums = np.zeros(2)
        for start in range(0, n_blocks, blocks_per_chunk):
            chunk = Block.concatenate(
                list(
                    generate_blocks(
                        process, n_events, seed=seed, mass=mass, start_block=start, n_blocks=blocks_per_chunk, pfnano=pfnano,
                        theory_weights=theory_weights and not data, data=data,
                    )
                )
            )
            records = block_to_records(chunk)
            if not basket_size:
                tree.extend(records)
            else:
                n = len(next(iter(records.values())))
                for i in range(0, n, basket_size):
                    tree.extend({k: v[i:i + basket_size] for k, v in records.items()})
            if not data:
                w = chunk.scalars["genWeight"].astype(np.float64)
                sums += (w.sum(), (w * w).sum())
        if not data:
            runs = f.mktree("Runs", RUNS_TYPES)
            runs.extend({"run": np.array([1], np.uint32), "genEventCount": np.array([n_events], np.int64),
                         "genEventSumw": sums[:1], "genEventSumw2": sums[1:]})
    return path


__all__ = ["write_nanoaod"]
