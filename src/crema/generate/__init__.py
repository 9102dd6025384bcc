"""Synthetic NanoAODv12 event generator.

Physics-shaped toy events for the processes in :data:`PROCESSES` (resonant
HH -> bbWW, ttbar, ttH, Drell-Yan, W+jets): Breit-Wigner resonances decayed in
their rest frames, ISR recoil, heavy-flavour hadron decays, particle-level jets,
and a parametrised CMS-like detector response (real Summer22 JEC/JER for AK4
Puppi jets, with a jet response driven by observable causes) written with the
exact NanoAODv12 branch names and types; optionally (``pfnano=True``) with
PFNano-style jet constituents and secondary vertices.  See docs/generator.md for
the model.

>>> from crema.generate import PROCESSES, generate_events, write_nanoaod
>>> write_nanoaod("tt.root", "tt_sl", 10_000, seed=1)  # doctest: +SKIP
>>> write_nanoaod("tt_pf.root", "tt_sl", 10_000, seed=1, pfnano=True)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

__all__ = ["PROCESSES", "generate_events", "write_nanoaod"]


def __getattr__(name: str) -> Any:
    # loaded on first use: configs import crema.generate.enrich without the generator's dependencies
    if name in ("PROCESSES", "generate_events"):
        from . import events

        return getattr(events, name)
    if name == "write_nanoaod":
        from .writer import write_nanoaod

        return write_nanoaod
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
