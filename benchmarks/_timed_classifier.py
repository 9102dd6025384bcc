"""A timing proxy for the processor's classifier that survives coffea's pickling of the processor.

cloudpickle copies classes of ``__main__`` by value, so the proxy and its counters live in this
importable module (pickled by reference); with the iterative executor every copy adds to :data:`STATS`.
"""

from __future__ import annotations

import time

#: seconds and events spent in the classifier step
STATS = {"seconds": 0.0, "events": 0}


class TimedClassifier:
    """Wraps the processor's classifier; adds the time of each ``score`` call to :data:`STATS`."""

    def __init__(self, model) -> None:
        self.model = model

    def score(self, observables, event, channel=None):
        start = time.process_time()
        out = self.model.score(observables, event, channel)
        STATS["seconds"] += time.process_time() - start
        STATS["events"] += len(event)
        return out
