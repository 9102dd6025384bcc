"""Chi-square jet-parton assignment for semi-leptonic ttH(bb): the baseline SPANet is measured against.

The four b products (the Higgs pair, the hadronic and the leptonic top's b) are taken from the
four jets of highest b-tag score among the leading ``max_jets`` jets (the standard ttH(bb) choice);
the hadronic W's two quarks from the other leading jets.  Every such assignment is tried and the
one minimising

    chi2 = ((m_bb - m_H) / s_H)^2 + ((m_qq - m_W) / s_W)^2 + ((m_bqq - m_t) / s_t)^2

wins; the leptonic top's b is the b-candidate left over.  Vectorised over events.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

__all__ = ["Chi2Masses", "chi2_tth"]


@dataclass(frozen=True)
class Chi2Masses:
    """Target masses and resolutions (GeV) of the chi-square terms."""

    higgs: float = 125.0
    higgs_resolution: float = 16.0
    w: float = 80.4
    w_resolution: float = 11.0
    top: float = 172.5
    top_resolution: float = 19.0
    max_jets: int = 8


def _assignments(n_other: int) -> np.ndarray:
    """(A, 6) rows (h.b1, h.b2, ht.b, lt.b, q1, q2): b slots index the 4 b candidates, q slots the others."""
    rows = []
    for hb in itertools.combinations(range(4), 2):
        rest = [i for i in range(4) if i not in hb]
        for htb, ltb in (rest, rest[::-1]):
            for q in itertools.combinations(range(n_other), 2):
                rows.append((*hb, htb, ltb, *q))
    return np.array(rows, dtype=np.int64).reshape(-1, 6)


def _mass(jets: np.ndarray, *cols: int) -> np.ndarray:
    """Invariant mass of the candidate columns ``cols`` of (events, assignments, 6, 4) four-vectors."""
    v = jets[:, :, list(cols)].sum(axis=2)
    return np.sqrt(np.maximum(v[..., 3] ** 2 - (v[..., :3] ** 2).sum(-1), 0.0))


def chi2_tth(pt: np.ndarray, eta: np.ndarray, phi: np.ndarray, mass: np.ndarray, btag: np.ndarray,
             mask: np.ndarray, masses: Chi2Masses = Chi2Masses(), block: int = 4096) -> dict[str, np.ndarray]:
    """Best chi-square assignment per event from ``(B, J)`` jet arrays (``mask``: slot holds a jet).

    Returns ``{"h": (B, 2), "ht": (B, 3) as (b, q1, q2), "lt": (B, 1)}`` jet slots, symmetric
    pairs in increasing order, and ``"chi2"`` (B,); -1 and ``inf`` for events with fewer than
    six jets among the leading ``max_jets``.
    """
    B = len(pt)
    J = min(pt.shape[1] if pt.ndim == 2 else 0, masses.max_jets)
    out = {"h": np.full((B, 2), -1, np.int64), "ht": np.full((B, 3), -1, np.int64),
           "lt": np.full((B, 1), -1, np.int64), "chi2": np.full(B, np.inf)}
    if B == 0 or J < 6:
        return out
    pt, eta, phi, mass, mask = (np.asarray(a)[:, :J] for a in (pt, eta, phi, mass, mask))
    score = np.where(mask, np.asarray(btag, dtype=np.float64)[:, :J], -np.inf)
    rank = np.argsort(-score, axis=1, kind="stable")  # b candidates first, then the rest (b order)
    others = np.sort(rank[:, 4:], axis=1)  # non-b candidates in pt order
    cand = np.concatenate([rank[:, :4], others], axis=1)  # (B, J): candidate -> slot
    table = _assignments(J - 4)
    table[:, 4:] += 4  # q slots index the candidates after the four b ones
    p4 = np.stack([pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)], axis=-1)
    energy = np.sqrt((p4**2).sum(-1) + mass**2)
    p4 = np.concatenate([p4, energy[..., None]], axis=-1).astype(np.float64)  # (B, J, 4)
    for s in range(0, B, block):
        sl = slice(s, s + block)
        jets = np.take_along_axis(p4[sl], cand[sl][..., None], axis=1)  # candidate order
        ok = np.take_along_axis(mask[sl], cand[sl], axis=1)
        j = jets[:, table]  # (b, A, 6, 4)

        chi2 = (((_mass(j, 0, 1) - masses.higgs) / masses.higgs_resolution) ** 2
                + ((_mass(j, 4, 5) - masses.w) / masses.w_resolution) ** 2
                + ((_mass(j, 2, 4, 5) - masses.top) / masses.top_resolution) ** 2)
        chi2 = np.where(ok[:, table].all(axis=2), chi2, np.inf)
        best = np.argmin(chi2, axis=1)
        found = np.isfinite(chi2[np.arange(len(best)), best])
        slots = np.take_along_axis(cand[sl], table[best], axis=1)  # (b, 6) jet slots
        slots = np.where(found[:, None], slots, -1)
        out["h"][sl] = np.sort(slots[:, :2], axis=1)
        out["ht"][sl] = np.concatenate([slots[:, 2:3], np.sort(slots[:, 4:6], axis=1)], axis=1)
        out["lt"][sl] = slots[:, 3:4]
        out["chi2"][sl] = np.where(found, chi2[np.arange(len(best)), best], np.inf)
    return out
