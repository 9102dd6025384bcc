"""Particle-level jets: from final-state partons and prompt leptons to GenJet / GenJetAK8.

Every final-state parton becomes a "particle jet" carrying its visible momentum
(the parton minus the neutrino of a semileptonic b/c decay), scaled by an
out-of-cone factor and given a shower mass.  Prompt charged leptons are clustering
inputs too, because CMS GenJets (like reco PF jets) contain them.  The inputs are
clustered with a seeded cone that reproduces anti-kt for these few, hard inputs:
in pt order, an input joins the hardest existing jet axis within R, else it
seeds a new jet.  All arrays are padded (events x inputs); loops run over input
columns only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .kinematics import P4, delta_r
from .processes import HardEvent

KIND_NONE, KIND_PARTON, KIND_ELECTRON, KIND_MUON = 0, 1, 2, 3


@dataclass
class Inputs:
    """Clustering inputs, padded (n, K); column k comes from truth slot ``slots[k]``."""

    slots: list[int]
    valid: np.ndarray
    kind: np.ndarray
    pt4: np.ndarray
    eta: np.ndarray
    phi: np.ndarray
    m4: np.ndarray
    pt8: np.ndarray
    m8: np.ndarray
    hadflav: np.ndarray  # 5 / 4 / 0
    partflav: np.ndarray  # parton pdgId, 0 for leptons
    nu_pt: np.ndarray  # neutrino pt lost by a semileptonic hadron decay
    lep_e: np.ndarray  # electron pt contained (prompt electron input or non-prompt e in the jet)
    lep_mu: np.ndarray  # muon pt contained
    groomed_m: np.ndarray  # shower mass surviving soft-drop grooming


@dataclass
class Clusters:
    """Jets from :func:`cluster`, padded (n, K); column j is the jet seeded by the j-th hardest input."""

    valid: np.ndarray
    p4: P4  # 2-d component arrays
    member_of: np.ndarray  # (n, K) input column -> jet column (-1 for none)
    hadflav: np.ndarray
    partflav: np.ndarray
    nu_pt: np.ndarray
    lep_e: np.ndarray
    lep_mu: np.ndarray
    n_b: np.ndarray  # number of b-flavoured inputs
    n_c: np.ndarray
    groomed_m2_inputs: np.ndarray  # sum of groomed input masses^2 (for soft-drop mass)
    m2_inputs: np.ndarray  # sum of input masses^2
    n_inputs: np.ndarray  # number of inputs clustered

    @property
    def pt(self):
        return self.p4.pt

    @property
    def eta(self):
        return self.p4.eta

    @property
    def phi(self):
        return self.p4.phi

    @property
    def mass(self):
        return self.p4.mass


def build_inputs(rng: np.random.Generator, hard: HardEvent) -> Inputs:
    """Particle-jet inputs from the undecayed hard partons, ISR partons and prompt e/mu."""
    rec = hard.rec
    n = rec.n
    cols = [s for s in hard.finals + hard.isr]
    K = len(cols)
    shape = (n, K)
    out = {k: np.zeros(shape) for k in ("pt4", "eta", "phi", "m4", "pt8", "m8", "nu_pt", "lep_e", "lep_mu", "gm")}
    valid = np.zeros(shape, bool)
    kind = np.zeros(shape, np.int8)
    hadflav = np.zeros(shape, np.uint8)
    partflav = np.zeros(shape, np.int16)
    for k, s in enumerate(cols):
        slot = rec[s]
        apdg = np.abs(slot.pdg)
        is_parton = slot.present & ((apdg <= 5) | (apdg == 21))
        is_e = slot.present & (apdg == 11)
        is_mu = slot.present & (apdg == 13)
        vis = slot.p4
        hf = hard.hadrons.get(s)
        nu = np.zeros(n)
        lep_e = np.where(is_e, slot.p4.pt, 0.0)
        lep_mu = np.where(is_mu, slot.p4.pt, 0.0)
        if hf is not None:
            nu_slot = rec[hf.neutrino]
            vis = vis - nu_slot.p4.scale(nu_slot.present)
            nu = np.where(nu_slot.present, nu_slot.p4.pt, 0.0)
            l_slot = rec[hf.lepton]
            lpt = np.where(l_slot.present, l_slot.p4.pt, 0.0)
            lep_e = lep_e + np.where(np.abs(l_slot.pdg) == 11, lpt, 0.0)
            lep_mu = lep_mu + np.where(np.abs(l_slot.pdg) == 13, lpt, 0.0)
            hadflav[:, k] = hf.flavour
        gluon = apdg == 21
        pt_vis = vis.pt
        # out-of-cone losses (gluons radiate more) and a small axis smear
        ooc4 = np.clip(rng.normal(np.where(gluon, 0.95, 0.965), np.where(gluon, 0.045, 0.035)), 0.6, 1.05)
        ooc8 = np.clip(rng.normal(np.where(gluon, 0.985, 0.99), 0.02), 0.8, 1.05)
        frac_m = np.exp(rng.normal(np.log(np.where(gluon, 0.11, 0.085)), 0.35))
        ang = np.where(is_parton, 0.015, 0.0)
        lepton = is_e | is_mu
        out["pt4"][:, k] = np.where(is_parton, pt_vis * ooc4, np.where(lepton, pt_vis, 0.0))
        out["pt8"][:, k] = np.where(is_parton, pt_vis * ooc8, np.where(lepton, pt_vis, 0.0))
        out["eta"][:, k] = np.clip(vis.eta, -10, 10) + rng.normal(0.0, 1.0, n) * ang
        out["phi"][:, k] = vis.phi + rng.normal(0.0, 1.0, n) * ang
        out["m4"][:, k] = np.where(is_parton, out["pt4"][:, k] * frac_m, 0.0)
        out["m8"][:, k] = np.where(is_parton, out["pt8"][:, k] * frac_m * 1.6, 0.0)
        out["gm"][:, k] = np.where(is_parton, out["pt8"][:, k] * frac_m * 0.3, 0.0)
        out["nu_pt"][:, k] = nu
        out["lep_e"][:, k] = lep_e
        out["lep_mu"][:, k] = lep_mu
        valid[:, k] = (is_parton | lepton) & (out["pt4"][:, k] > 0)
        kind[:, k] = np.where(is_parton, KIND_PARTON, np.where(is_e, KIND_ELECTRON, np.where(is_mu, KIND_MUON, KIND_NONE)))
        partflav[:, k] = np.where(is_parton, slot.pdg, 0)
    return Inputs(
        cols, valid, kind, out["pt4"], out["eta"], out["phi"], out["m4"], out["pt8"], out["m8"],
        hadflav, partflav, out["nu_pt"], out["lep_e"], out["lep_mu"], out["gm"],
    )


def cluster(inp: Inputs, radius: float, pt: np.ndarray, mass: np.ndarray) -> Clusters:
    """Seeded-cone clustering of the inputs (given per-input pt and mass) with cone ``radius``."""
    n, K = pt.shape
    key = np.where(inp.valid, -pt, np.inf)
    order = np.argsort(key, axis=1, kind="stable")
    take = lambda a: np.take_along_axis(a, order, axis=1)  # noqa: E731
    v, spt, seta, sphi, smass = take(inp.valid), take(pt), take(inp.eta), take(inp.phi), take(mass)
    p4 = P4.from_ptetaphim(np.where(v, spt, 0.0), seta, sphi, np.where(v, smass, 0.0))
    skind, shf, spf = take(inp.kind), take(inp.hadflav), take(inp.partflav)
    snu, se, smu, sgm = take(inp.nu_pt), take(inp.lep_e), take(inp.lep_mu), take(inp.groomed_m)
    per_input = {
        "px": p4.px, "py": p4.py, "pz": p4.pz, "e": p4.e, "nu": snu, "le": se, "lmu": smu,
        "gm2": sgm**2, "m2": np.where(v, smass, 0.0) ** 2, "nin": np.ones((n, K)),
        "nb": (shf == 5).astype(float), "nc": (shf == 4).astype(float),
    }

    assign = np.full((n, K), -1)
    seed = np.zeros((n, K), bool)
    for j in range(K):
        # only the events that have a j-th input take part (late columns are sparse)
        r = np.flatnonzero(v[:, j])
        if r.size == 0:
            break  # inputs are pt ordered with invalid ones last
        if j == 0:
            t = np.zeros(r.size, dtype=np.int64)
        else:
            near = seed[r, :j] & (delta_r(seta[r, :j], sphi[r, :j], seta[r, j : j + 1], sphi[r, j : j + 1]) < radius)
            t = np.where(near.any(axis=1), np.argmax(near, axis=1), j)
        seed[r, j] = t == j
        assign[r, j] = t

    # jet sums in one pass: flat (event, jet column) keys, row-major so pt order is kept
    target = (assign + (np.arange(n) * K)[:, None])[v]
    jet = {k: np.bincount(target, a[v], minlength=n * K).reshape(n, K) for k, a in per_input.items()}
    hadflav = np.where(jet["nb"] > 0, 5, np.where(jet["nc"] > 0, 4, 0)).astype(np.uint8)
    # parton flavour of the hardest parton in the jet
    partflav = np.zeros(n * K, np.int16)
    is_parton = (skind == KIND_PARTON)[v]
    keys, first = np.unique(target[is_parton], return_index=True)
    partflav[keys] = spf[v][is_parton][first]
    partflav = partflav.reshape(n, K)

    # back from pt order to input columns
    inv = np.empty_like(order)
    np.put_along_axis(inv, order, np.broadcast_to(np.arange(K), (n, K)), axis=1)
    member_of = np.take_along_axis(assign, inv, axis=1)
    return Clusters(
        valid=seed,
        p4=P4(jet["px"], jet["py"], jet["pz"], jet["e"]),
        member_of=member_of,
        hadflav=hadflav,
        partflav=partflav,
        nu_pt=jet["nu"],
        lep_e=jet["le"],
        lep_mu=jet["lmu"],
        n_b=jet["nb"].astype(np.uint8),
        n_c=jet["nc"].astype(np.uint8),
        groomed_m2_inputs=jet["gm2"],
        m2_inputs=jet["m2"],
        n_inputs=jet["nin"].astype(np.int64),
    )
