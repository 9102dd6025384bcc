"""Hard processes: resonance masses, decay chains, initial-state radiation, hadronisation.

A process builds its hard system in the system's rest frame (Breit-Wigner masses,
two-body decays in each mother's rest frame, boosted), then the system receives a
transverse boost that balances the initial-state-radiation (ISR) partons and a
longitudinal rapidity.  Heavy quarks are then given a B/D hadron which may decay
semileptonically (the non-prompt leptons and neutrinos found inside b/c jets).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from . import eft
from .kinematics import (
    P4,
    breit_wigner,
    isotropic_angles,
    offshell_mass,
    one_plus_cos2_angles,
    two_body_decay,
    two_body_momentum,
)
from .truth import (
    FLAGS_HADRON,
    FLAGS_HADRON_DECAY,
    FLAGS_HARD,
    FLAGS_INCOMING,
    FLAGS_ISR,
    STATUS_DECAYED,
    STATUS_FINAL,
    STATUS_INCOMING,
    STATUS_ISR,
    STATUS_OUTGOING,
    STATUS_RESONANCE,
    GenRecord,
    Slot,
)

# Resonance parameters (GeV): mass, width
M_TOP, W_TOP = 172.5, 1.42
M_W, W_W = 80.38, 2.09
M_Z, W_Z = 91.19, 2.50
M_H, W_H = 125.0, 0.004
X_WIDTH_FRACTION = 0.01  # narrow spin-0 X -> HH resonance: width = 1% of its mass
OFFSHELL_W_MIN = 10.0  # lower cut on the W* mass in H -> W W*

PDG_X = 35
PDG_H = 25
PDG_Z = 23
PDG_W = 24
PDG_TOP = 6
PDG_B = 5
PDG_GLUON = 21

MAX_ISR = 5  # ISR partons per event are capped at this number
SOFT_KT = 3.0  # GeV per transverse component of recoil against unresolved radiation


@dataclass
class Resonance:
    """A decayed resonance and its final-state (undecayed) descendants' slots."""

    slot: int
    kind: str  # "t", "tbar", "W", "Z", "H", "X"
    finals: list[int]


@dataclass
class HardEvent:
    """Truth record of a block plus the bookkeeping the detector stage needs."""

    rec: GenRecord
    finals: list[int]  # undecayed hard-process particles (quarks, leptons, neutrinos)
    isr: list[int]  # ISR parton slots
    resonances: list[Resonance]
    hadrons: dict[int, HeavyFlavour] = field(default_factory=dict)  # parton slot -> hadronisation
    parton: dict[str, np.ndarray] | None = None  # EFT processes: initial state and angle (crema.generate.eft)
    system: P4 | None = None  # the hard system's four-momentum (lab frame)
    # with a biased ISR multiplicity: the true over the sampled probability of each event's ISR count
    isr_weight: np.ndarray | None = None

    def take(self, idx: np.ndarray) -> HardEvent:
        """The events ``idx`` (indices or a mask) of this block, same slots."""
        rec = GenRecord(int(np.count_nonzero(idx)) if np.asarray(idx).dtype == bool else len(idx))

        def p4(v: P4) -> P4:
            return P4(v.px[idx], v.py[idx], v.pz[idx], v.e[idx])

        rec.slots = [
            Slot(s.pdg[idx], s.status[idx], s.flags[idx], s.mother, p4(s.p4), s.present[idx],
                 None if s.mass is None else s.mass[idx])
            for s in self.rec.slots
        ]
        hadrons = {p: HeavyFlavour(h.flavour[idx], h.hadron, h.lepton, h.neutrino) for p, h in self.hadrons.items()}
        parton = None if self.parton is None else {k: np.asarray(v)[idx] for k, v in self.parton.items()}
        return HardEvent(rec, self.finals, self.isr, self.resonances, hadrons, parton,
                         None if self.system is None else p4(self.system),
                         None if self.isr_weight is None else self.isr_weight[idx])


@dataclass
class HeavyFlavour:
    """B/D hadron of one heavy quark slot and its optional semileptonic decay."""

    flavour: np.ndarray  # 5, 4 or 0 per event
    hadron: int  # hadron slot
    lepton: int  # semileptonic lepton slot (present only where it happened)
    neutrino: int  # matching neutrino slot


# --------------------------------------------------------------------------- decays


def _decay_w(rng, rec: GenRecord, w: int, charge: int, leptonic) -> list[int]:
    """W -> l nu (e/mu) where ``leptonic`` else W -> u d' / c s'. Returns the two daughter slots."""
    n = rec.n
    leptonic = np.broadcast_to(leptonic, (n,))
    cos, phi = isotropic_angles(rng, n)
    f1, f2 = two_body_decay(rec[w].p4, 0.0, 0.0, cos, phi)
    muon = rng.uniform(size=n) < 0.5
    charm = rng.uniform(size=n) < 0.5
    lep = np.where(muon, 13, 11)
    up = np.where(charm, 4, 2)
    down = np.where(charm, 3, 1)
    if charge > 0:  # W+ -> l+ nu, u dbar
        pdg1 = np.where(leptonic, -lep, up)
        pdg2 = np.where(leptonic, lep + 1, -down)
    else:  # W- -> l- nubar, d ubar
        pdg1 = np.where(leptonic, lep, down)
        pdg2 = np.where(leptonic, -(lep + 1), -up)
    status = np.where(leptonic, STATUS_FINAL, STATUS_OUTGOING)
    s1 = rec.add(pdg1, status, FLAGS_HARD, w, f1, mass=0.0)
    s2 = rec.add(pdg2, status, FLAGS_HARD, w, f2, mass=0.0)
    return [s1, s2]


def _decay_top(rng, rec: GenRecord, top: int, charge: int, leptonic) -> tuple[list[int], int]:
    """t -> b W, W decayed; returns (final slots, W slot)."""
    n = rec.n
    m_top = rec[top].mass
    m_w = breit_wigner(rng, M_W, W_W, n, 40.0, m_top - 1.0)
    cos, phi = isotropic_angles(rng, n)
    pw, pb = two_body_decay(rec[top].p4, m_w, 0.0, cos, phi)
    w = rec.add(charge * PDG_W, STATUS_RESONANCE, FLAGS_HARD, top, pw, mass=m_w)
    b = rec.add(charge * PDG_B, STATUS_OUTGOING, FLAGS_HARD, top, pb, mass=0.0)
    return [b, *_decay_w(rng, rec, w, charge, leptonic)], w


def _decay_h_bb(rng, rec: GenRecord, h: int) -> list[int]:
    cos, phi = isotropic_angles(rng, rec.n)
    b1, b2 = two_body_decay(rec[h].p4, 0.0, 0.0, cos, phi)
    return [
        rec.add(PDG_B, STATUS_OUTGOING, FLAGS_HARD, h, b1, mass=0.0),
        rec.add(-PDG_B, STATUS_OUTGOING, FLAGS_HARD, h, b2, mass=0.0),
    ]


def _decay_h_ww(rng, rec: GenRecord, h: int, lep_plus, lep_minus) -> list[Resonance]:
    """H -> W+ W-*: one W near its pole, the other off shell (BW x phase space below m_H - m_W1)."""
    n = rec.n
    m_h = rec[h].mass
    m_on = breit_wigner(rng, M_W, W_W, n, OFFSHELL_W_MIN, m_h - OFFSHELL_W_MIN)
    m_off = offshell_mass(rng, M_W, W_W, OFFSHELL_W_MIN, m_h - m_on, m_h, m_on)
    plus_on = rng.uniform(size=n) < 0.5
    m_plus = np.where(plus_on, m_on, m_off)
    m_minus = np.where(plus_on, m_off, m_on)
    cos, phi = isotropic_angles(rng, n)
    pp, pm = two_body_decay(rec[h].p4, m_plus, m_minus, cos, phi)
    wp = rec.add(PDG_W, STATUS_RESONANCE, FLAGS_HARD, h, pp, mass=m_plus)
    wm = rec.add(-PDG_W, STATUS_RESONANCE, FLAGS_HARD, h, pm, mass=m_minus)
    return [
        Resonance(wp, "W", _decay_w(rng, rec, wp, +1, lep_plus)),
        Resonance(wm, "W", _decay_w(rng, rec, wm, -1, lep_minus)),
    ]


def _top_pair(rng, rec: GenRecord, mother: int, parent: P4, lep_t, lep_tbar, m_t, m_tbar):
    """t tbar from ``parent`` (a system p4), isotropic; both tops decayed."""
    cos, phi = isotropic_angles(rng, rec.n)
    pt_, ptb = two_body_decay(parent, m_t, m_tbar, cos, phi)
    t = rec.add(PDG_TOP, STATUS_RESONANCE, FLAGS_HARD, mother, pt_, mass=m_t)
    tb = rec.add(-PDG_TOP, STATUS_RESONANCE, FLAGS_HARD, mother, ptb, mass=m_tbar)
    fin_t, w_t = _decay_top(rng, rec, t, +1, lep_t)
    fin_tb, w_tb = _decay_top(rng, rec, tb, -1, lep_tbar)
    return [
        Resonance(t, "t", fin_t),
        Resonance(tb, "tbar", fin_tb),
        Resonance(w_t, "W", fin_t[1:]),
        Resonance(w_tb, "W", fin_tb[1:]),
    ]


def _top_masses(rng, n):
    return (
        breit_wigner(rng, M_TOP, W_TOP, n, M_TOP - 15 * W_TOP, M_TOP + 15 * W_TOP),
        breit_wigner(rng, M_TOP, W_TOP, n, M_TOP - 15 * W_TOP, M_TOP + 15 * W_TOP),
    )


def _at_rest(m) -> P4:
    m = np.asarray(m, dtype=np.float64)
    z = np.zeros_like(m)
    return P4(z, z.copy(), z.copy(), m.copy())


# ------------------------------------------------------------------ hard systems
# Each builder adds the hard system's slots (in its rest frame) and returns
# (system mass per event, resonances).


def _build_hh(rng, rec: GenRecord, mother: int, mass: float, n_lep: int):
    n = rec.n
    m_x = breit_wigner(rng, mass, X_WIDTH_FRACTION * mass, n, 0.9 * mass, 1.1 * mass)
    x = rec.add(PDG_X, STATUS_RESONANCE, FLAGS_HARD, mother, _at_rest(m_x), mass=m_x)
    m_h1 = breit_wigner(rng, M_H, W_H, n, M_H - 50 * W_H, M_H + 50 * W_H)
    m_h2 = breit_wigner(rng, M_H, W_H, n, M_H - 50 * W_H, M_H + 50 * W_H)
    cos, phi = isotropic_angles(rng, n)
    p1, p2 = two_body_decay(rec[x].p4, m_h1, m_h2, cos, phi)
    h_bb = rec.add(PDG_H, STATUS_RESONANCE, FLAGS_HARD, x, p1, mass=m_h1)
    h_ww = rec.add(PDG_H, STATUS_RESONANCE, FLAGS_HARD, x, p2, mass=m_h2)
    bb = _decay_h_bb(rng, rec, h_bb)
    if n_lep == 2:
        lep_plus = lep_minus = np.ones(n, bool)
    else:
        lep_plus = rng.uniform(size=n) < 0.5
        lep_minus = ~lep_plus
    ws = _decay_h_ww(rng, rec, h_ww, lep_plus, lep_minus)
    finals_ww = ws[0].finals + ws[1].finals
    res = [
        Resonance(x, "X", bb + finals_ww),
        Resonance(h_bb, "H", bb),
        Resonance(h_ww, "H", finals_ww),
        *ws,
    ]
    return m_x, res


def _build_tt(rng, rec: GenRecord, mother: int, mass: float, n_lep: int):
    n = rec.n
    m_t, m_tb = _top_masses(rng, n)
    # m_tt above threshold: falling spectrum peaking ~40 GeV above 2 m_t (mean ~ 490 GeV)
    m_tt = m_t + m_tb + rng.gamma(1.3, 110.0, n)
    if n_lep == 2:
        lep_t = lep_tb = np.ones(n, bool)
    else:
        lep_t = rng.uniform(size=n) < 0.5
        lep_tb = ~lep_t
    res = _top_pair(rng, rec, mother, _at_rest(m_tt), lep_t, lep_tb, m_t, m_tb)
    return m_tt, res


def _build_tt_eft(rng, rec: GenRecord, mother: int, mass: float, n_lep: int):
    """Dilepton t tbar with the initial state and the top angle drawn from the LO SM matrix elements.

    m_tt follows the same spectrum as ``tt_dl``; at fixed m_tt, cos theta_z (top angle to +z in
    the t tbar rest frame) follows L_qq |M_qq|^2 + L_gg |M_gg|^2 and the channel its SM posterior
    (crema.generate.eft); the quark comes from either beam.  Returns the parton truth the EFT
    weights are computed from.
    """
    n = rec.n
    m_t, m_tb = _top_masses(rng, n)
    m_tt = m_t + m_tb + rng.gamma(1.3, 110.0, n)
    cos_z = _eft_cos_theta(rng, m_tt)
    is_qq = rng.uniform(size=n) < eft.qq_probability(m_tt, cos_z)
    quark_plus = rng.uniform(size=n) < 0.5  # the quark travels along +z
    flavour = np.where(rng.uniform(size=n) < 2.0 / 3.0, 2, 1)
    pdg1 = np.where(is_qq, np.where(quark_plus, flavour, -flavour), PDG_GLUON)
    phi = rng.uniform(-np.pi, np.pi, n)
    pt_, ptb = two_body_decay(_at_rest(m_tt), m_t, m_tb, cos_z, phi)
    t = rec.add(PDG_TOP, STATUS_RESONANCE, FLAGS_HARD, mother, pt_, mass=m_t)
    tb = rec.add(-PDG_TOP, STATUS_RESONANCE, FLAGS_HARD, mother, ptb, mass=m_tb)
    lep = np.ones(n, bool)
    fin_t, w_t = _decay_top(rng, rec, t, +1, lep)
    fin_tb, w_tb = _decay_top(rng, rec, tb, -1, lep)
    res = [
        Resonance(t, "t", fin_t),
        Resonance(tb, "tbar", fin_tb),
        Resonance(w_t, "W", fin_t[1:]),
        Resonance(w_tb, "W", fin_tb[1:]),
    ]
    cos_quark = np.where(is_qq & ~quark_plus, -cos_z, cos_z)
    parton = {"is_qq": is_qq, "m_tt": m_tt, "cos_theta": cos_quark, "pdg1": pdg1, "pdg2": np.where(is_qq, -pdg1, PDG_GLUON)}
    return m_tt, res, parton


def _eft_cos_theta(rng, m_tt):
    """cos theta_z at each m_tt from the SM density L_qq |M_qq|^2 + L_gg |M_gg|^2 (accept-reject)."""

    def density(m, c):
        return eft.lumi_ratio_qq(m) * eft.sm_qq(m, c) + eft.sm_gg(m, c)

    grid = np.linspace(-1.0, 1.0, 21)
    bound = 1.05 * np.max([density(m_tt, np.full(m_tt.size, g)) for g in grid], axis=0) if m_tt.size else m_tt
    out = np.empty(m_tt.size)
    todo = np.arange(m_tt.size)
    while todo.size:
        c = rng.uniform(-1.0, 1.0, todo.size)
        ok = rng.uniform(size=todo.size) * bound[todo] <= density(m_tt[todo], c)
        out[todo[ok]] = c[ok]
        todo = todo[~ok]
    return out


def _build_tth(rng, rec: GenRecord, mother: int, mass: float, n_lep: int):
    """t tbar H via sequential two-body splits with three-body phase-space weighting."""
    n = rec.n
    m_t, m_tb = _top_masses(rng, n)
    m_h = breit_wigner(rng, M_H, W_H, n, M_H - 50 * W_H, M_H + 50 * W_H)
    m_sys = m_t + m_tb + m_h + rng.gamma(1.5, 120.0, n)
    # m(tt) density in the 3-body phase space ~ p*(M; m_tt, m_H) * p*(m_tt; m_t, m_tbar)
    lo = m_t + m_tb
    hi = m_sys - m_h
    m_tt = np.empty(n)
    todo = np.arange(n)
    while todo.size:
        cand = lo[todo] + (hi[todo] - lo[todo]) * rng.uniform(size=todo.size)
        w = two_body_momentum(m_sys[todo], cand, m_h[todo]) * two_body_momentum(cand, m_t[todo], m_tb[todo])
        # bound: p*(M; m_tt, m_H) is largest at m_tt = lo, p*(m_tt; m_t, m_tbar) <= sqrt(hi^2 - lo^2) / 2
        wmax = two_body_momentum(m_sys[todo], lo[todo], m_h[todo]) * 0.5 * np.sqrt(hi[todo] ** 2 - lo[todo] ** 2)
        wmax = np.maximum(wmax, 1e-12)
        ok = rng.uniform(size=todo.size) * wmax <= w
        m_tt[todo[ok]] = cand[ok]
        todo = todo[~ok]
    cos, phi = isotropic_angles(rng, n)
    p_tt, p_h = two_body_decay(_at_rest(m_sys), m_tt, m_h, cos, phi)
    h = rec.add(PDG_H, STATUS_RESONANCE, FLAGS_HARD, mother, p_h, mass=m_h)
    lep_t = rng.uniform(size=n) < 0.5
    res = _top_pair(rng, rec, mother, p_tt, lep_t, ~lep_t, m_t, m_tb)
    bb = _decay_h_bb(rng, rec, h)
    return m_sys, [Resonance(h, "H", bb), *res]


def _build_dy(rng, rec: GenRecord, mother: int, mass: float, n_lep: int):
    """Z/gamma* -> ee/mumu with m_ll > 50: Z line shape plus a 1/m^3 continuum."""
    n = rec.n
    m_z = breit_wigner(rng, M_Z, W_Z, n, 50.0, 500.0)
    # continuum: dN/dm ~ m^-3 above 50 GeV (inverse CDF of a Pareto law)
    m_cont = 50.0 * (1.0 - rng.uniform(size=n)) ** (-0.5)
    m_ll = np.where(rng.uniform(size=n) < 0.9, m_z, np.minimum(m_cont, 3000.0))
    z = rec.add(PDG_Z, STATUS_RESONANCE, FLAGS_HARD, mother, _at_rest(m_ll), mass=m_ll)
    cos, phi = one_plus_cos2_angles(rng, n)
    l1, l2 = two_body_decay(rec[z].p4, 0.0, 0.0, cos, phi)
    flav = np.where(rng.uniform(size=n) < 0.5, 13, 11)
    s1 = rec.add(flav, STATUS_FINAL, FLAGS_HARD, z, l1, mass=0.0)
    s2 = rec.add(-flav, STATUS_FINAL, FLAGS_HARD, z, l2, mass=0.0)
    return m_ll, [Resonance(z, "Z", [s1, s2])]


def _build_w(rng, rec: GenRecord, mother: int, mass: float, n_lep: int):
    """W -> l nu (W+ : W- = 58 : 42 as in pp)."""
    n = rec.n
    m_w = breit_wigner(rng, M_W, W_W, n, M_W - 30 * W_W, M_W + 60 * W_W)
    plus = rng.uniform(size=n) < 0.58
    # one slot whose charge varies per event: build both signs' daughters via the sign trick
    w = rec.add(np.where(plus, PDG_W, -PDG_W), STATUS_RESONANCE, FLAGS_HARD, mother, _at_rest(m_w), mass=m_w)
    finals = _decay_w(rng, rec, w, +1, True)
    # flip charges for W- events: l+ nu -> l- nubar
    for s in finals:
        rec[s].pdg[:] = np.where(plus, rec[s].pdg, -rec[s].pdg)
    return m_w, [Resonance(w, "W", finals)]


# ------------------------------------------------------------------ process table


@dataclass(frozen=True)
class ProcessSpec:
    """Static description of a process."""

    name: str
    description: str
    build: Callable
    n_leptons: int  # prompt charged leptons at generator level
    incoming: str  # "gg", "qq" (q qbar), "qq'" (charged current) or "eft" (chosen per event by the builder)
    isr_mean: float  # mean number of ISR partons above isr_ptmin
    isr_min: int  # ISR partons always present (W+jets: >= 1 jet)
    isr_ptmin: float
    y_sigma: float  # width of the hard-system rapidity
    weight: float  # |genWeight|
    negative_fraction: float  # NLO-like fraction of negative weights
    uses_mass: bool = False


PROCESS_SPECS: dict[str, ProcessSpec] = {
    spec.name: spec
    for spec in [
        ProcessSpec(
            "hh_sl",
            "resonant gg -> X(mass) -> HH -> bb WW*, one W -> l nu (e/mu), one W -> qq'",
            _build_hh, 1, "gg", 1.2, 0, 20.0, 0.9, 1.0, 0.0, True,
        ),
        ProcessSpec(
            "hh_dl",
            "resonant gg -> X(mass) -> HH -> bb WW*, both W -> l nu (e/mu)",
            _build_hh, 2, "gg", 1.2, 0, 20.0, 0.9, 1.0, 0.0, True,
        ),
        ProcessSpec(
            "tt_sl",
            "ttbar, one top -> b l nu (e/mu), the other -> b qq'",
            _build_tt, 1, "gg", 1.6, 0, 20.0, 1.0, 300.0, 0.004,
        ),
        ProcessSpec(
            "tt_dl",
            "ttbar, both tops -> b l nu (e/mu)",
            _build_tt, 2, "gg", 1.6, 0, 20.0, 1.0, 300.0, 0.004,
        ),
        ProcessSpec(
            "tt_dl_eft",
            "ttbar dilepton with exact LO EFT weights (ctGRe, ctj8): LHEReweightingWeight + EFTReweightPoints",
            _build_tt_eft, 2, "eft", 1.6, 0, 20.0, 1.0, 300.0, 0.0,
        ),
        ProcessSpec(
            "dy",
            "Drell-Yan Z/gamma* -> ee/mumu, m_ll > 50 GeV, + ISR jets",
            _build_dy, 2, "qq", 0.9, 0, 12.0, 1.5, 20000.0, 0.16,
        ),
        ProcessSpec(
            "wjets",
            "W -> l nu (e/mu) + >= 1 ISR jet",
            _build_w, 1, "qq'", 1.0, 1, 15.0, 1.4, 50000.0, 0.2,
        ),
        ProcessSpec(
            "tth_sl",
            "ttH, H -> bb, ttbar semi-leptonic (e/mu)",
            _build_tth, 1, "gg", 1.8, 0, 20.0, 0.9, 0.5, 0.01,
        ),
    ]
}


# ------------------------------------------------------------------ ISR + assembly


def _isr_flavours(rng, n, quark_fraction: float):
    """ISR parton pdgId: gluons, light quarks, a few % c and b (g -> QQbar)."""
    u = rng.uniform(size=n)
    sign = np.where(rng.uniform(size=n) < 0.5, 1, -1)
    light = rng.integers(1, 4, n)
    pdg = np.full(n, PDG_GLUON)
    pdg = np.where(u < quark_fraction, sign * light, pdg)
    pdg = np.where(u > 0.95, sign * 4, pdg)
    pdg = np.where(u > 0.985, sign * 5, pdg)
    return pdg


def isr_count_pmf(isr_min: int, mean: float) -> np.ndarray:
    """Probabilities of 0..MAX_ISR ISR partons: ``isr_min`` + Poisson(``mean``), capped at MAX_ISR."""
    pmf = np.zeros(MAX_ISR + 1)
    for k in range(MAX_ISR - isr_min):
        pmf[isr_min + k] = math.exp(-mean) * mean**k / math.factorial(k)
    pmf[MAX_ISR] = max(1.0 - pmf.sum(), 0.0)  # the cap collects the Poisson tail
    return pmf


def generate_hard(spec: ProcessSpec, rng: np.random.Generator, n: int, mass: float,
                  isr_mean: float | None = None) -> HardEvent:
    """Generate the truth record of ``n`` events of a process (lab frame).

    ``isr_mean``: draw the number of ISR partons as ``isr_min`` + Poisson(``isr_mean``) instead of the
    process's mean (an exact reweighting: ``HardEvent.isr_weight`` holds p(n) / q(n) of each event's
    count, the process's probability over the sampled one).
    """
    rec = GenRecord(n)
    in1 = rec.add(PDG_GLUON, STATUS_INCOMING, FLAGS_INCOMING, -1, mass=0.0)
    in2 = rec.add(PDG_GLUON, STATUS_INCOMING, FLAGS_INCOMING, -1, mass=0.0)
    first = len(rec.slots)
    m_sys, resonances, *parton = spec.build(rng, rec, in1, mass, spec.n_leptons)
    system_slots = list(range(first, len(rec.slots)))

    # ISR partons: Pareto pT spectrum (dN/dpT ~ pT^-3), broad rapidity
    mean = spec.isr_mean if isr_mean is None else isr_mean
    n_isr = np.minimum(spec.isr_min + rng.poisson(mean, n), MAX_ISR)
    isr_weight = None
    if isr_mean is not None:
        sampled = isr_count_pmf(spec.isr_min, mean)
        isr_weight = (isr_count_pmf(spec.isr_min, spec.isr_mean) / np.where(sampled > 0, sampled, 1.0))[n_isr]
    quark_fraction = 0.25 if spec.incoming == "gg" else 0.4
    isr = []
    sum_px = np.zeros(n)
    sum_py = np.zeros(n)
    for k in range(MAX_ISR):
        present = k < n_isr
        pt = np.minimum(spec.isr_ptmin * (1.0 - rng.uniform(size=n)) ** -0.5, 1500.0)
        eta = np.clip(rng.normal(0.0, 1.8, n), -5.0, 5.0)
        phi = rng.uniform(-np.pi, np.pi, n)
        p4 = P4.from_ptetaphim(np.where(present, pt, 0.0), eta, phi, 0.0)
        isr.append(rec.add(_isr_flavours(rng, n, quark_fraction), STATUS_ISR, FLAGS_ISR, in1, p4, present, mass=0.0))
        sum_px += p4.px
        sum_py += p4.py

    # hard system recoils against the ISR plus unresolved soft radiation / primordial kT
    # (Gaussian, SOFT_KT per component); rapidity from a broad Gaussian
    sum_px += rng.normal(0.0, SOFT_KT, n)
    sum_py += rng.normal(0.0, SOFT_KT, n)
    y = rng.normal(0.0, spec.y_sigma, n)
    mt = np.sqrt(m_sys**2 + sum_px**2 + sum_py**2)
    system = P4(-sum_px, -sum_py, mt * np.sinh(y), mt * np.cosh(y))
    rec.boost_slots(system_slots, system)

    # incoming partons along the beams carry the total longitudinal momentum
    total = system
    for s in isr:
        total = total + rec[s].p4
    e1 = 0.5 * (total.e + total.pz)
    e2 = 0.5 * (total.e - total.pz)
    z = np.zeros(n)
    rec[in1].p4 = P4(z, z.copy(), e1, e1.copy())
    rec[in2].p4 = P4(z.copy(), z.copy(), -e2, e2.copy())
    swap = rng.uniform(size=n) < 0.5  # which beam brings the quark
    if spec.incoming == "qq":  # neutral current: q qbar
        q = rng.choice(np.array([1, 2, 3, 4]), n, p=[0.35, 0.5, 0.1, 0.05])
        rec[in1].pdg[:] = np.where(swap, -q, q)
        rec[in2].pdg[:] = np.where(swap, q, -q)
    elif spec.incoming == "qq'":  # charged current: u dbar / c sbar -> W+, d ubar / s cbar -> W-
        plus = rec[system_slots[0]].pdg > 0
        second = rng.uniform(size=n) < 0.1
        up = np.where(second, 4, 2)
        down = np.where(second, 3, 1)
        quark = np.where(plus, up, down)
        antiquark = np.where(plus, -down, -up)
        rec[in1].pdg[:] = np.where(swap, antiquark, quark)
        rec[in2].pdg[:] = np.where(swap, quark, antiquark)

    elif spec.incoming == "eft":  # the builder chose the initial state per event
        rec[in1].pdg[:] = parton[0]["pdg1"]
        rec[in2].pdg[:] = parton[0]["pdg2"]

    finals = sorted({s for r in resonances for s in r.finals})
    event = HardEvent(rec, finals, isr, resonances, parton=parton[0] if parton else None, system=system,
                      isr_weight=isr_weight)
    _hadronise_heavy_flavour(rng, event)
    return event


# ------------------------------------------------------------------ b/c hadrons

_B_HADRONS = (np.array([511, 521, 531, 5122]), np.array([0.4, 0.4, 0.1, 0.1]), 5.28)
_D_HADRONS = (np.array([421, 411, 431, 4122]), np.array([0.55, 0.25, 0.1, 0.1]), 1.87)
SEMILEPTONIC_B = 0.30  # B -> e/mu + X incl. b -> c -> l cascades
SEMILEPTONIC_D = 0.18


def _hadronise_heavy_flavour(rng, event: HardEvent) -> None:
    """Attach a B/D hadron (status 2) to every b/c quark; some decay semileptonically.

    The hadron carries a fraction z of the quark momentum (Peterson-like Beta law).
    A semileptonic decay adds a lepton (status 1, non-prompt) and a neutrino that
    share the hadron momentum (Dirichlet fractions) at small angles to it.  Work is
    done on the events that have a heavy quark in the slot only.
    """
    rec = event.rec
    n = rec.n
    kinds_b, frac_b, m_b = _B_HADRONS
    kinds_d, frac_d, m_d = _D_HADRONS
    for p in event.finals + event.isr:
        apdg = np.abs(rec[p].pdg)
        idx = np.flatnonzero(rec[p].present & ((apdg == 4) | (apdg == 5)))
        if idx.size == 0:
            continue
        k = idx.size
        is_b = apdg[idx] == 5
        sign = np.sign(rec[p].pdg[idx])
        had_b = kinds_b[rng.choice(4, k, p=frac_b)]
        had_d = kinds_d[rng.choice(4, k, p=frac_d)]
        # b quark -> hadron with negative code for mesons (B0bar = -511), baryons keep the quark sign
        hpdg = np.where(is_b, np.where(had_b > 1000, sign * had_b, -sign * had_b), sign * had_d)
        m_had = np.where(is_b, m_b, m_d)
        z = np.where(is_b, rng.beta(7.0, 2.2, k), rng.beta(4.0, 2.5, k))
        q = rec[p].p4
        qx, qy, qz = q.px[idx] * z, q.py[idx] * z, q.pz[idx] * z
        p_had = np.sqrt(qx**2 + qy**2 + qz**2)
        had_p4 = P4(qx, qy, qz, np.sqrt(p_had**2 + m_had**2))

        semi = rng.uniform(size=k) < np.where(is_b, SEMILEPTONIC_B, SEMILEPTONIC_D)
        frac = rng.dirichlet([2.0, 1.6, 3.0], k)
        spread = np.minimum(0.8 * m_had / np.maximum(p_had, 1e-3), 0.5)
        base_eta = np.clip(had_p4.eta, -10.0, 10.0)
        lep_flav = np.where(rng.uniform(size=k) < 0.5, 13, 11)
        # b -> c l- nubar (b quark gives l-), c -> s l+ nu; 35% of b leptons from the c cascade
        lep_sign = np.where(is_b, -sign, sign)
        lep_sign = np.where(is_b & (rng.uniform(size=k) < 0.35), -lep_sign, lep_sign)

        def full(values, fill=0):
            out = np.full(n, fill, dtype=np.asarray(values).dtype)
            out[idx] = values
            return out

        def full_p4(v: P4) -> P4:
            return P4(full(v.px), full(v.py), full(v.pz), full(v.e))

        had = rec.add(full(hpdg), STATUS_DECAYED, FLAGS_HADRON, p, full_p4(had_p4), full(np.ones(k, bool), False), mass=full(m_had, 0.0))
        slots = []
        for j, pdg in ((0, -lep_sign * lep_flav), (1, lep_sign * (lep_flav + 1))):
            eta = base_eta + rng.normal(0.0, 1.0, k) * spread
            phi = had_p4.phi + rng.normal(0.0, 1.0, k) * spread
            pt = had_p4.pt * frac[:, j] * np.cosh(base_eta) / np.cosh(eta)
            p4 = P4.from_ptetaphim(np.where(semi, pt, 0.0), eta, phi, 0.0)
            slots.append(rec.add(full(pdg), STATUS_FINAL, FLAGS_HADRON_DECAY, had, full_p4(p4), full(semi, False), mass=0.0))
        event.hadrons[p] = HeavyFlavour(full(np.where(is_b, 5, 4)), had, slots[0], slots[1])
