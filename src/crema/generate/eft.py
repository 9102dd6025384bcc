"""crema's EFT truth: exact LO ratio r(parton kinematics; c) for t tbar production.

Two SMEFT operators (dimension six, Lambda = 1 TeV, Warsaw-basis normalisation without g_s):

* ``ctGRe``: the chromomagnetic dipole O_tG.  Below the electroweak scale it is the top-gluon
  vertex  i g_s T^a [gamma^mu + (i kappa / 2 m_t) sigma^{mu nu} q_nu]  (q: incoming gluon
  momentum) with kappa = 2 sqrt(2) m_t v ctGRe / (g_s Lambda^2).  It enters q qbar and g g.
* ``ctj8``: the colour-octet four-quark operator O_tq^(8) = (qbar gamma_mu T^A q)(tbar gamma^mu T^A t)
  (left-handed light-quark doublet, right-handed top); it interferes in q qbar only.

Per channel and per event the ratio of the EFT to the SM partonic cross section at fixed
(m_tt, cos theta*) is a quadratic polynomial,

    r = 1 + sum_i c_i a_i + sum_i c_i^2 b_ii + sum_{i<j} c_i c_j b_ij,

with theta* the top angle to the incoming quark (q qbar) or to the +z beam (g g) in the t tbar
rest frame.  With beta^2 = 1 - 4 m_t^2 / s, tau_{1,2} = (1 -+ beta cos) / 2, rho = 1 - beta^2,
A = s / (2 g_s^2 Lambda^2):

    q qbar:  SM  ~ D = 2 - beta^2 sin^2
             a_tG = 4 kappa / D,   b_tG = kappa^2 (2 + beta^2 sin^2 + beta^4 sin^2 / rho) / D
             a_8  = A (D - 2 beta cos) / D,   b_8 = A^2 (1 - beta cos)^2 / D
             b_tG,8 = 2 kappa A (1 - beta cos) / D
    g g:     SM  ~ F (tau1^2 + tau2^2 + rho - rho^2 / (4 tau1 tau2)),  F = 1 / (6 tau1 tau2) - 3/8
             a_tG = 2 kappa F / SM,   b_tG = kappa^2 [1/(12 tau1 tau2) + (s/m_t^2)(5/32 - 3 tau1 tau2 / 16)] / SM

(SM: Combridge / Gluck-Owens-Reya; the EFT terms: docs/eft.md, checked there against the integrated
q qbar expressions of the ML4EFT paper and against the LO amplitudes.)  Everything is columnar numpy.
"""

from __future__ import annotations

import json

import numpy as np

from crema.histograms.eft import term_vector

WC_NAMES: tuple[str, ...] = ("ctGRe", "ctj8")
M_TOP = 172.5  # GeV, also the generator's top pole mass
V_EW = 246.22  # GeV
ALPHA_S = 0.118
LAMBDA = 1000.0  # GeV
G_S = float(np.sqrt(4.0 * np.pi * ALPHA_S))
KAPPA_PER_CTG = 2.0 * np.sqrt(2.0) * M_TOP * V_EW / (G_S * LAMBDA**2)

# Parametrised parton luminosity ratio L_qqbar / L_gg as a function of m_tt (13.6 TeV-like: the
# q qbar share of t tbar is ~10% at threshold, ~8% at 500 GeV, 13% at 1 TeV and 21% at 1.5 TeV).
LUMI_QQ_NORM = 0.039
LUMI_QQ_POWER = 2.1


# Reweight points of the generated sample (LHEReweightingWeight[k] is the weight at POINTS[k]
# relative to the nominal): the SM, each coefficient alone at three values, both together.
REWEIGHT_POINTS: tuple[tuple[float, float], ...] = (
    (0.0, 0.0),
    (1.0, 0.0),
    (-1.0, 0.0),
    (2.0, 0.0),
    (0.0, 1.0),
    (0.0, -1.0),
    (0.0, 2.0),
    (1.0, 1.0),
    (-1.0, 1.0),
    (1.0, -1.0),
)
GENERATED_AT: tuple[float, float] = (0.0, 0.0)


def reweight_points_json() -> str:
    """The ``EFTReweightPoints`` JSON of generated files."""
    return json.dumps({"wc_names": list(WC_NAMES), "points": [list(p) for p in REWEIGHT_POINTS], "generated_at": list(GENERATED_AT)})


def reweight_weights(parton: dict) -> np.ndarray:
    """(N, K) LHEReweightingWeight of events with parton truth ``parton`` at :data:`REWEIGHT_POINTS`."""
    coef = truth_coefficients(parton["is_qq"], parton["m_tt"], parton["cos_theta"])
    return coef @ term_vector(np.asarray(REWEIGHT_POINTS)).T


def _kinematics(m_tt, cos_theta):
    s = np.square(np.asarray(m_tt, dtype=np.float64))
    beta2 = np.clip(1.0 - 4.0 * M_TOP**2 / s, 0.0, 1.0)
    beta = np.sqrt(beta2)
    c = np.clip(np.asarray(cos_theta, dtype=np.float64), -1.0, 1.0)
    return s, beta, beta2, c


def sm_qq(m_tt, cos_theta) -> np.ndarray:
    """Spin/colour-averaged |M|^2 / g_s^4 of q qbar -> t tbar (SM, LO)."""
    _, beta, beta2, c = _kinematics(m_tt, cos_theta)
    return (2.0 / 9.0) * (2.0 - beta2 * (1.0 - c * c))


def sm_gg(m_tt, cos_theta) -> np.ndarray:
    """Spin/colour-averaged |M|^2 / g_s^4 of g g -> t tbar (SM, LO)."""
    _, beta, beta2, c = _kinematics(m_tt, cos_theta)
    t1, t2, rho = 0.5 * (1.0 - beta * c), 0.5 * (1.0 + beta * c), 1.0 - beta2
    tt = np.maximum(t1 * t2, 1e-300)
    return (1.0 / (6.0 * tt) - 0.375) * (t1 * t1 + t2 * t2 + rho - rho * rho / (4.0 * tt))


def truth_coefficients(is_qq, m_tt, cos_theta) -> np.ndarray:
    """(N, 6) exact per-event coefficients [sm, lin_ctGRe, lin_ctj8, quad_ctGRe, quad_ctj8, mixed]
    of the ratio r (term order of :func:`crema.histograms.eft.term_names` for :data:`WC_NAMES`; the sm entry is 1).

    ``is_qq``: q qbar (True) or g g initial state; ``cos_theta``: the top angle to the incoming quark
    (g g: to the +z beam) in the t tbar rest frame.
    """
    s, beta, beta2, c = _kinematics(m_tt, cos_theta)
    is_qq = np.asarray(is_qq, dtype=bool)
    kap = KAPPA_PER_CTG
    sin2 = 1.0 - c * c
    rho = np.maximum(1.0 - beta2, 1e-12)
    d = 2.0 - beta2 * sin2
    amp = s / (2.0 * G_S**2 * LAMBDA**2)
    t1, t2 = 0.5 * (1.0 - beta * c), 0.5 * (1.0 + beta * c)
    tt = np.maximum(t1 * t2, 1e-300)
    f = 1.0 / (6.0 * tt) - 0.375
    sm_g = f * (t1 * t1 + t2 * t2 + (1.0 - beta2) - (1.0 - beta2) ** 2 / (4.0 * tt))
    out = np.zeros((np.size(s), 6))
    out[:, 0] = 1.0
    out[:, 1] = np.where(is_qq, 4.0 * kap / d, 2.0 * kap * f / sm_g)
    out[:, 2] = np.where(is_qq, amp * (d - 2.0 * beta * c) / d, 0.0)
    quad_g = kap * kap * (1.0 / (12.0 * tt) + (s / M_TOP**2) * (5.0 / 32.0 - 3.0 * tt / 16.0)) / sm_g
    out[:, 3] = np.where(is_qq, kap * kap * (2.0 + beta2 * sin2 + beta2 * beta2 * sin2 / rho) / d, quad_g)
    out[:, 4] = np.where(is_qq, amp * amp * (1.0 - beta * c) ** 2 / d, 0.0)
    out[:, 5] = np.where(is_qq, 2.0 * kap * amp * (1.0 - beta * c) / d, 0.0)
    return out


def truth_ratio(is_qq, m_tt, cos_theta, point) -> np.ndarray:
    """Exact ratio dsigma(c) / dsigma(SM) per event at the WC point ``point`` = (ctGRe, ctj8)."""
    return truth_coefficients(is_qq, m_tt, cos_theta) @ term_vector(point)


def lumi_ratio_qq(m_tt) -> np.ndarray:
    """Parametrised parton luminosity ratio L_qqbar / L_gg at m_tt (GeV)."""
    return LUMI_QQ_NORM * (np.asarray(m_tt, dtype=np.float64) / 350.0) ** LUMI_QQ_POWER


def qq_probability(m_tt, cos_z) -> np.ndarray:
    """SM probability of the q qbar channel at (m_tt, cos theta_z) (the quark on either beam)."""
    l_qq = lumi_ratio_qq(m_tt) * sm_qq(m_tt, cos_z)
    return l_qq / (l_qq + sm_gg(m_tt, cos_z))


def observed_coefficients(m_tt, cos_z) -> np.ndarray:
    """(N, 6) coefficients of :func:`observed_ratio` (term order of :func:`truth_coefficients`).

    The initial state is marginalised with its SM probability at (m_tt, cos theta_z) and the
    q qbar coefficients are averaged over +-cos (the quark on either beam), so these are the exact
    likelihood-ratio coefficients of the parton-level observables (m_tt, cos theta_z).
    """
    m_tt = np.atleast_1d(m_tt)
    cos_z = np.atleast_1d(cos_z)
    p = np.atleast_1d(qq_probability(m_tt, cos_z))[:, None]
    ones = np.ones(np.shape(m_tt), dtype=bool)
    qq = 0.5 * (truth_coefficients(ones, m_tt, cos_z) + truth_coefficients(ones, m_tt, -cos_z))
    return p * qq + (1.0 - p) * truth_coefficients(~ones, m_tt, cos_z)


def observed_ratio(m_tt, cos_z, point) -> np.ndarray:
    """Ratio dsigma(c)/dsigma(SM) in (m_tt, cos theta_z) with the initial state marginalised.

    cos theta_z is the top angle to the +z beam in the t tbar rest frame; the quark comes from
    either beam with equal probability (as generated), so the q qbar ratio is averaged over +-cos.
    This is the exact likelihood ratio of the parton-level observables (m_tt, cos theta_z).
    """
    return observed_coefficients(m_tt, cos_z) @ term_vector(point)


__all__ = [
    "REWEIGHT_POINTS",
    "WC_NAMES",
    "reweight_points_json",
    "reweight_weights",
    "observed_coefficients",
    "observed_ratio",
    "qq_probability",
    "truth_coefficients",
    "truth_ratio",
]
