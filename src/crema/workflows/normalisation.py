"""Normalisation of simulation from the NanoAOD ``Runs`` tree (read once per run, not per chunk).

Real NanoAOD files carry a ``Runs`` tree whose ``genEventSumw`` is the sum of generator weights of
every event the file was made from, before any skim or generator filter. Summed over the files of a
dataset it is the denominator of xsec x luminosity / sum of weights. A file a run processed only in
part (``--maxchunks``, skipped chunks) counts with the share of its entries processed, a file not
processed at all (skipped as unreadable) not at all, so a partial run's yields are not scaled down.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import uproot

RUNS_TREE = "Runs"
SUMW = "genEventSumw"


def runs_tree_sums(config: Any) -> dict[str, dict[str, float]]:
    """Per simulated dataset the Runs-tree ``genEventSumw`` of each of its files.

    A dataset is left out when one of its files has no such tree or cannot be read (it is then
    normalised with the processed genWeight sum, as the output's ``normalisation`` entry states).
    """
    sums: dict[str, dict[str, float]] = {}
    fileset = config.fileset()
    for dataset in config.datasets:
        if dataset.kind == "data":
            continue
        per_file: dict[str, float] = {}
        for path in fileset[dataset.name]["files"]:
            try:
                with uproot.open(path) as f:
                    if RUNS_TREE not in f or SUMW not in f[RUNS_TREE].keys():
                        break
                    per_file[path] = float(np.sum(f[RUNS_TREE][SUMW].array(library="np"), dtype=np.float64))
            except Exception:  # an unreadable file: preflight reports or skips it
                break
        else:
            sums[dataset.name] = per_file
    return sums


def processed_sums(per_file: dict[str, dict[str, float]], entries: dict[str, int],
                   processed: dict[str, int]) -> dict[str, float]:
    """Per dataset the Runs-tree sum of weights of what a run processed: each file's ``genEventSumw``
    times the share of its ``entries`` that were ``processed`` (1 for a complete file, 0 for a file
    never read)."""
    out = {}
    for dataset, files in per_file.items():
        total = 0.0
        for path, sumw in files.items():
            total += sumw * (processed.get(path, 0) / entries[path]) if entries.get(path) else 0.0
        out[dataset] = total
    return out
