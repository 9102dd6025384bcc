"""Collision-data-like events: the simulated events re-labelled as 2022 C-D collision data.

A data block keeps every reconstructed branch of the simulated one and drops what only simulation has
(``Gen*``, ``LHE*``, ``PSWeight``, ``Generator_*``, ``genWeight``, ``Pileup_*``, the generator-matching
indices and flavour labels). Run and lumi-section numbers come from the 2022 C-D runs of the shipped
golden JSON: every tenth lumi section (the 8th of each ten) is one the golden JSON does not certify,
so 10% of the lumi sections (and of the events, ``EVENTS_PER_LUMI`` each) fall outside it. MET filters
fail at rates like those of 2022 collision data. The HLT bits are those of the simulated event.
"""

from __future__ import annotations

import functools
import json
import zlib
from pathlib import Path

import numpy as np

from .events import Block

GOLDEN_JSON = Path(__file__).resolve().parent.parent / "data" / "lumi" / "Cert_Collisions2022_355100_362760_Golden.json"
RUN_RANGE = (355862, 357900)  # 2022 eras C and D
EVENTS_PER_LUMI = 100
UNCERTIFIED_EVERY, UNCERTIFIED_AT = 10, 7  # lumi section k is uncertified when k % 10 == 7
# per-filter failure rates in collision data (order of magnitude of 2022 prompt data)
DATA_FILTER_FAILURE = {
    "goodVertices": 0.0005,
    "globalSuperTightHalo2016Filter": 0.002,
    "EcalDeadCellTriggerPrimitiveFilter": 0.002,
    "BadPFMuonFilter": 0.0005,
    "BadPFMuonDzFilter": 0.001,
    "hfNoisyHitsFilter": 0.003,
    "eeBadScFilter": 0.0002,
    "ecalBadCalibFilter": 0.001,
}
MC_PREFIXES = ("Gen", "LHE", "PSWeight", "Generator_", "genWeight", "Pileup_")
MC_FIELDS = ("genPartIdx", "genPartFlav", "genJetIdx", "genJetAK8Idx", "hadronFlavour", "partonFlavour",
             "nBHadrons", "nCHadrons")


@functools.lru_cache(maxsize=1)
def lumi_sections() -> tuple[np.ndarray, np.ndarray]:
    """(certified, uncertified) (run, lumi) pairs of 2022 C-D, ordered by run and lumi section.

    Uncertified ones are the gaps between certified ranges and the ten sections after each run's last.
    """
    golden = json.loads(GOLDEN_JSON.read_text())
    good, bad = [], []
    for run in sorted(int(r) for r in golden):
        if not RUN_RANGE[0] <= run <= RUN_RANGE[1]:
            continue
        ranges = sorted(golden[str(run)])
        for i, (first, last) in enumerate(ranges):
            good.extend((run, ls) for ls in range(first, last + 1))
            gap_end = ranges[i + 1][0] if i + 1 < len(ranges) else last + 11
            bad.extend((run, ls) for ls in range(last + 1, gap_end))
    return np.array(good, dtype=np.uint32), np.array(bad, dtype=np.uint32)


def run_lumi(seed: int, first: int, n: int, process: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Run and lumi-section numbers of events [first, first + n) (a function of the event index only).

    The starting lumi section depends on ``seed`` and ``process``, so files of different processes
    do not share (run, lumi, event) numbers.
    """
    good, bad = lumi_sections()
    k = (first + np.arange(n, dtype=np.int64)) // EVENTS_PER_LUMI
    uncertified = k % UNCERTIFIED_EVERY == UNCERTIFIED_AT
    n_bad_before = k // UNCERTIFIED_EVERY + (k % UNCERTIFIED_EVERY > UNCERTIFIED_AT)
    start_good = zlib.crc32(f"good{process}{seed}".encode()) % len(good)
    start_bad = zlib.crc32(f"bad{process}{seed}".encode()) % len(bad)
    good_idx = (start_good + k - n_bad_before) % len(good)
    bad_idx = (start_bad + k // UNCERTIFIED_EVERY) % len(bad)
    pairs = np.where(uncertified[:, None], bad[bad_idx], good[good_idx])
    return pairs[:, 0], pairs[:, 1]


def as_data(block: Block, rng: np.random.Generator, seed: int, first: int, process: str = "") -> Block:
    """The collision-data version of a simulated block (see the module docstring)."""
    scalars = {k: v for k, v in block.scalars.items() if not k.startswith(MC_PREFIXES)}
    scalars["run"], scalars["luminosityBlock"] = run_lumi(seed, first, block.n, process)
    all_ok = np.ones(block.n, dtype=bool)
    for name, rate in DATA_FILTER_FAILURE.items():
        scalars[f"Flag_{name}"] = rng.uniform(size=block.n) >= rate
        all_ok &= scalars[f"Flag_{name}"]
    scalars["Flag_METFilters"] = all_ok
    collections = {
        name: (counts, {k: v for k, v in fields.items() if k not in MC_FIELDS})
        for name, (counts, fields) in block.collections.items()
        if not name.startswith(MC_PREFIXES)
    }
    return Block(scalars, collections)


__all__ = ["EVENTS_PER_LUMI", "as_data", "lumi_sections", "run_lumi"]
