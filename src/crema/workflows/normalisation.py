"""Normalisation of simulation from the NanoAOD ``Runs`` tree (read once per run, not per chunk).

Real NanoAOD files carry a ``Runs`` tree whose ``genEventSumw`` is the sum of generator weights of
every event the file was made from, before any skim. Summed over all files of a dataset it is the
right denominator of xsec x luminosity / sum of weights, whatever share of the chunks a run processed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import uproot

RUNS_TREE = "Runs"
SUMW = "genEventSumw"


def runs_tree_sums(config: Any) -> dict[str, float]:
    """Per simulated dataset the Runs-tree ``genEventSumw`` summed over all of its files.

    A dataset is left out when one of its files has no such tree or cannot be read (it is then
    normalised with the processed genWeight sum, as the output's ``normalisation`` entry states).
    """
    sums: dict[str, float] = {}
    fileset = config.fileset()
    for dataset in config.datasets:
        if dataset.kind == "data":
            continue
        total = 0.0
        for path in fileset[dataset.name]["files"]:
            try:
                with uproot.open(path) as f:
                    if RUNS_TREE not in f or SUMW not in f[RUNS_TREE].keys():
                        break
                    total += float(np.sum(f[RUNS_TREE][SUMW].array(library="np"), dtype=np.float64))
            except Exception:  # an unreadable file: preflight reports or skips it
                break
        else:
            sums[dataset.name] = total
    return sums
