"""Vectorised relativistic kinematics for the synthetic generator.

Everything works on struct-of-arrays four-vectors (:class:`P4`, float64 numpy
arrays of one entry per event) so that a whole block of events is processed with
a handful of numpy calls and no Python loop over events.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np

# Pseudorapidity ROOT assigns to a zero-pt vector (Math::Impl::etaMax); NanoAOD's
# incoming partons therefore carry eta = +-(22756 + |pz|).
ROOT_ETA_MAX = 22756.0


class P4:
    """Four-vectors (px, py, pz, E) for a block of events, float64.

    Treated as immutable: derived quantities (pt, eta, ...) are computed once and cached.
    """

    def __init__(self, px, py, pz, e) -> None:
        self.px = px
        self.py = py
        self.pz = pz
        self.e = e

    @classmethod
    def zeros(cls, n: int) -> P4:
        """``n`` null four-vectors."""
        return cls(np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n))

    @classmethod
    def from_ptetaphim(cls, pt, eta, phi, mass) -> P4:
        """Build from collider coordinates (mass may be an array or scalar)."""
        pt = np.asarray(pt, dtype=np.float64)
        px = pt * np.cos(phi)
        py = pt * np.sin(phi)
        pz = pt * np.sinh(eta)
        p2 = pt * pt + pz * pz
        return cls(px, py, pz, np.sqrt(p2 + np.square(mass)))

    @classmethod
    def at_rest_frame_axis(cls, p: np.ndarray, mass, cos_theta, phi) -> P4:
        """Momentum ``p`` along (theta, phi) with the given mass."""
        sin_theta = np.sqrt(np.clip(1.0 - cos_theta**2, 0.0, 1.0))
        return cls(
            p * sin_theta * np.cos(phi),
            p * sin_theta * np.sin(phi),
            p * cos_theta,
            np.sqrt(p * p + np.square(mass)),
        )

    def __add__(self, o: P4) -> P4:
        return P4(self.px + o.px, self.py + o.py, self.pz + o.pz, self.e + o.e)

    def __sub__(self, o: P4) -> P4:
        return P4(self.px - o.px, self.py - o.py, self.pz - o.pz, self.e - o.e)

    def scale(self, f) -> P4:
        """Multiply all components by ``f``."""
        return P4(self.px * f, self.py * f, self.pz * f, self.e * f)

    @cached_property
    def pt(self) -> np.ndarray:
        return np.hypot(self.px, self.py)

    @cached_property
    def p(self) -> np.ndarray:
        return np.sqrt(self.px**2 + self.py**2 + self.pz**2)

    @cached_property
    def phi(self) -> np.ndarray:
        return np.arctan2(self.py, self.px)

    @cached_property
    def eta(self) -> np.ndarray:
        pt = self.pt
        with np.errstate(divide="ignore", invalid="ignore"):
            eta = np.arcsinh(self.pz / pt)
        # zero-pt vectors get ROOT's convention (used for the incoming partons)
        return np.where(pt > 0, eta, np.sign(self.pz) * (ROOT_ETA_MAX + np.abs(self.pz)))

    @cached_property
    def mass2(self) -> np.ndarray:
        return self.e**2 - self.px**2 - self.py**2 - self.pz**2

    @cached_property
    def mass(self) -> np.ndarray:
        return np.sqrt(np.clip(self.mass2, 0.0, None))

    def boost(self, bx, by, bz) -> P4:
        """Lorentz boost by velocity (bx, by, bz), |b| < 1."""
        b2 = bx * bx + by * by + bz * bz
        gamma = 1.0 / np.sqrt(1.0 - b2)
        bp = bx * self.px + by * self.py + bz * self.pz
        # (gamma - 1) / b^2 written in a form that is finite at b = 0
        g2 = gamma * gamma / (1.0 + gamma)
        f = g2 * bp + gamma * self.e
        return P4(self.px + f * bx, self.py + f * by, self.pz + f * bz, gamma * (self.e + bp))

    def boost_from_rest_of(self, parent: P4) -> P4:
        """Interpret ``self`` as given in ``parent``'s rest frame and boost to the lab."""
        return self.boost(parent.px / parent.e, parent.py / parent.e, parent.pz / parent.e)


def delta_phi(a, b):
    """Signed azimuthal difference wrapped to [-pi, pi)."""
    return (np.asarray(a) - b + np.pi) % (2 * np.pi) - np.pi


def delta_r(eta1, phi1, eta2, phi2):
    """Angular distance sqrt(deta^2 + dphi^2)."""
    return np.hypot(np.asarray(eta1) - eta2, delta_phi(phi1, phi2))


def two_body_momentum(m, m1, m2):
    """Daughter momentum in the rest frame of a particle of mass ``m`` decaying to m1 + m2."""
    m = np.asarray(m, dtype=np.float64)
    x = (m * m - (m1 + m2) ** 2) * (m * m - (m1 - m2) ** 2)
    return np.sqrt(np.clip(x, 0.0, None)) / (2.0 * m)


def isotropic_angles(rng: np.random.Generator, n: int):
    """(cos_theta, phi) uniformly on the sphere."""
    return rng.uniform(-1.0, 1.0, n), rng.uniform(-np.pi, np.pi, n)


def one_plus_cos2_angles(rng: np.random.Generator, n: int):
    """(cos_theta, phi) with dN/dcos ~ 1 + cos^2 (vector boson -> fermion pair, averaged).

    Inverts the CDF (c + c^3/3 + 4/3) / (8/3) = u analytically (Cardano).
    """
    q = 4.0 * rng.uniform(0.0, 1.0, n) - 2.0
    s = np.sqrt(q * q + 1.0)
    return np.cbrt(q + s) + np.cbrt(q - s), rng.uniform(-np.pi, np.pi, n)


def two_body_decay(parent: P4, m1, m2, cos_theta, phi) -> tuple[P4, P4]:
    """Decay ``parent`` to daughters of masses m1, m2 at rest-frame angles, returned in the lab.

    The daughters are back to back in the parent's rest frame and both boosted with
    the parent's velocity, so d1 + d2 == parent up to float64 rounding.
    """
    m = parent.mass
    p = two_body_momentum(m, m1, m2)
    d1 = P4.at_rest_frame_axis(p, m1, cos_theta, phi)
    d2 = P4(-d1.px, -d1.py, -d1.pz, np.sqrt(p * p + np.square(m2)))
    return d1.boost_from_rest_of(parent), d2.boost_from_rest_of(parent)


def breit_wigner(rng: np.random.Generator, m0: float, width: float, n: int, lo, hi) -> np.ndarray:
    """Relativistic Breit-Wigner masses truncated to [lo, hi] (arrays allowed).

    Samples s = m^2 from 1 / ((s - m0^2)^2 + m0^2 width^2) by inverting its CDF
    (an arctangent), so truncation is exact and costs nothing.
    """
    mg = m0 * width
    lo2 = np.square(np.maximum(lo, 0.0))
    hi2 = np.square(hi)
    a = np.arctan((lo2 - m0 * m0) / mg)
    b = np.arctan((hi2 - m0 * m0) / mg)
    s = m0 * m0 + mg * np.tan(a + (b - a) * rng.uniform(0.0, 1.0, n))
    return np.sqrt(np.clip(s, lo2, hi2))


def offshell_mass(rng: np.random.Generator, m0: float, width: float, lo, hi, m_parent, m_other) -> np.ndarray:
    """Mass of an off-shell boson: Breit-Wigner x two-body phase space of the parent decay.

    Used for H -> W W*: the density in m is BW(m) * p*(m_parent; m_other, m), sampled by
    drawing from the truncated BW and accepting with p*(m) / p*(lo) (p* falls with m).
    The loop runs over rejection rounds, not over events.
    """
    n = np.size(m_parent)
    lo = np.broadcast_to(np.asarray(lo, dtype=np.float64), (n,))
    hi = np.broadcast_to(np.asarray(hi, dtype=np.float64), (n,))
    m_parent = np.broadcast_to(m_parent, (n,))
    m_other = np.broadcast_to(m_other, (n,))
    out = np.empty(n)
    todo = np.arange(n)
    while todo.size:
        m = breit_wigner(rng, m0, width, todo.size, lo[todo], hi[todo])
        pmax = two_body_momentum(m_parent[todo], m_other[todo], lo[todo])
        p = two_body_momentum(m_parent[todo], m_other[todo], m)
        ok = rng.uniform(0.0, 1.0, todo.size) * pmax <= p
        out[todo[ok]] = m[ok]
        todo = todo[~ok]
    return out


def logit(x):
    """log(x / (1 - x))."""
    return np.log(x) - np.log1p(-x)


def sigmoid(x):
    """1 / (1 + exp(-x))."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x)))
