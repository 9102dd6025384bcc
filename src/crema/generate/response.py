"""AK4 jet response built from observable causes (composition, fragmentation, decays, pileup).

The response after JEC of a particle-level jet of class c keeps the
parametrisation crema always had: median ``R_c(pT)`` (:data:`RESPONSE`, gluons
pT-dependent) and 16-84 % half width ``sigma_JER x RESOLUTION_SCALE[c]`` (real
Summer22 MC resolution).  What this module adds is *where the fluctuation comes
from*, so that part of it is visible in the jet's features (and in its PFNano
constituents), as in a real detector:

``target = gen pT x R_uds x (1 + d_comp + d_frag + d_sl + d_res + sigma_irr N)``
and, at raw level, ``+ (O - <O>)`` from residual pileup particles, where

* ``d_comp``: particle-level composition measured with type-dependent response.
  Tracks (charged hadrons, electrons, muons) and photons are measured at 1,
  neutral hadrons at ``r_nh = 0.75 - 0.25 sqrt(30 GeV / pT)`` (0.50 at 30 GeV,
  0.71 at 1 TeV, lower in the endcap; outside the tracker, |eta| > 2.5, charged
  hadrons too) with an HCAL stochastic term 80 %/sqrt(E).  The neutral-hadron
  share is 0 or a capped exponential, so jets with a high ``neHEF`` have a low
  response.
* ``d_frag = -kappa_f s``: fragmentation softness ``s = D_c + z`` (z ~ N(0, 1),
  D = 0.5 for gluons, 0 otherwise).  Soft fragmentation means more constituents,
  a more gluon-like ``QvG`` and a lower response; ``kappa_f`` is fixed so that
  composition + softness give the gluon deficit of :data:`RESPONSE`.
* ``d_sl = -0.27 x min(p_T^nu / p_T^gen, 0.5)``: semileptonic b/c decays (the
  GenJet excludes the neutrino, as in CMS, but the soft, displaced remnant of the
  decay is measured with lower efficiency and response); the charged lepton in
  the jet (``muEF``, ``chEmEF``, the lepton constituent) signals it.  This is what
  makes b jets 2 % and c jets 1 % low.
* pileup: ``Poisson(0.14 rho A)`` residual pileup particles (charged ones not
  associated to the PV, neutral ones that Puppi did not fully remove) with
  Exp(1 GeV) Puppi-weighted pT each; the JEC removes their mean, their jet-by-jet
  fluctuation stays (visible only through the constituents).
* ``d_res``: whatever of the class response the causes above do not explain
  (zero for gluons).
* ``sigma_irr``: the unobservable rest, set per jet (exact tables for the
  neutral-hadron term, Gaussian for the rest) so that the total 16-84 % half
  width is ``sigma_JER x RESOLUTION_SCALE`` and the median ``R_c``; at least 30 %
  of the width stays unobservable.

All magnitudes are documented in docs/generator.md ("Response model").
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

# jet classes driving the response and tagging laws
UDS, GLUON, CHARM, BOTTOM, LEPTON, PILEUP = range(6)
N_CLASSES = 6

# mean reco/gen response after JEC (gluon value is at 30 GeV, see mean_response)
RESPONSE = np.array([1.00, 0.99, 0.99, 0.98, 1.00, 1.00])
# resolution relative to the JER (softer gluon fragmentation, b/c decays with muons and neutrinos)
RESOLUTION_SCALE = np.array([1.00, 1.08, 1.04, 1.08, 1.00, 1.00])

# mean *reconstructed* energy fractions of the hadronic part [chHEF, neHEF, chEmEF, neEmEF]
# in the tracker acceptance (at 50 GeV); the particle-level shares follow from r_nh
FRACTIONS = np.array(
    [
        [0.64, 0.10, 0.01, 0.25],
        [0.60, 0.115, 0.01, 0.275],
        [0.62, 0.11, 0.015, 0.255],
        [0.62, 0.10, 0.02, 0.26],
        [0.50, 0.10, 0.05, 0.35],
        [0.30, 0.30, 0.01, 0.39],
    ]
)
TRACKER_ETA = 2.5  # charged particles are tracked (and Puppi can use vertices) inside
HF_ETA = 3.0  # forward calorimeter: PF candidates are HF hadrons (pdgId 1) / HF EM (2)

# neutral-hadron response relative to tracks and photons: r = a - b sqrt(30 GeV / pT)
NH_RESPONSE = (0.75, 0.25)
NH_ENDCAP = 0.25  # the deficit grows linearly by this factor from |eta| = 1.3 to 2.5 (to 3.0 beyond)
HCAL_STOCHASTIC = 0.8  # neutral-hadron energy resolution 80 % / sqrt(E / GeV)
NH_MULTIPLICITY = 0.10  # mean number of neutral hadrons per unit of hadronic multiplicity
NH_MAX_SCALE, NH_MAX_SHARE = 0.4, 0.9  # the neutral-hadron share: Exp(<= 0.4) capped at 0.9
CH_CONCENTRATION = 3.0  # Beta concentration of the charged/photon split of the rest
CONVERSION_PROB = 0.25  # probability of a conversion / Dalitz electron (chEmEF of hadrons)
CH_MULTIPLICITY, PHOTON_MULTIPLICITY = 0.58, 0.32  # constituent shares of the hadronic multiplicity

# fragmentation softness s = FRAG_SHIFT[class] + z, z ~ N(0, 1)
FRAG_SHIFT = np.array([0.0, 0.5, 0.0, 0.0, 0.0, 0.0])
MULT_SLOPE = 0.35  # inside a class, the multiplicity grows as exp(MULT_SLOPE z)
# mean hadronic multiplicity at 30 GeV (grows as pT^0.3); b/c include their decay products
N_CONSTITUENTS_30 = np.array([8.0, 11.6, 9.8, 11.6, 1.5, 4.0])
QVG_FRAG_CORRELATION = 0.6  # correlation of the QvG logit with -z inside a class

# semileptonic decays: response loss per unit of neutrino share x = min(p_T^nu / p_T^gen, NU_CAP)
NU_LOSS, NU_CAP = 0.27, 0.5
# mean, variance and third central moment of x for b and c jets vs GenJet pT, measured on
# tt (semi- and dileptonic) and ttH: the class response is kept for this b/c content
NU_TABLE_PT = np.array([15.4, 25.1, 39.9, 63.3, 96.5, 146.3, 237.7, 461.5])
NU_MOMENTS = {
    BOTTOM: np.array(
        [
            [0.1243, 0.1089, 0.0870, 0.0608, 0.0453, 0.0328, 0.0242, 0.0196],
            [0.03262, 0.02905, 0.02307, 0.01554, 0.01075, 0.00696, 0.00461, 0.00312],
            [0.006765, 0.006665, 0.005871, 0.004311, 0.003004, 0.001880, 0.001162, 0.000795],
        ]
    ),
    CHARM: np.array(
        [
            [0.0598, 0.0367, 0.0342, 0.0272, 0.0212, 0.0160, 0.0141, 0.0085],
            [0.01678, 0.00992, 0.00904, 0.00671, 0.00503, 0.00297, 0.00273, 0.00059],
            [0.004933, 0.003133, 0.002806, 0.002069, 0.001537, 0.000734, 0.000658, 0.000047],
        ]
    ),
}

# residual pileup particles in the jet: rate per unit rho x area for (charged, photon, neutral hadron),
# each with Puppi-weighted pT ~ Gamma(PU_SHAPE, PU_SCALE GeV)
PU_RATE = np.array([0.07, 0.045, 0.025])
PU_SHAPE, PU_SCALE = 1.0, 1.0

IRREDUCIBLE_MIN = 0.30  # at least this share of the width stays unobservable


def mean_response(cls: np.ndarray, gen_pt: np.ndarray) -> np.ndarray:
    """Class (median) response after JEC; gluons 0.975 at 30 GeV approaching 0.99 at high pT."""
    r = RESPONSE[cls]
    return np.where(cls == GLUON, 0.99 - 0.015 * np.sqrt(30.0 / np.maximum(gen_pt, 5.0)), r)


def nh_response(gen_pt: np.ndarray, eta: np.ndarray | float = 0.0) -> np.ndarray:
    """Neutral-hadron response relative to tracks and photons (lower behind the endcap's material)."""
    deficit = 1.0 - NH_RESPONSE[0] + NH_RESPONSE[1] * np.sqrt(30.0 / np.maximum(gen_pt, 10.0))
    a = np.abs(eta)
    endcap = np.where(a < HF_ETA, np.clip((a - 1.3) / (TRACKER_ETA - 1.3), 0.0, 1.0), 0.0)
    return 1.0 - deficit * (1.0 + NH_ENDCAP * endcap)


def _true_fractions() -> np.ndarray:
    """Particle-level mean shares [ch, nh, ce, photon] giving the FRACTIONS means at r_nh(50 GeV, barrel)."""
    r = float(nh_response(np.array(50.0)))
    ch, ne, ce, ga = FRACTIONS.T
    t_nh = ne / (r + ne * (1.0 - r))
    scale = (1.0 - t_nh) / (1.0 - ne)
    return np.stack([ch * scale, t_nh, ce * scale, ga * scale], axis=1)


TRUE_FRACTIONS = _true_fractions()


def mean_multiplicity(cls, gen_pt):
    """Mean hadronic constituent multiplicity of the class at this pT."""
    return N_CONSTITUENTS_30[cls] * (np.maximum(gen_pt, 5.0) / 30.0) ** 0.3


def nh_law(cls, gen_pt):
    """Neutral-hadron share: 0 with probability 1 - p, else min(Exp(theta), NH_MAX_SHARE)."""
    p = 1.0 - np.exp(-NH_MULTIPLICITY * mean_multiplicity(cls, gen_pt))
    theta = np.minimum(TRUE_FRACTIONS[cls, 1] / p, NH_MAX_SCALE)
    return p, theta


def _capped_exp_moments(theta, cap):
    """E[min(E, cap)^k], k = 1, 2, 3, for E ~ Exp(mean theta)."""
    q = np.exp(-cap / theta)
    m1 = theta * (1.0 - q)
    m2 = 2.0 * theta * (theta - q * (cap + theta))
    m3 = 6.0 * theta**3 - q * (3.0 * cap**2 * theta + 6.0 * cap * theta**2 + 6.0 * theta**3)
    return m1, m2, m3


def _beta_moments(mean, conc):
    """Raw moments E[f], E[f^2], E[f^3] of Beta(mean conc, (1 - mean) conc)."""
    b2 = mean * (mean * conc + 1.0) / (conc + 1.0)
    return mean, b2, b2 * (mean * conc + 2.0) / (conc + 2.0)


def _cumulants(e1, e2, e3):
    """Variance and third central moment from raw moments."""
    return e2 - e1**2, e3 - 3.0 * e1 * e2 + 2.0 * e1**3


def share_moments(cls, gen_pt, forward):
    """Raw moments (k = 1, 2, 3) of the calorimeter-measured hadron share: neutral hadrons,
    outside the tracker neutral + charged hadrons."""
    p, theta = nh_law(cls, gen_pt)
    e1, e2, e3 = (p * m for m in _capped_exp_moments(theta, NH_MAX_SHARE))
    # outside the tracker: 1 - f_h = (1 - u)(1 - f_nh), u the charged share of the rest (conversions neglected)
    t = TRUE_FRACTIONS[cls]
    a1, a2, a3 = _beta_moments(t[:, 3] / (t[:, 0] + t[:, 3]), CH_CONCENTRATION)
    y1, y2, y3 = a1 * (1.0 - e1), a2 * (1.0 - 2.0 * e1 + e2), a3 * (1.0 - 3.0 * e1 + 3.0 * e2 - e3)
    fwd = (1.0 - y1, 1.0 - 2.0 * y1 + y2, 1.0 - 3.0 * y1 + 3.0 * y2 - y3)
    return tuple(np.where(forward, f, c) for f, c in zip(fwd, (e1, e2, e3)))


@dataclass
class Latents:
    """Per-jet draws of the response model (flat arrays over the candidates)."""

    s: np.ndarray  # fragmentation softness
    z: np.ndarray  # its within-class part
    f: dict[str, np.ndarray]  # particle-level shares of the hadronic part: ch, nh, ce, ga
    counts: dict[str, np.ndarray]  # constituent counts: ch, nh, ga, ce, e, mu, pu_ch, pu_ga, pu_nh
    pu: dict[str, np.ndarray]  # Puppi-weighted residual pileup pT (GeV): ch, ga, nh
    pu_mean: np.ndarray  # its expectation <O>
    pu_var: np.ndarray  # its variance and third central moment
    pu_k3: np.ndarray
    hcal: np.ndarray  # relative neutral-hadron measurement fluctuation
    x_e_ch: np.ndarray  # electron share measured as charged EM (rest: brems photons)
    forward: np.ndarray  # outside the tracker
    hf: np.ndarray  # in the forward calorimeter

    def subset(self, idx: np.ndarray) -> Latents:
        """The latents of the jets ``idx``."""
        take = lambda d: {k: v[idx] for k, v in d.items()}  # noqa: E731
        return Latents(
            self.s[idx], self.z[idx], take(self.f), take(self.counts), take(self.pu), self.pu_mean[idx],
            self.pu_var[idx], self.pu_k3[idx], self.hcal[idx], self.x_e_ch[idx], self.forward[idx], self.hf[idx],
        )


def draw(rng, cls, gen_pt, eta, rho, area, x_e, x_mu) -> Latents:
    """Draw composition, multiplicities, softness and residual pileup of each jet.

    ``gen_pt`` is the GenJet pT (for pileup jets: their target pT); ``x_e``, ``x_mu``
    the electron and muon pT shares of the jet.
    """
    m = cls.size
    had = 1.0 - x_mu - x_e
    z = rng.normal(size=m)
    s = FRAG_SHIFT[cls] + z
    mult = mean_multiplicity(cls, gen_pt) * np.exp(MULT_SLOPE * z - 0.5 * MULT_SLOPE**2)
    t = TRUE_FRACTIONS[cls]

    # neutral hadrons: none with probability 1 - p, else an exponential share
    p_nh, theta = nh_law(cls, gen_pt)
    present = rng.uniform(size=m) < p_nh
    f_nh = np.where(present, np.minimum(rng.exponential(theta), NH_MAX_SHARE), 0.0)
    # conversion / Dalitz electrons
    conv = rng.uniform(size=m) < CONVERSION_PROB
    m_ce = np.clip(t[:, 2] / ((1.0 - t[:, 1]) * CONVERSION_PROB), 1e-3, 0.9)
    f_ce = np.where(conv, (1.0 - f_nh) * rng.beta(m_ce * 8.0, (1.0 - m_ce) * 8.0), 0.0)
    # charged hadrons and photons share the rest
    u_mean = t[:, 0] / (t[:, 0] + t[:, 3])
    u = rng.beta(u_mean * CH_CONCENTRATION, (1.0 - u_mean) * CH_CONCENTRATION)
    rest = 1.0 - f_nh - f_ce
    f = {"ch": rest * u, "nh": f_nh, "ce": f_ce, "ga": rest * (1.0 - u)}

    lam = NH_MULTIPLICITY * mult
    counts = {
        "ch": 1 + rng.poisson(np.maximum(CH_MULTIPLICITY * mult * u / u_mean - 1.0, 0.0)),
        "nh": np.where(present, 1 + rng.poisson(np.maximum(lam * f_nh / np.maximum(t[:, 1], 1e-3) - 1.0, 0.0)), 0),
        "ga": 1 + rng.poisson(np.maximum(PHOTON_MULTIPLICITY * mult * (1.0 - u) / (1.0 - u_mean) - 1.0, 0.0)),
        "ce": np.where(conv, 1 + rng.poisson(0.2, m), 0),
        "e": (x_e > 0).astype(np.int64),
        "mu": (x_mu > 0).astype(np.int64),
    }

    # residual pileup particles (none in pileup jets, which are pileup, and lepton jets)
    forward = np.abs(eta) > TRACKER_ETA
    rho_a = np.where((cls == PILEUP) | (cls == LEPTON), 0.0, rho * area)
    pu = {}
    for k, rate in zip(("pu_ch", "pu_ga", "pu_nh"), PU_RATE):
        n_k = rng.poisson(rate * rho_a)
        counts[k] = n_k
        pu[k[3:]] = np.where(n_k > 0, rng.gamma(np.maximum(n_k, 1) * PU_SHAPE, PU_SCALE), 0.0)
    # compound Poisson moments: lambda E[X^k] with X ~ Gamma(PU_SHAPE, PU_SCALE)
    lam_pu = PU_RATE.sum() * rho_a
    pu_mean = lam_pu * PU_SHAPE * PU_SCALE
    pu_var = lam_pu * PU_SHAPE * (PU_SHAPE + 1.0) * PU_SCALE**2
    pu_k3 = lam_pu * PU_SHAPE * (PU_SHAPE + 1.0) * (PU_SHAPE + 2.0) * PU_SCALE**3

    # neutral-hadron (outside the tracker: all hadron) measurement fluctuation
    f_h = np.where(forward, f["nh"] + f["ch"], f["nh"])
    e_h = np.maximum(gen_pt * np.cosh(np.clip(eta, -5, 5)) * had * f_h, 1.0)
    hcal = np.clip(HCAL_STOCHASTIC / np.sqrt(e_h) * rng.normal(size=m), -0.9, 0.9)
    x_e_ch = x_e * rng.uniform(0.55, 1.0, m)
    return Latents(s, z, f, counts, pu, pu_mean, pu_var, pu_k3, hcal, x_e_ch, forward, np.abs(eta) > HF_ETA)


def measured(lat: Latents, had: np.ndarray, x_e: np.ndarray, x_mu: np.ndarray, r_nh: np.ndarray) -> dict[str, np.ndarray]:
    """Measured pT of each constituent type (units of the GenJet pT, before the global response).

    Keys: ch (charged hadrons), nh (neutral hadrons; outside the tracker all hadrons),
    ga (photons; outside the tracker also electrons), ce (charged EM: electrons),
    mu (muons).
    """
    f, fwd = lat.f, lat.forward
    nh = had * np.where(fwd, f["nh"] + f["ch"], f["nh"]) * r_nh * (1.0 + lat.hcal)
    ce = had * f["ce"] + lat.x_e_ch
    brems = x_e - lat.x_e_ch
    return {
        "ch": np.where(fwd, 0.0, had * f["ch"]),
        "nh": nh,
        "ga": had * f["ga"] + brems + np.where(fwd, ce, 0.0),
        "ce": np.where(fwd, 0.0, ce),
        "mu": x_mu,
    }


def _mean_sum(cls, gen_pt, had, x, r_nh, forward):
    """Expected measured sum for class ``cls`` (its mean calorimeter-measured hadron share)."""
    return had * (1.0 - share_moments(cls, gen_pt, forward)[0] * (1.0 - r_nh)) + x


def nu_moments(cls, gen_pt):
    """Mean, variance, third central moment of the capped neutrino share for the class and pT."""
    out = [np.zeros(cls.shape) for _ in range(3)]
    x = np.log(np.maximum(gen_pt, 1.0))
    for c, table in NU_MOMENTS.items():
        sel = cls == c
        for k in range(3):
            out[k] = np.where(sel, np.interp(x, np.log(NU_TABLE_PT), table[k]), out[k])
    return out


def fragmentation_slope(gen_pt, eta) -> np.ndarray:
    """kappa_f: response loss per unit of softness, such that gluons get their class response."""
    one = np.ones_like(gen_pt)
    r_nh = nh_response(gen_pt, eta)
    fwd = np.abs(eta) > TRACKER_ETA
    ref = _mean_sum(np.full(gen_pt.shape, UDS), gen_pt, one, 0.0, r_nh, fwd)
    comp_gap = 1.0 - _mean_sum(np.full(gen_pt.shape, GLUON), gen_pt, one, 0.0, r_nh, fwd) / ref
    gap = 1.0 - mean_response(np.full(gen_pt.shape, GLUON), gen_pt) / RESPONSE[UDS]
    return np.maximum(gap - comp_gap, 0.0) / FRAG_SHIFT[GLUON]


# ----------------------------------------------------------------------- median of the response


def _norm_cdf(x):
    """Standard normal CDF (erfc with fractional error < 1.2e-7, Numerical Recipes)."""
    z = np.abs(x) / np.sqrt(2.0)
    t = 1.0 / (1.0 + 0.5 * z)
    poly = -1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806 + t * (
        0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))))
    erfc = t * np.exp(-z * z + poly)
    return np.where(x >= 0, 1.0 - 0.5 * erfc, 0.5 * erfc)


def _log_norm_cdf(x):
    """log Phi(x), with the asymptotic series far in the lower tail."""
    xs = np.minimum(x, -6.0)
    tail = -0.5 * xs**2 - np.log(-xs) - 0.5 * np.log(2.0 * np.pi) + np.log1p(-1.0 / xs**2 + 3.0 / xs**4 - 15.0 / xs**6)
    return np.where(x < -6.0, tail, np.log(np.maximum(_norm_cdf(np.maximum(x, -6.0)), 1e-300)))


def _cdf_gauss_minus_exp(u, tau, theta):
    """P(G - E <= u) for G ~ N(0, tau^2), E ~ Exp(mean theta)."""
    b = -u / tau - tau / theta
    a = u / theta + 0.5 * (tau / theta) ** 2
    return _norm_cdf(u / tau) + np.exp(np.minimum(a + _log_norm_cdf(b), 0.0))


def _composition_cdf(y, p, s, c):
    """CDF of N(0, 1) - F, F = 0 (prob 1 - p) or min(Exp(s), s c)."""
    q = np.exp(-c)
    capped = _cdf_gauss_minus_exp(y, 1.0, s) - q * _cdf_gauss_minus_exp(y + s * c, 1.0, s) + q * _norm_cdf(y + s * c)
    return (1.0 - p) * _norm_cdf(y) + p * capped


# grids of the shape tables: probability of a neutral hadron p, exponential scale / Gaussian width x,
# cap / scale c, and log(sigma / exponential scale) for the inverse table
_TAB_P = np.linspace(0.0, 1.0, 11)
_TAB_X = np.concatenate([np.linspace(0.0, 2.0, 41)[:-1], np.linspace(2.0, 12.0, 51)])
_TAB_C = np.array([1.5, 2.0, 3.0, 4.0, 8.0, 40.0])
_TAB_LY = np.linspace(np.log(0.02), np.log(50.0), 81)


def _grid_index(grid, v):
    """Cell index and fraction of v on a sorted grid (clipped to the grid)."""
    v = np.clip(v, grid[0], grid[-1])
    k = np.clip(np.searchsorted(grid, v, side="right") - 1, 0, grid.size - 2)
    return k, (v - grid[k]) / (grid[k + 1] - grid[k])


def _trilinear(table, a, b, c):
    """Interpolate ``table[A, B, C]`` at (index, fraction) pairs a, b, c."""
    (i, fi), (j, fj), (k, fk) = a, b, c
    out = 0.0
    for di, wi in ((0, 1.0 - fi), (1, fi)):
        for dj, wj in ((0, 1.0 - fj), (1, fj)):
            for dk, wk in ((0, 1.0 - fk), (1, fk)):
                out = out + wi * wj * wk * table[i + di, j + dj, k + dk]
    return out


@functools.cache
def _shape_tables() -> tuple[np.ndarray, np.ndarray]:
    """Tables of N(0, 1) - F with F = 0 (prob 1 - p) or min(Exp(x), x c).

    Returns (median on the (p, x, c) grid, tau / sigma on the (p, c, log y) grid), where
    tau / sigma is the Gaussian width that gives a 16-84 % half width sigma when
    y = sigma / (exponential scale).
    """
    p, x, c = np.meshgrid(_TAB_P, np.maximum(_TAB_X, 1e-6), _TAB_C, indexing="ij")
    q = []
    for level in (0.15865525393145707, 0.5, 0.8413447460685429):
        lo, hi = np.full(p.shape, -8.0) - x * c, np.full(p.shape, 8.0)
        for _ in range(30):
            mid = 0.5 * (lo + hi)
            below = _composition_cdf(mid, p, x, c) < level
            lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
        q.append(0.5 * (lo + hi))
    half = 0.5 * (q[2] - q[0])  # 16-84 % half width in units of the Gaussian width
    # invert y = half(x) / x (decreasing in x) for each (p, c): x(y), then tau / sigma = 1 / (x y)
    y = np.exp(_TAB_LY)
    inv = np.empty((_TAB_P.size, _TAB_C.size, y.size))
    xs = np.maximum(_TAB_X[1:], 1e-6)
    for ip in range(_TAB_P.size):
        for ic in range(_TAB_C.size):
            g = half[ip, 1:, ic] / xs
            xy = np.interp(np.log(y), np.log(g[::-1]), xs[::-1], left=xs[-1], right=np.nan)
            xy = np.where(np.isnan(xy), half[ip, 1, ic] / y, xy)  # beyond the grid: half ~ const
            inv[ip, ic] = np.minimum(1.0 / (xy * y), 1.0)
    return q[1], inv


def relative_response(rng, lat: Latents, cls, gen_pt, eta, sigma, x_e, x_mu, nu_pt, raw_ref) -> np.ndarray:
    """Response w.r.t. ``R_uds x gen pT`` of hadronic jets: 1 + the observable terms + sigma_irr N.

    ``sigma`` is the total relative resolution (sigma_JER x RESOLUTION_SCALE), ``raw_ref``
    the nominal raw pT (to express the residual pileup relative to the jet).  The
    class median of the result (pileup included) is ``mean_response / R_uds``, its
    variance ``sigma^2``.
    """
    had = 1.0 - x_mu - x_e
    x = x_e + x_mu
    r_nh = nh_response(gen_pt, eta)
    fwd = lat.forward
    total = sum(measured(lat, had, x_e, x_mu, r_nh).values())
    ref = _mean_sum(np.full(cls.shape, UDS), gen_pt, had, x, r_nh, fwd)
    d_comp = total / ref - 1.0
    e1, e2, e3 = share_moments(cls, gen_pt, fwd)
    comp_mean = (had * (1.0 - e1 * (1.0 - r_nh)) + x) / ref - 1.0
    var_f, k3_f = _cumulants(e1, e2, e3)
    slope = had * (1.0 - r_nh) / ref  # d_comp = -slope (f_h - <f_h>) + measurement noise
    e_jet = np.maximum(gen_pt * np.cosh(np.clip(eta, -5, 5)) * had, 1.0)
    var_hcal = (had * r_nh * HCAL_STOCHASTIC / ref) ** 2 * e1 / e_jet

    kappa = fragmentation_slope(gen_pt, eta)
    d_frag = -kappa * lat.s
    frag_mean = -kappa * FRAG_SHIFT[cls]

    nu_mean, nu_var, nu_k3 = nu_moments(cls, gen_pt)
    d_sl = -NU_LOSS * np.minimum(nu_pt / np.maximum(gen_pt, 1.0), NU_CAP)
    sl_mean = -NU_LOSS * nu_mean

    raw_ref = np.maximum(raw_ref, 1.0)
    var_pu, k3_pu = lat.pu_var / raw_ref**2, lat.pu_k3 / raw_ref**3
    var_obs = slope**2 * var_f + var_hcal + kappa**2 + NU_LOSS**2 * nu_var
    # keep at least IRREDUCIBLE_MIN of the width unobservable: scale the observable deviations
    room = np.maximum((1.0 - IRREDUCIBLE_MIN**2) * sigma**2 - var_pu, 0.25 * var_obs)
    lam = np.minimum(1.0, np.sqrt(room / np.maximum(var_obs, 1e-12)))
    dev = lam * (d_comp - comp_mean + d_frag - frag_mean + d_sl - sl_mean)

    # sigma_irr such that the 16-84 % half width of the deviations is sigma.  The neutral-hadron
    # share in the tracker (zero-inflated capped exponential) is treated exactly, every other
    # term as Gaussian; the median is then aligned with the class response (Cornish-Fisher for
    # the remaining skewness: semileptonic decays, pileup, the hadron share outside the tracker).
    a = lam * slope
    p_nh, theta = nh_law(cls, gen_pt)
    p_eff = np.where(fwd, 0.0, p_nh)  # outside the tracker: Gaussian approximation
    var_gauss = lam**2 * (var_hcal + kappa**2 + NU_LOSS**2 * nu_var) + var_pu + np.where(fwd, a**2 * var_f, 0.0)
    tau_min = np.sqrt(var_gauss + (IRREDUCIBLE_MIN * sigma) ** 2)
    median_tab, tau_tab = _shape_tables()
    scale = np.maximum(a * theta, 1e-9)
    ip, ic = _grid_index(_TAB_P, p_eff), _grid_index(_TAB_C, NH_MAX_SHARE / theta)
    tau = sigma * _trilinear(tau_tab, ip, ic, _grid_index(_TAB_LY, np.log(sigma / scale)))
    tau = np.maximum(tau, tau_min)
    sigma_irr = np.sqrt(np.maximum(tau**2 - var_gauss, (IRREDUCIBLE_MIN * sigma) ** 2))
    median_std = _trilinear(median_tab, ip, _grid_index(_TAB_X, scale / tau), ic)
    median_comp = np.where(fwd, 0.0, a * e1 + tau * median_std)
    var_total = tau**2 + np.where(fwd, 0.0, a**2 * var_f)
    k3_rest = -(lam**3) * NU_LOSS**3 * nu_k3 + k3_pu + np.where(fwd, -(a**3) * k3_f, 0.0)
    median_dev = median_comp - k3_rest / (6.0 * var_total)

    d_res = mean_response(cls, gen_pt) / RESPONSE[UDS] - 1.0 - comp_mean - frag_mean - sl_mean - median_dev
    return 1.0 + d_res + comp_mean + frag_mean + sl_mean + dev + sigma_irr * rng.normal(size=cls.size)
