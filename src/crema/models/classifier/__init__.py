"""Signal-vs-background discriminants under one protocol (:class:`~crema.models.classifier.base.Method`).

``cut`` (:class:`CutAndCount`), ``bdt`` (:class:`BDT`, xgboost) and ``mlp`` (:class:`MLP`, torch:
imported only when used, so crema works without the ``[train]`` extra). Metrics live in
:mod:`crema.models.classifier.metrics`, k-fold training in :mod:`crema.models.classifier.folds`,
the in-processor evaluation in :mod:`crema.models.classifier.inference`.
"""

from __future__ import annotations

import importlib

from crema.models.classifier.base import Method, read_meta

#: method name -> "module:class"
METHODS = {"cut": "cut:CutAndCount", "bdt": "bdt:BDT", "mlp": "mlp:MLP"}


def method_class(name: str) -> type[Method]:
    """The class of method ``name`` (``cut``, ``bdt``, ``mlp``)."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r} (known: {', '.join(METHODS)})")
    module, cls = METHODS[name].split(":")
    return getattr(importlib.import_module(f"crema.models.classifier.{module}"), cls)


def load_method(directory) -> Method:
    """Load a saved method (its ``method.json`` says which)."""
    return method_class(read_meta(directory)["method"]).load(directory)


__all__ = ["METHODS", "Method", "load_method", "method_class"]
