"""Detector response for jets: GenJet/Jet (AK4 Puppi), GenJetAK8/FatJet (AK8 Puppi), SubJet.

AK4 reco jets are made from particle-level jets (plus pileup jets).  A target
corrected pt is drawn around gen pt x flavour response with the real Summer22
Puppi MC resolution as total width; :mod:`.response` decomposes that
fluctuation into observable causes (neutral-hadron share, fragmentation,
semileptonic decays, residual pileup) and an unobservable rest, and draws the
jet's composition and constituent multiplicities consistently.  The raw pt is
the value the real Summer22 JEC maps onto the target (plus the residual pileup),
and ``Jet_pt`` is raw x JEC(raw) from correctionlib.  Flavour-tagging scores and
the PNet regression are drawn from flavour-dependent laws; all numbers are
documented in docs/generator.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.special import ndtr, ndtri

from . import response as resp
from .enrich import TagBias
from .genjets import KIND_PARTON, Clusters, Inputs
from .jec import jec, jer
from .kinematics import delta_phi, logit, sigmoid
from .padded import compact, local_index, order_and_select
from .processes import HardEvent
from .reco_event import Pileup
from .response import BOTTOM, CHARM, FRACTIONS, GLUON, LEPTON, PILEUP, RESOLUTION_SCALE, RESPONSE, UDS  # noqa: F401

AK4_PT_MIN = 15.0
AK4_ETA_MAX = 5.0
GENJET_PT_MIN = 10.0
AK8_PT_MIN = 170.0
GENJETAK8_PT_MIN = 100.0
MAX_PU_JETS = 4
PU_JETS_PER_PU = 0.03  # mean number of pileup-jet candidates per pileup interaction
BTAG_ETA_MAX = 2.5
PU_OFFSET = 0.04  # residual raw-pt offset per unit rho x area (GeV)

# PNet b score: logit(score) ~ N(mean, sd)
B_LOGIT = np.array([[-5.32, 1.80], [-5.00, 1.85], [-3.27, 2.07], [1.975, 3.25], [-6.0, 1.5], [-5.8, 1.7]])
# c share of the non-b probability (= CvL): logit ~ N(mean, sd)
C_LOGIT = np.array([[-2.5, 1.3], [-2.3, 1.3], [1.0, 1.4], [-0.3, 1.4], [-3.0, 1.0], [-2.8, 1.2]])
# light-quark share of light probability (= QvG): logit ~ N(mean, sd)
Q_LOGIT = np.array([[1.0, 1.3], [-1.2, 1.3], [0.5, 1.3], [0.3, 1.3], [1.5, 1.0], [-0.5, 1.2]])
Q_LOGIT_FORWARD = np.array([[0.5, 1.3], [-0.6, 1.3], [0.3, 1.3], [0.2, 1.3], [1.0, 1.0], [-0.3, 1.2]])

# per-jet bookkeeping kept for the PFNano constituents (not written): measured pT per type (GeV) ...
TYPE_KEYS = ("ch", "nh", "ga", "ce", "mu")
# ... and constituent counts per type
COUNT_KEYS = ("ch", "nh", "ga", "ce", "e", "mu", "pu_ch", "pu_ga", "pu_nh")


def _logit_normal(rng, params: np.ndarray, cls: np.ndarray, z: np.ndarray | None = None, corr: float = 0.0) -> np.ndarray:
    """Logit-normal score; optionally correlated (``corr``) with a standard-normal latent ``z``."""
    noise = rng.normal(size=cls.size)
    if z is not None:
        noise = corr * z + np.sqrt(1.0 - corr**2) * noise
    return sigmoid(params[cls, 0] + params[cls, 1] * noise)


# ----------------------------------------------------------------------- GenJets


def gen_collection(cl: Clusters, pt_min: float, prefix: str):
    """GenJet-like collection from clusters: (new_index, counts, flat fields)."""
    pt = cl.pt
    valid = cl.valid & (pt > pt_min)
    order, new_index = order_and_select(valid, pt)
    counts, flat = compact(
        valid,
        order,
        {"pt": pt, "eta": cl.eta, "phi": cl.phi, "mass": cl.mass, "hadronFlavour": cl.hadflav, "partonFlavour": cl.partflav},
    )
    return new_index, counts, {f"{prefix}_{k}": v for k, v in flat.items()}


# ----------------------------------------------------------------------- AK4


@dataclass
class AK4:
    """Reco AK4 jets: flat fields in final order plus bookkeeping for leptons, MET and constituents."""

    counts: np.ndarray
    fields: dict[str, np.ndarray]
    new_index: np.ndarray  # (n, K_clusters + MAX_PU_JETS) column -> Jet index
    mis_px: np.ndarray  # per-event sum of (reco - gen) px of the jets (pileup jets: reco)
    mis_py: np.ndarray
    sum_pt: np.ndarray
    var_pt: np.ndarray
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # per-jet inputs of the PFNano constituents
    tag_weight: np.ndarray | None = None  # per-event weight factor of a b-tag bias (None without)


def reco_ak4(rng: np.random.Generator, cl: Clusters, genjet_index: np.ndarray, pu: Pileup,
             tag_bias: TagBias | None = None) -> AK4:
    """AK4 Puppi reco jets from AK4 particle-level clusters plus pileup jets.

    ``tag_bias`` (:class:`crema.generate.enrich.TagBias`): mistag-enriched b-tag scores, with the
    per-event weight factor in ``AK4.tag_weight``."""
    n, K = cl.valid.shape
    g_pt, g_eta, g_phi, g_m = cl.pt, cl.eta, cl.phi, cl.mass
    cls = np.where(
        cl.hadflav == 5,
        BOTTOM,
        np.where(cl.hadflav == 4, CHARM, np.where(cl.partflav == 0, LEPTON, np.where(np.abs(cl.partflav) == 21, GLUON, UDS))),
    )
    cand = cl.valid & (g_pt > 5.0) & (np.abs(g_eta) < AK4_ETA_MAX + 0.2)
    rho = pu.rho[:, None]
    sigma = jer()(g_eta, g_pt, np.broadcast_to(rho, g_pt.shape)) * RESOLUTION_SCALE[cls]
    ang = 0.008 + 0.25 / np.maximum(g_pt, 5.0)
    eta = g_eta + ang * rng.normal(size=(n, K))
    phi = delta_phi(g_phi + ang * rng.normal(size=(n, K)), 0.0)  # wrapped to [-pi, pi)

    # pileup jets: no gen match, mostly forward (Puppi removes charged PU)
    n_puj = np.minimum(rng.poisson(PU_JETS_PER_PU * pu.n_pu), MAX_PU_JETS)
    pu_valid = np.arange(MAX_PU_JETS)[None, :] < n_puj[:, None]
    central = rng.uniform(size=(n, MAX_PU_JETS)) < 0.35
    pu_abseta = np.where(central, rng.uniform(0.0, BTAG_ETA_MAX, (n, MAX_PU_JETS)), rng.uniform(BTAG_ETA_MAX, 4.7, (n, MAX_PU_JETS)))
    pu_eta = pu_abseta * np.where(rng.uniform(size=(n, MAX_PU_JETS)) < 0.5, 1.0, -1.0)
    pu_phi = rng.uniform(-np.pi, np.pi, (n, MAX_PU_JETS))
    pu_target = 10.0 + rng.exponential(9.0, (n, MAX_PU_JETS))

    cat = lambda a, b: np.concatenate([a, b], axis=1)  # noqa: E731
    z_pu = np.zeros((n, MAX_PU_JETS))
    all_cls = cat(cls, np.full((n, MAX_PU_JETS), PILEUP))
    all_cand = cat(cand, pu_valid)
    all_eta = cat(eta, pu_eta)
    all_phi = cat(phi, pu_phi)
    area = np.clip(rng.normal(0.50, 0.035, all_cls.shape), 0.2, 0.8)

    # the response model works on the flat list of candidates
    ic = np.flatnonzero(all_cand.ravel())
    fl = lambda a: np.broadcast_to(a, all_cls.shape).reshape(-1)[ic]  # noqa: E731
    c_f, eta_f, area_f = fl(all_cls), fl(all_eta), fl(area)
    rho_f = fl(np.broadcast_to(rho, all_cls.shape))
    gen_f = fl(cat(g_pt, z_pu))
    scale_pt = np.where(c_f == PILEUP, fl(cat(np.zeros((n, K)), pu_target)), gen_f)  # what sets multiplicities
    x_mu = np.clip(fl(cat(cl.lep_mu, z_pu)) / np.maximum(gen_f, 1.0), 0.0, 0.98)
    x_e = np.clip(fl(cat(cl.lep_e, z_pu)) / np.maximum(gen_f, 1.0), 0.0, 0.98 - x_mu)
    x_mu = np.where(c_f == PILEUP, 0.0, x_mu)
    x_e = np.where(c_f == PILEUP, 0.0, x_e)
    nu_f = fl(cat(cl.nu_pt, z_pu))
    lat = resp.draw(rng, c_f, scale_pt, eta_f, rho_f, area_f, x_e, x_mu)

    # target corrected pt: observable causes + unobservable rest around the class response
    hadronic = c_f <= BOTTOM
    h = np.flatnonzero(hadronic)
    g_h = gen_f[h]
    raw_ref = jec().raw_for(g_h * resp.mean_response(c_f[h], g_h), area_f[h], eta_f[h], rho_f[h])
    rel = resp.relative_response(
        rng, lat.subset(h), c_f[h], g_h, eta_f[h], fl(cat(sigma, z_pu))[h], x_e[h], x_mu[h], nu_f[h], raw_ref
    )
    target = np.zeros(ic.size)
    target[h] = g_h * RESPONSE[UDS] * rel
    tail = rng.uniform(size=ic.size) < 0.02  # non-Gaussian low tail (cracks, punch-through)
    target = np.where(tail, target * rng.uniform(0.7, 0.95, ic.size), target)
    lep_target = gen_f * (1.0 + 0.02 * rng.normal(size=ic.size)) + rng.exponential(1.5, ic.size)
    target = np.where(c_f == LEPTON, lep_target, target)
    target = np.where(c_f == PILEUP, scale_pt, target)
    target = np.maximum(target, 0.5)

    # raw pt from the inverse JEC; residual pileup: mean offset ~ rho x area plus the fluctuation of
    # the residual pileup particles (their mean is absorbed by the JEC); stored pt from the forward JEC
    sel = (target > 12.0) & (np.abs(eta_f) < AK4_ETA_MAX)
    s = np.flatnonzero(sel)
    raw_jec = jec().raw_for(target[s], area_f[s], eta_f[s], rho_f[s])
    pu_sum = lat.pu["ch"][s] + lat.pu["ga"][s] + lat.pu["nh"][s]
    raw_core = np.maximum(raw_jec + PU_OFFSET * rho_f[s] * area_f[s] - lat.pu_mean[s], 0.3 * raw_jec)
    raw_s = raw_core + pu_sum
    pt_s = raw_s * jec().factor(area_f[s], eta_f[s], raw_s, rho_f[s])
    shape = all_cls.shape
    raw = np.zeros(shape)
    pt = np.zeros(shape)
    pos = np.full(shape, -1, dtype=np.int64)
    raw.reshape(-1)[ic[s]] = raw_s
    pt.reshape(-1)[ic[s]] = pt_s
    pos.reshape(-1)[ic] = np.arange(ic.size)
    keep = np.zeros(shape, bool)
    keep.reshape(-1)[ic[s]] = pt_s > AK4_PT_MIN
    order, new_index = order_and_select(keep, pt)

    gen_idx = cat(genjet_index, np.full((n, MAX_PU_JETS), -1))
    counts, f = compact(
        keep,
        order,
        {
            "pt": pt,
            "raw": raw,
            "eta": all_eta,
            "phi": all_phi,
            "area": area,
            "cls": all_cls,
            "pos": pos,
            "gen_idx": gen_idx,
            "g_pt": cat(g_pt, z_pu),
            "g_phi": cat(g_phi, z_pu),
            "g_m": cat(g_m, z_pu),
            "sigma": cat(sigma, np.full((n, MAX_PU_JETS), 0.3)),
            "hadflav": cat(cl.hadflav, np.zeros((n, MAX_PU_JETS), np.uint8)),
            "partflav": cat(cl.partflav, np.zeros((n, MAX_PU_JETS), np.int16)),
            "nu": cat(cl.nu_pt, z_pu),
        },
    )
    m = counts.sum()
    c = f["cls"]
    p = f["pos"]
    is_pu = c == PILEUP
    pt, raw, g_pt = f["pt"], f["raw"], f["g_pt"]
    fields: dict[str, np.ndarray] = {
        "pt": pt,
        "eta": f["eta"],
        "phi": f["phi"],
        "mass": np.where(is_pu, 0.12 * pt, np.clip(f["g_m"] * pt / np.maximum(g_pt, 1.0) * (1.0 + 0.08 * rng.normal(size=m)), 0.0, None)),
        "rawFactor": 1.0 - raw / pt,
        "area": f["area"],
        "genJetIdx": f["gen_idx"],
        "hadronFlavour": f["hadflav"],
        "partonFlavour": f["partflav"],
    }
    tagging, jet_factor = _flavour_tagging(rng, c, f["eta"], pt, lat.z[p], tag_bias)
    fields.update(tagging)
    fields.update(_regression(rng, c, pt, raw, g_pt, f["nu"], f["sigma"]))
    meas = resp.measured(lat, 1.0 - x_mu - x_e, x_e, x_mu, resp.nh_response(scale_pt, eta_f))
    comp, extra = _composition(rng, lat, meas, p, raw, lat.forward[p])
    fields.update(comp)
    extra.update(s=lat.s[p], hadflav=f["hadflav"], cls=c, nu=f["nu"], g_pt=g_pt)

    # MET bookkeeping: mismeasurement of hadronic jets, full momentum of fake PU jets
    ev = np.repeat(np.arange(n), counts)
    hadronic = c != LEPTON
    dpx = np.where(is_pu, pt * np.cos(f["phi"]), pt * np.cos(f["phi"]) - g_pt * np.cos(f["g_phi"]))
    dpy = np.where(is_pu, pt * np.sin(f["phi"]), pt * np.sin(f["phi"]) - g_pt * np.sin(f["g_phi"]))
    w = hadronic.astype(float)
    tag_weight = None
    if jet_factor is not None:  # product over each event's jets, as a sum of logs
        tag_weight = np.exp(np.bincount(ev, np.log(jet_factor), minlength=n))
    return AK4(
        counts=counts,
        fields=fields,
        new_index=new_index,
        mis_px=np.bincount(ev, dpx * w, minlength=n),
        mis_py=np.bincount(ev, dpy * w, minlength=n),
        sum_pt=np.bincount(ev, pt * w, minlength=n),
        var_pt=np.bincount(ev, (f["sigma"] * pt) ** 2 * w, minlength=n),
        extra=extra,
        tag_weight=tag_weight,
    )


def _flavour_tagging(rng, cls: np.ndarray, eta: np.ndarray, pt: np.ndarray, z: np.ndarray,
                     tag_bias: TagBias | None = None) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """PNet (and DeepJet) scores as a consistent b / c / uds / g / tau probability vector, and
    the per-jet weight factors of ``tag_bias`` (None without).

    The QvG share is correlated with the jet's fragmentation softness ``z`` (softer:
    more gluon-like) without changing its distribution in each class.
    """
    m = cls.size
    central = np.abs(eta) < BTAG_ETA_MAX
    noise = rng.normal(size=m)
    factor = None
    if tag_bias is not None:
        noise, factor = _tag_biased(rng, noise, cls, central & (cls != BOTTOM) & (pt >= tag_bias.pt_min), tag_bias)
    b = sigmoid(B_LOGIT[cls, 0] + B_LOGIT[cls, 1] * noise)
    c_share = _logit_normal(rng, C_LOGIT, cls)
    q_share = _logit_normal(rng, Q_LOGIT, cls, -z, resp.QVG_FRAG_CORRELATION)
    p_tau = rng.beta(0.5, 60.0, m)
    rest = (1.0 - b) * (1.0 - p_tau)
    p_c = rest * c_share
    p_uds = rest * (1.0 - c_share) * q_share
    p_g = rest * (1.0 - c_share) * (1.0 - q_share)
    fwd_qvg = _logit_normal(rng, Q_LOGIT_FORWARD, cls, -z, resp.QVG_FRAG_CORRELATION)
    undefined = np.float64(-1.0)
    out = {
        "btagPNetB": np.where(central, b, undefined),
        "btagPNetCvB": np.where(central, p_c / (p_c + b), undefined),
        "btagPNetCvL": np.where(central, p_c / (p_c + p_uds + p_g), undefined),
        "btagPNetCvNotB": np.where(central, p_c / (1.0 - b), undefined),
        "btagPNetQvG": np.where(central, p_uds / (p_uds + p_g), fwd_qvg),
        "btagPNetTauVJet": np.where(central, p_tau, undefined),
    }
    # DeepJet: noisier function of the same latent scores (defined everywhere)
    lb = np.where(central, logit(np.clip(b, 1e-6, 1 - 1e-6)), B_LOGIT[LEPTON, 0])
    out["btagDeepFlavB"] = sigmoid(0.85 * lb + 0.9 * rng.normal(size=m))
    out["btagDeepFlavCvL"] = sigmoid(0.85 * logit(np.clip(c_share, 1e-6, 1 - 1e-6)) + 0.9 * rng.normal(size=m))
    out["btagDeepFlavCvB"] = sigmoid(0.85 * logit(np.clip(p_c / (p_c + b), 1e-6, 1 - 1e-6)) + 0.9 * rng.normal(size=m))
    out["btagDeepFlavQG"] = sigmoid(0.85 * logit(np.clip(1.0 - q_share, 1e-6, 1 - 1e-6)) + 0.9 * rng.normal(size=m))
    return out, factor


def _tag_biased(rng, noise: np.ndarray, cls: np.ndarray, eligible: np.ndarray, bias: TagBias
                ) -> tuple[np.ndarray, np.ndarray]:
    """Standard-normal b-score noise with eligible jets drawn, with probability ``bias.share``, from
    the tail above the working point of their class; and each jet's density ratio (law / mixture)."""
    # the working point in each class's standard-normal noise: logit(score) = mean + sd * noise
    z_min = (logit(np.float64(bias.score_min)) - B_LOGIT[:, 0]) / B_LOGIT[:, 1]
    above = ndtr(-z_min)  # P(noise > z_min) per class
    pick = eligible & (rng.uniform(size=cls.size) < bias.share)
    u = rng.uniform(size=int(pick.sum()))
    # the tail's inverse CDF from the upper side (exact for small tail probabilities)
    tail = -ndtri(np.clip(u * above[cls[pick]], 1e-300, None))
    noise = noise.copy()
    noise[pick] = np.maximum(tail, z_min[cls[pick]])
    tagged = noise > z_min[cls]
    q = bias.share
    factor = np.where(eligible, np.where(tagged, 1.0 / ((1.0 - q) + q / above[cls]), 1.0 / (1.0 - q)), 1.0)
    return noise, factor


def _regression(rng, cls, pt, raw, g_pt, nu_pt, sigma) -> dict[str, np.ndarray]:
    """PNet pt regression: visible-pt target with 80% of the JER, and a neutrino correction."""
    m = cls.size
    is_pu = cls == PILEUP
    is_lep = cls == LEPTON
    s_reg = np.where(is_lep, 0.03, 0.8 * sigma)
    reg_vis = g_pt * (1.0 + s_reg * rng.normal(size=m))
    corr = np.where(is_pu, pt / raw * np.exp(0.15 * rng.normal(size=m)), reg_vis / raw)
    nu_frac = nu_pt / np.maximum(g_pt, 1.0)
    base = np.select([cls == BOTTOM, cls == CHARM], [0.015, 0.008], 0.002)
    nu_corr = 1.0 + base + nu_frac * rng.uniform(0.5, 1.0, m) + 0.01 * np.abs(rng.normal(size=m))
    nu_corr = np.where(is_pu | is_lep, 1.0 + 0.002 * np.abs(rng.normal(size=m)), nu_corr)
    res = np.where(is_pu, 0.3, s_reg) * np.exp(0.15 * rng.normal(size=m))
    return {
        "PNetRegPtRawCorr": np.clip(corr, 0.0, 5.0),
        "PNetRegPtRawCorrNeutrino": np.clip(nu_corr, 1.0, 3.0),
        "PNetRegPtRawRes": np.clip(res, 0.01, 0.6),
    }


def _composition(rng, lat: resp.Latents, meas: dict, pos: np.ndarray, raw: np.ndarray, forward: np.ndarray):
    """Energy fractions, constituent count and jet ID of the kept jets (flat candidate index ``pos``).

    The measured pT of each constituent type (:func:`.response.measured`) shares the
    raw pt left after the residual pileup particles, which add their own pT to the
    charged (outside the tracker: neutral) hadron, photon and neutral-hadron parts.
    Returns the Jet fields and the per-jet bookkeeping for the PFNano constituents.
    """
    m = pos.size
    mt = {k: meas[k][pos] for k in TYPE_KEYS}
    total = sum(mt.values())
    o = {k: lat.pu[k][pos] for k in ("ch", "ga", "nh")}
    core = raw - (o["ch"] + o["ga"] + o["nh"])
    t = {k: core * mt[k] / total for k in TYPE_KEYS}  # GeV, before pileup
    counts = {k: lat.counts[k][pos].astype(np.int64) for k in COUNT_KEYS}
    # outside the tracker there are no tracks: hadrons are neutral hadrons, electrons photons
    fwd = lambda a, b: np.where(forward, a + b, a)  # noqa: E731
    o["nh"], o["ch"] = fwd(o["nh"], o["ch"]), np.where(forward, 0.0, o["ch"])
    counts["pu_nh"], counts["pu_ch"] = fwd(counts["pu_nh"], counts["pu_ch"]), np.where(forward, 0, counts["pu_ch"])
    counts["nh"], counts["ch"] = fwd(counts["nh"], counts["ch"]), np.where(forward, 0, counts["ch"])
    counts["ga"] = fwd(counts["ga"], counts["ce"] + counts["e"])
    counts["ce"], counts["e"] = np.where(forward, 0, counts["ce"]), np.where(forward, 0, counts["e"])
    ch_h = (t["ch"] + o["ch"]) / raw
    ne_h = (t["nh"] + o["nh"]) / raw
    ch_em = t["ce"] / raw
    ne_em = (t["ga"] + o["ga"]) / raw
    mu_ef = t["mu"] / raw
    n_const = sum(counts.values())
    excess = np.maximum(n_const - 255, 0)  # Jet_nConstituents is a uint8: drop soft photons
    counts["ga"] = counts["ga"] - np.minimum(excess, counts["ga"] - 1)
    n_const = sum(counts.values())
    tight = (ne_h < 0.99) & (ne_em < 0.9) & (rng.uniform(size=m) > 0.004)
    lep_veto = tight & (mu_ef < 0.8) & (ch_em < 0.8)
    jet_id = np.where(lep_veto, 6, np.where(tight, 2, 0))
    fields = {
        "chHEF": ch_h,
        "neHEF": ne_h,
        "chEmEF": ch_em,
        "neEmEF": ne_em,
        "muEF": mu_ef,
        "nConstituents": n_const,
        "jetId": jet_id,
    }
    extra = {f"T_{k}": v for k, v in t.items()}
    extra.update({f"O_{k}": v for k, v in o.items()})
    extra.update({f"n_{k}": v for k, v in counts.items()})
    # the lepton electron's charged-EM pT (the rest of T_ce is conversions)
    extra["T_e"] = np.where(forward, 0.0, core * lat.x_e_ch[pos] / total)
    extra["forward"] = forward
    extra["hf"] = lat.hf[pos]
    extra["raw"] = raw
    return fields, extra


def attach_leptons(ak4: AK4, n: int, flavour: str, lep_counts: np.ndarray, lep_jet_idx: np.ndarray) -> None:
    """Fill Jet_n{Electrons,Muons} and Jet_{electron,muon}Idx{1,2} from the leptons' jetIdx."""
    offsets = np.concatenate([[0], np.cumsum(ak4.counts)])
    ev = np.repeat(np.arange(n), lep_counts)
    lep_local = local_index(lep_counts)
    has = lep_jet_idx >= 0
    key = offsets[ev[has]] + lep_jet_idx[has]
    idx = lep_local[has]
    m = ak4.counts.sum()
    count = np.bincount(key, minlength=m)
    idx1 = np.full(m, -1)
    idx2 = np.full(m, -1)
    # leptons are in collection order, so the first occurrence per jet is the leading one
    uniq, first = np.unique(key, return_index=True)
    idx1[uniq] = idx[first]
    rest = np.ones(key.size, bool)
    rest[first] = False
    uniq2, second = np.unique(key[rest], return_index=True)
    idx2[uniq2] = idx[rest][second]
    name = "Electron" if flavour == "e" else "Muon"
    if flavour == "mu":
        # a muon that was not reconstructed is not a PF muon: its energy counts as charged hadron
        # (outside the tracker: as neutral hadron)
        f, x = ak4.fields, ak4.extra
        lost = (count == 0) & (f["muEF"] > 0)
        fwd = x["forward"] if x else np.zeros(m, bool)
        f["chHEF"] = np.where(lost & ~fwd, f["chHEF"] + f["muEF"], f["chHEF"])
        f["neHEF"] = np.where(lost & fwd, f["neHEF"] + f["muEF"], f["neHEF"])
        f["muEF"] = np.where(lost, 0.0, f["muEF"])
        f["jetId"] = np.where(lost & (f["jetId"] == 2) & (f["chEmEF"] < 0.8), 6, f["jetId"])
        if x:
            lost_mu = lost & (x["n_mu"] > 0)
            for key_t, key_n in (("ch", "ch"), ("nh", "nh")):
                sel = lost_mu & (fwd if key_t == "nh" else ~fwd)
                x[f"T_{key_t}"] = np.where(sel, x[f"T_{key_t}"] + x["T_mu"], x[f"T_{key_t}"])
                x[f"n_{key_n}"] = np.where(sel, x[f"n_{key_n}"] + x["n_mu"], x[f"n_{key_n}"])
            x["T_mu"] = np.where(lost_mu, 0.0, x["T_mu"])
            x["n_mu"] = np.where(lost_mu, 0, x["n_mu"])
    ak4.fields[f"n{name}s"] = count
    ak4.fields[f"{name.lower()}Idx1"] = idx1
    ak4.fields[f"{name.lower()}Idx2"] = idx2


# ----------------------------------------------------------------------- AK8

QCD, QCD_B, W_JET, HBB, TOP = range(5)
# PNet AK8 latent logits per jet class for [QCD, Xbb, Xcc, Xqq, top, W]
AK8_LOGITS = np.array(
    [
        [2.5, -1.0, -1.0, -0.5, -1.0, -0.5],
        [2.0, 0.7, -1.0, -1.5, -0.3, -1.5],
        [0.0, -1.5, -0.5, 2.0, 0.3, 2.5],
        [0.0, 3.2, -0.5, -1.5, -1.0, -1.5],
        [0.0, -0.5, -1.0, -0.5, 3.0, 0.8],
    ]
)
AK8_LOGIT_SD = 1.5
TARGET_MASS = {1: 125.0, 4: 172.5, 5: 80.4}  # logit column -> mass used by the "WithMass" scores


def _ak8_classes(hard: HardEvent, inp: Inputs, cl: Clusters) -> np.ndarray:
    """Class of each AK8 cluster: fully contained top, H -> bb, W -> qq', else QCD (b or light)."""
    n, K = cl.valid.shape
    jcls = np.zeros((n, K), np.int64)
    col_of = {s: k for k, s in enumerate(inp.slots)}
    rows = np.arange(n)
    codes = {"t": TOP, "tbar": TOP, "H": HBB, "W": W_JET, "Z": W_JET}
    for r in hard.resonances:
        code = codes.get(r.kind)
        if code is None or any(s not in col_of for s in r.finals):
            continue
        cols = [col_of[s] for s in r.finals]
        first = cl.member_of[:, cols[0]]
        ok = first >= 0
        for c in cols:
            ok &= (cl.member_of[:, c] == first) & (inp.kind[:, c] == KIND_PARTON)
        if code == HBB:  # only H -> bb makes an Xbb jet
            for c in cols:
                ok &= np.abs(inp.partflav[:, c]) == 5
        jcls[rows[ok], first[ok]] = np.maximum(jcls[rows[ok], first[ok]], code)
    return np.where((jcls == QCD) & (cl.hadflav == 5), QCD_B, jcls)


@dataclass
class AK8:
    """FatJet and SubJet collections (flat, final order)."""

    counts: np.ndarray
    fields: dict[str, np.ndarray]
    sub_counts: np.ndarray
    sub_fields: dict[str, np.ndarray]


def reco_ak8(rng: np.random.Generator, hard: HardEvent, inp: Inputs, cl: Clusters, gen_index: np.ndarray) -> AK8:
    """AK8 Puppi FatJets (pt > 170 GeV) with soft-drop mass, PNet scores, N-subjettiness and subjets."""
    n, K = cl.valid.shape
    g_pt, g_eta, g_phi, g_m = cl.pt, cl.eta, cl.phi, cl.mass
    jcls = _ak8_classes(hard, inp, cl)
    sigma = np.sqrt(1.0 / np.maximum(g_pt, 10.0) + 0.05**2)
    pt = g_pt * 0.99 * (1.0 + sigma * rng.normal(size=(n, K)))
    keep = cl.valid & (pt > AK8_PT_MIN) & (np.abs(g_eta) < 4.7)
    order, _ = order_and_select(keep, pt)
    # groomed gen mass: replace each input's full shower mass by its groomed part
    msd2 = g_m**2 - cl.m2_inputs + cl.groomed_m2_inputs
    counts, f = compact(
        keep,
        order,
        {
            "pt": pt,
            "g_pt": g_pt,
            "eta": g_eta,
            "phi": g_phi,
            "g_m": g_m,
            "msd2": msd2,
            "n_in": cl.n_inputs,
            "cls": jcls,
            "gen_idx": gen_index,
            "hadflav": cl.hadflav,
            "nb": cl.n_b,
            "nc": cl.n_c,
            "lep": cl.lep_e + cl.lep_mu,
        },
    )
    m = counts.sum()
    c = f["cls"]
    pt = f["pt"]
    single = f["n_in"] == 1
    msd_gen = np.sqrt(np.clip(f["msd2"], 0.0, None)) * np.where(single, np.exp(0.5 * rng.normal(size=m)), 1.0)
    eta = f["eta"] + 0.01 * rng.normal(size=m)
    phi = delta_phi(f["phi"] + 0.01 * rng.normal(size=m), 0.0)
    mass = np.clip(f["g_m"] * pt / f["g_pt"] * (1.0 + 0.08 * rng.normal(size=m)), 0.0, None)
    msd = np.clip(msd_gen * (0.98 + 0.08 * rng.normal(size=m)), 0.0, None)
    target = np.where(c >= W_JET, msd_gen, 0.9 * f["g_m"]) * (1.0 + 0.05 * rng.normal(size=m))
    j8 = 1.0 + 0.06 * np.sqrt(200.0 / pt) + 0.02 * np.abs(eta)  # synthetic AK8 JEC factor

    # PNet: softmax over [QCD, Xbb, Xcc, Xqq, top, W]
    z = AK8_LOGITS[c] + AK8_LOGIT_SD * rng.normal(size=(m, 6))
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    zm = z.copy()
    for k, mk in TARGET_MASS.items():
        zm[:, k] += 1.5 * np.exp(-0.5 * ((msd - mk) / (0.12 * mk)) ** 2) - 0.75
    pm = np.exp(zm - zm.max(axis=1, keepdims=True))
    pm /= pm.sum(axis=1, keepdims=True)
    vs = lambda a, b: a / (a + b)  # noqa: E731

    tau1 = rng.gamma(4.0, 0.06, m)
    tau21 = np.select([(c == W_JET) | (c == HBB), c == TOP], [rng.beta(6, 9, m), rng.beta(7, 7, m)], rng.beta(9, 5, m))
    tau32 = np.where(c == TOP, rng.beta(6, 5, m), rng.beta(12, 4, m))
    tau2 = tau1 * tau21
    tau3 = tau2 * tau32
    lepton_dominated = f["lep"] > 0.8 * f["g_pt"]
    fields = {
        "pt": pt,
        "eta": eta,
        "phi": phi,
        "mass": mass,
        "msoftdrop": msd,
        "rawFactor": 1.0 - 1.0 / j8,
        "area": np.clip(rng.normal(2.0, 0.05, m), 1.5, 2.5),
        "jetId": np.where(lepton_dominated, 2, np.where(rng.uniform(size=m) < 0.003, 0, 6)),
        "nConstituents": np.clip(rng.poisson(40.0 * (pt / 300.0) ** 0.3), 2, 255),
        "genJetAK8Idx": f["gen_idx"],
        "hadronFlavour": f["hadflav"],
        "nBHadrons": f["nb"],
        "nCHadrons": f["nc"],
        "particleNet_QCD": p[:, 0],
        "particleNet_XbbVsQCD": vs(p[:, 1], p[:, 0]),
        "particleNet_XccVsQCD": vs(p[:, 2], p[:, 0]),
        "particleNet_XqqVsQCD": vs(p[:, 3], p[:, 0]),
        "particleNet_massCorr": np.clip(target / np.maximum(mass, 1.0), 0.0, 5.0),
        "particleNetWithMass_QCD": pm[:, 0],
        "particleNetWithMass_HbbvsQCD": vs(pm[:, 1], pm[:, 0]),
        "particleNetWithMass_TvsQCD": vs(pm[:, 4], pm[:, 0]),
        "particleNetWithMass_WvsQCD": vs(pm[:, 5], pm[:, 0]),
        "tau1": tau1,
        "tau2": tau2,
        "tau3": tau3,
        "tau4": tau3 * rng.beta(14, 4, m),
    }
    sub_counts, sub_fields, idx1, idx2 = _subjets(rng, counts, c, pt, eta, phi, msd)
    fields["subJetIdx1"] = idx1
    fields["subJetIdx2"] = idx2
    return AK8(counts, fields, sub_counts, sub_fields)


def _subjets(rng, counts, cls, pt, eta, phi, msd):
    """Two soft-drop subjets per FatJet whose invariant mass reproduces the groomed mass.

    Momentum sharing z (>= 0.1, the soft-drop condition) and opening angle
    dR = m_SD / (pt sqrt(z (1 - z))), placed around the jet axis at a random angle.
    """
    m = cls.size
    two_prong = cls >= W_JET
    z = np.where(two_prong, rng.uniform(0.15, 0.5, m), 0.1 + 0.4 * rng.beta(1.0, 2.5, m))
    dr = np.clip(msd / (pt * np.sqrt(z * (1.0 - z))), 0.02, 0.8)
    psi = rng.uniform(-np.pi, np.pi, m)
    offsets = np.stack([z * dr, -(1.0 - z) * dr], axis=1)  # pt-weighted centroid on the axis
    sub_pt = np.stack([(1.0 - z) * pt, z * pt], axis=1)
    sub_eta = eta[:, None] + offsets * np.cos(psi)[:, None]
    sub_phi = delta_phi(phi[:, None] + offsets * np.sin(psi)[:, None], 0.0)
    sub_mass = sub_pt * np.clip(0.06 + 0.02 * rng.normal(size=(m, 2)), 0.0, None)
    # b content of each prong
    is_b = np.stack(
        [
            (cls == HBB) | ((cls == TOP) & (rng.uniform(size=m) < 0.5)) | (cls == QCD_B),
            (cls == HBB) | ((cls == TOP) & (rng.uniform(size=m) < 0.5)),
        ],
        axis=1,
    )
    btag = np.where(is_b, rng.beta(5.0, 1.5, (m, 2)), rng.beta(0.6, 8.0, (m, 2)))
    flat = lambda a: a.reshape(-1)  # noqa: E731  (fat jet k -> subjets 2k, 2k+1)
    local = local_index(counts)
    sub_fields = {
        "pt": flat(sub_pt),
        "eta": flat(sub_eta),
        "phi": flat(sub_phi),
        "mass": flat(sub_mass),
        "btagDeepB": flat(btag),
        "rawFactor": np.zeros(2 * m),
        "hadronFlavour": flat(np.where(is_b, 5, 0)),
        "nBHadrons": flat(is_b.astype(np.uint8)),
        "nCHadrons": np.zeros(2 * m, np.uint8),
    }
    return 2 * counts, sub_fields, 2 * local, 2 * local + 1
