"""Event-level detector conditions and quantities: pileup, vertices, rho, MET, filters."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# 2022-like pileup profile: Gamma distribution of the true interaction count
PU_MEAN, PU_SD = 45.0, 13.0
RHO_PER_PU, RHO_OFFSET, RHO_SD = 0.6, 1.0, 1.8
PV_EFF, PV_GOOD_FRAC = 0.82, 0.92
# MET: unclustered energy and its per-component resolution sigma = k * sqrt(sumEt)
PF_UNCLUSTERED = (250.0, 35.0)  # mean unclustered sumEt = a + b * nPU (GeV)
PUPPI_UNCLUSTERED = (120.0, 3.0)
PF_MET_K, PUPPI_MET_K = 0.45, 0.60

MET_FILTERS = (
    "goodVertices",
    "globalSuperTightHalo2016Filter",
    "EcalDeadCellTriggerPrimitiveFilter",
    "BadPFMuonFilter",
    "BadPFMuonDzFilter",
    "hfNoisyHitsFilter",
    "eeBadScFilter",
    "ecalBadCalibFilter",
)


@dataclass
class Pileup:
    """Per-event pileup conditions."""

    n_true: np.ndarray
    n_pu: np.ndarray
    rho: np.ndarray
    branches: dict[str, np.ndarray]


def pileup(rng: np.random.Generator, n: int) -> Pileup:
    """Pileup profile, vertex counts and rho (rho ~ 0.6 x nPU)."""
    k = (PU_MEAN / PU_SD) ** 2
    n_true = np.clip(rng.gamma(k, PU_MEAN / k, n), 1.0, 99.0)
    n_pu = rng.poisson(n_true)
    npvs = np.clip(rng.binomial(n_pu + 1, PV_EFF), 1, 255)
    npvs_good = np.clip(rng.binomial(npvs, PV_GOOD_FRAC), 1, 255)
    rho = np.clip(RHO_OFFSET + RHO_PER_PU * n_pu + rng.normal(0.0, RHO_SD, n), 0.3, None)
    branches = {
        "Pileup_nTrueInt": n_true,
        "Pileup_nPU": n_pu,
        "Pileup_sumEOOT": rng.poisson(n_true),
        "Pileup_sumLOOT": rng.poisson(n_true),
        "PV_npvs": npvs,
        "PV_npvsGood": npvs_good,
        "PV_x": rng.normal(-0.021, 0.0015, n),
        "PV_y": rng.normal(0.041, 0.0015, n),
        "PV_z": rng.normal(0.3, 3.5, n),
        "Rho_fixedGridRhoFastjetAll": rho,
        "Rho_fixedGridRhoFastjetCentral": np.clip(rho * 0.97 + rng.normal(0.0, 0.8, n), 0.2, None),
        "Rho_fixedGridRhoFastjetCentralNeutral": np.clip(0.08 * rho + rng.normal(0.0, 0.3, n), 0.0, None),
        "Rho_fixedGridRhoFastjetCentralChargedPileUp": np.clip(0.45 * rho + rng.normal(0.0, 0.8, n), 0.0, None),
    }
    return Pileup(n_true, n_pu, rho, branches)


def missing_et(
    rng: np.random.Generator,
    gen_nu_px: np.ndarray,
    gen_nu_py: np.ndarray,
    mis_px: np.ndarray,
    mis_py: np.ndarray,
    visible_sumet: np.ndarray,
    jet_var: np.ndarray,
    pu: Pileup,
) -> dict[str, np.ndarray]:
    """GenMET, PF MET and Puppi MET.

    Reco MET = true neutrino pT sum - (reco - gen) of the reconstructed objects
    (``mis_px/py``; fake pileup jets enter with their full momentum) + an
    unclustered-energy term Gaussian in each component with
    sigma = k sqrt(sumEt).  ``jet_var`` is the jets' summed pT variance, for the
    MET covariance and significance.
    """
    n = gen_nu_px.size
    out: dict[str, np.ndarray] = {
        "GenMET_pt": np.hypot(gen_nu_px, gen_nu_py),
        "GenMET_phi": np.arctan2(gen_nu_py, gen_nu_px),
    }
    for name, (a, b), k in (("MET", PF_UNCLUSTERED, PF_MET_K), ("PuppiMET", PUPPI_UNCLUSTERED, PUPPI_MET_K)):
        mean_u = a + b * pu.n_pu
        unclustered = rng.gamma(6.0, mean_u / 6.0)
        sumet = visible_sumet + unclustered
        sigma = k * np.sqrt(sumet)
        px = gen_nu_px - mis_px + rng.normal(0.0, 1.0, n) * sigma
        py = gen_nu_py - mis_py + rng.normal(0.0, 1.0, n) * sigma
        out[f"{name}_pt"] = np.hypot(px, py)
        out[f"{name}_phi"] = np.arctan2(py, px)
        out[f"{name}_sumEt"] = sumet
        if name == "MET":
            var = sigma**2 + 0.5 * jet_var
            cov_xy = rng.normal(0.0, 0.05, n) * var
            out["MET_covXX"] = var
            out["MET_covYY"] = var
            out["MET_covXY"] = cov_xy
            out["MET_significance"] = (px**2 + py**2) / var
    return out


def met_filters(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """MET filter flags: each fails in 0.1% of events; Flag_METFilters is their AND."""
    out = {f"Flag_{f}": rng.uniform(size=n) > 0.001 for f in MET_FILTERS}
    all_ok = np.ones(n, bool)
    for v in out.values():
        all_ok &= v
    out["Flag_METFilters"] = all_ok
    return out
