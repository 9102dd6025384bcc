"""A timing proxy for a model wrapper that survives coffea's pickling of the processor.

coffea's Runner ships a pickled copy of the processor even to the iterative executor, so counters
on the proxy itself would stay behind; they live in this module's :data:`STATS` instead (one
process: the iterative executor). This module is importable, so the proxy's class is pickled by
reference and every copy adds to the same dictionary.
"""

from __future__ import annotations

import time

#: label -> {"seconds": float, "jets": int, "calls": int}
STATS: dict[str, dict[str, float]] = {}


class Timed:
    """Calls ``model(jets, events)`` and adds its time and number of output jets to ``STATS[label]``."""

    def __init__(self, model, label: str) -> None:
        self.model = model
        self.label = label
        STATS[label] = {"seconds": 0.0, "jets": 0, "calls": 0}

    def __call__(self, jets, events):
        import awkward as ak

        start = time.perf_counter()
        out = self.model(jets, events)
        stats = STATS[self.label]
        stats["seconds"] += time.perf_counter() - start
        stats["jets"] += int(ak.sum(ak.num(out, axis=1)))
        stats["calls"] += 1
        return out

    def required_branches(self):
        return self.model.required_branches()
