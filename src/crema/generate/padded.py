"""Helpers for padded (events x slots) arrays and their compaction into NanoAOD collections."""

from __future__ import annotations

import numpy as np


def order_and_select(valid: np.ndarray, pt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort columns by pt (descending) with ``valid`` ones first.

    Returns (order, new_index): ``order[i, k]`` is the old column of the k-th object,
    ``new_index[i, old]`` its index in the output collection (-1 if not kept).
    """
    n, k = valid.shape
    order = np.argsort(np.where(valid, -pt, np.inf), axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(k), (n, k)), axis=1)
    return order, np.where(valid, rank, -1)


def compact(valid: np.ndarray, order: np.ndarray, fields: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Flatten the valid entries of each (n, k) field in ``order``: (counts, flat fields)."""
    n, k = valid.shape
    keep = np.take_along_axis(valid, order, axis=1)
    # one flat index for all fields instead of a take_along_axis + mask per field
    idx = (order + (np.arange(n) * k)[:, None])[keep]
    flat = {name: np.broadcast_to(a, (n, k)).reshape(-1)[idx] for name, a in fields.items()}
    return keep.sum(axis=1), flat


def gather(a: np.ndarray, columns: np.ndarray, fill=0):
    """a[i, columns[i, j]] with ``fill`` where columns < 0."""
    safe = np.clip(columns, 0, None)
    return np.where(columns >= 0, np.take_along_axis(a, safe, axis=1), fill)


def local_index(counts: np.ndarray) -> np.ndarray:
    """Position of every flat entry within its event."""
    offsets = np.concatenate([[0], np.cumsum(counts)])
    return np.arange(offsets[-1]) - np.repeat(offsets[:-1], counts)
