"""Emulated lepton triggers (HLT_* bits) from the reconstructed leptons.

Each leg is an efficiency turn-on in offline pt times a plateau efficiency, applied
to leptons passing a loose-isolation quality cut; an event fires a single-lepton
path if any lepton fires the leg, a double-lepton path if enough leptons fire
each leg.
"""

from __future__ import annotations

import numpy as np

from .kinematics import sigmoid


def _leg(rng, pt, quality, threshold: float, plateau: float, width: float) -> np.ndarray:
    eff = plateau * sigmoid((pt - threshold - 2.0 * width) / width)
    return quality & (rng.uniform(size=pt.size) < eff)


def _count(n: int, counts: np.ndarray, passed: np.ndarray) -> np.ndarray:
    return np.bincount(np.repeat(np.arange(n), counts), passed.astype(float), minlength=n)


def triggers(rng: np.random.Generator, n: int, e_counts, e: dict, mu_counts, mu: dict) -> dict[str, np.ndarray]:
    """HLT decisions for a block of events."""
    e_q = e["mvaIso_WP90"] & (e["pfRelIso03_all"] < 0.2)
    m_q = mu["looseId"] & (mu["pfRelIso04_all"] < 0.4)
    ne = lambda thr, plateau=0.93: _count(n, e_counts, _leg(rng, e["pt"], e_q, thr, plateau, 0.8))  # noqa: E731
    nm = lambda thr, plateau=0.95: _count(n, mu_counts, _leg(rng, mu["pt"], m_q, thr, plateau, 0.5))  # noqa: E731
    mu24 = _count(n, mu_counts, _leg(rng, mu["pt"], mu["tightId"] & (mu["pfRelIso04_all"] < 0.25), 24.0, 0.93, 0.5))
    return {
        "HLT_IsoMu24": mu24 > 0,
        "HLT_Ele30_WPTight_Gsf": _count(n, e_counts, _leg(rng, e["pt"], e["mvaIso_WP80"], 30.0, 0.90, 0.8)) > 0,
        "HLT_Ele32_WPTight_Gsf": _count(n, e_counts, _leg(rng, e["pt"], e["mvaIso_WP80"], 32.0, 0.90, 0.8)) > 0,
        "HLT_Mu17_TrkIsoVVL_Mu8_TrkIsoVVL_DZ_Mass3p8": (nm(17.0) >= 1) & (nm(8.0) >= 2),
        "HLT_Ele23_Ele12_CaloIdL_TrackIdL_IsoVL": (ne(23.0) >= 1) & (ne(12.0) >= 2),
        "HLT_Mu8_TrkIsoVVL_Ele23_CaloIdL_TrackIdL_IsoVL_DZ": (nm(8.0) >= 1) & (ne(23.0) >= 1),
        "HLT_Mu23_TrkIsoVVL_Ele12_CaloIdL_TrackIdL_IsoVL": (nm(23.0) >= 1) & (ne(12.0) >= 1),
    }
