"""What counts as a usable input value: finite, and for kinematics inside a physical range.

One definition serves the object selection (objects whose kinematics fail it are dropped), the
``finite MET`` step, the MET propagation of the jet corrections and the per-branch count of bad
inputs a processor reports (``out["nonfinite"]``). Values beyond the range are not physics: a
transverse momentum, mass or energy above 100 TeV or a pseudorapidity beyond 10 comes from a
damaged basket (an uncompressed one has no checksum and can read as 8.8e37) or a broken producer.
"""

from __future__ import annotations

from collections.abc import Iterable

import awkward as ak
import numpy as np

MAX_ENERGY_GEV = 1e5
"""Largest |value| of a transverse momentum, mass or energy field (GeV)."""
MAX_ABS_ETA = 10.0
"""Largest |pseudorapidity|."""

#: NanoAOD field names (the part after ``Collection_``) that hold a momentum, mass or energy.
ENERGY_FIELDS = frozenset({"pt", "mass", "energy", "msoftdrop", "sumEt", "sumPtUnclustered", "ptRaw"})
#: NanoAOD field names that hold a pseudorapidity.
ETA_FIELDS = frozenset({"eta"})
#: The kinematics of a candidate; an object with any of them unphysical is unusable.
KINEMATICS = ("pt", "eta", "phi", "mass")


def limit(field: str) -> float:
    """The largest physical |value| of the NanoAOD field ``field`` (``inf``: only finiteness is required)."""
    if field in ENERGY_FIELDS:
        return MAX_ENERGY_GEV
    if field in ETA_FIELDS:
        return MAX_ABS_ETA
    return np.inf


def physical(values, field: str):
    """``True`` where ``values`` (numpy or awkward, any depth) of the field ``field`` are usable."""
    bound = limit(field)
    with np.errstate(invalid="ignore"):
        if bound == np.inf:
            return np.isfinite(values)
        return np.isfinite(values) & (abs(values) <= bound)


def physical_kinematics(objects: ak.Array, fields: Iterable[str] = KINEMATICS) -> ak.Array:
    """Per-object mask: every one of ``fields`` present in ``objects`` is :func:`physical`."""
    present = [f for f in fields if f in ak.fields(objects)]
    if not present:
        raise ValueError(f"none of the fields {', '.join(fields)} in {ak.fields(objects)}")
    if objects.ndim <= 2:
        # one numpy pass over the flat values instead of an awkward broadcast per operation
        # (per event and per object: the same booleans, a fraction of the time)
        flat = [_flat_numpy(objects[f]) for f in present]
        if all(v is not None for v in flat):
            mask = physical_values(dict(zip(present, flat)), present)
            return ak.Array(mask) if objects.ndim == 1 else ak.unflatten(mask, ak.num(objects, axis=1))
    mask = None
    for f in present:
        ok = physical(objects[f], f)
        mask = ok if mask is None else mask & ok
    return mask


def physical_values(values, fields: Iterable[str]) -> np.ndarray:
    """Per object: every one of ``fields`` of ``values`` (flat numpy by field name, e.g. a
    :class:`crema.flat.FlatFields`) is :func:`physical`."""
    fields = list(fields)
    mask = physical(values[fields[0]], fields[0])
    for f in fields[1:]:
        mask &= physical(values[f], f)
    return mask


def physical_flat(flat, fields: Iterable[str] = KINEMATICS) -> np.ndarray:
    """:func:`physical_kinematics` on a :class:`crema.flat.FlatFields` (flat numpy, the collection's order)."""
    present = [f for f in fields if f in flat.fields]
    if not present:
        raise ValueError(f"none of the fields {', '.join(fields)} in {flat.fields}")
    return physical_values(flat, present)


def _flat_numpy(values: ak.Array) -> np.ndarray | None:
    """The values of a flat or singly jagged array without missing entries as numpy; ``None`` otherwise."""
    try:
        flat = ak.flatten(values, axis=1) if values.ndim == 2 else values
        return np.asarray(ak.to_numpy(flat, allow_missing=False))
    except (ValueError, TypeError):
        return None


def count_unphysical(values, field: str) -> int:
    """How many entries of ``values`` (numpy or awkward) are not :func:`physical` for ``field``."""
    flat = values
    if isinstance(values, ak.Array):
        flat = ak.to_numpy(ak.flatten(values, axis=None)) if values.ndim > 1 else ak.to_numpy(values)
    flat = np.asarray(flat)
    if flat.dtype.kind not in "fc":  # integers and booleans are always finite and carry no kinematics
        return 0
    return int(flat.size - np.count_nonzero(physical(flat, field)))
