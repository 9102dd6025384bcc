"""PFNano-style constituents of the AK4 jets: ``PFCands``, ``JetPFCands``, ``SV``, ``JetSVs``.

Opt-in (``generate_events(..., pfnano=True)``).  The constituents are built from
what :mod:`.reco_jets` decided for each jet: the measured pT of each particle
type (charged hadrons, neutral hadrons, photons, conversion electrons, the
lepton of a semileptonic decay or a prompt lepton, residual pileup particles)
and their counts, which sum to ``Jet_nConstituents``.  Here each type's pT is
shared among its particles (Gamma-distributed shares, softer and more even for
soft-fragmenting jets), directions are spread around the jet axis (width set
so that the constituents' invariant mass is the jet's raw mass), and the
Puppi-weighted vector sum is scaled to the raw jet pT.  Charged particles get
track parameters: prompt ones from the primary vertex, the heavy-flavour decay
products of b/c jets displaced (lifetime-signed impact parameters), residual
charged pileup far in z with small Puppi weights.  b, c (and a few light) jets
get a secondary vertex.  Randomness comes from its own stream, so switching
PFNano on does not change any other branch.  Numbers: docs/generator.md.
"""

from __future__ import annotations

import numpy as np

from .kinematics import delta_phi
from .padded import local_index
from .response import BOTTOM, CHARM, PILEUP, TRACKER_ETA

# constituent types (the order inside a jet before sorting by pT)
CH, NH, GA, CE, EL, MU, PU_CH, PU_GA, PU_NH = range(9)
TYPE_COUNT_KEYS = ("ch", "nh", "ga", "ce", "e", "mu", "pu_ch", "pu_ga", "pu_nh")
CHARGED = np.array([True, False, False, True, True, True, True, False, False])
PILEUP_TYPE = np.array([False] * 6 + [True] * 3)
PDG_OF_TYPE = np.array([211, 130, 22, 11, 11, 13, 211, 22, 130])
PION_MASS, ELECTRON_MASS, MUON_MASS = 0.13957, 0.000511, 0.10566
LOST_HITS = np.array([-1, 0, 1, 2])  # MiniAOD lostInnerHits codes, prompt and displaced tracks
LOST_HITS_PROMPT, LOST_HITS_DISPLACED = [0.75, 0.15, 0.05, 0.05], [0.4, 0.2, 0.2, 0.2]
HF_ETA = 3.0

SHARE_SHAPE = 0.8  # Gamma shape of the pT shares inside a type; x exp(SHARE_SOFTNESS s)
SHARE_SOFTNESS = 0.3
JET_RADIUS = 0.4
# Puppi weights: neutral particles from the PV 1 - Beta(0.5, 6); residual pileup Beta(a, b)
PU_WEIGHT_CHARGED = (1.2, 4.0)
PU_WEIGHT_NEUTRAL = (1.5, 2.5)
# track impact-parameter resolution (cm): sqrt(a^2 + (b / pT)^2), z 1.4 times larger
D0_RES = (0.0012, 0.009)
DZ_SCALE = 1.4
TRACK_DETAILS_PT = 0.5  # GeV: softer charged candidates carry no track details (as in MiniAOD)
# heavy-flavour decays: c tau (cm), number of charged decay products, secondary-vertex efficiency
CTAU = {BOTTOM: 0.045, CHARM: 0.025}
N_DECAY_TRACKS = {BOTTOM: (2, 2.5), CHARM: (1, 1.3)}  # minimum + Poisson mean
SV_EFFICIENCY = {BOTTOM: 0.70, CHARM: 0.30, "light": 0.03}
SV_MASS = {BOTTOM: (1.8, 0.45, 6.0), CHARM: (1.05, 0.35, 2.5), "light": (0.6, 0.5, 3.0)}  # median, sigma_ln, cap
SV_PTREL = {BOTTOM: (4.0, 5.0, 0.9), CHARM: (3.0, 5.0, 0.8), "light": (1.5, 9.0, 0.6)}  # Beta(a, b) x scale


def _group_shares(rng, group: np.ndarray, shape: np.ndarray, n_groups: int) -> np.ndarray:
    """Dirichlet shares inside each group (normalised Gamma draws)."""
    g = rng.gamma(shape)
    tot = np.bincount(group, g, minlength=n_groups)
    return g / tot[group]


def build(rng: np.random.Generator, jet_counts: np.ndarray, jets: dict, extra: dict, pv: dict) -> dict:
    """PFCands, JetPFCands, SV, JetSVs as ``{name: (counts per event, flat fields)}``.

    ``jets``: the final Jet fields; ``extra``: the per-jet bookkeeping of
    :func:`.reco_jets.reco_ak4` (measured pT per type ``T_*``, pileup pT ``O_*``,
    counts ``n_*``, softness ``s``, class, flags); ``pv``: the event-level PV branches.
    """
    n_ev = jet_counts.size
    m = int(jet_counts.sum())
    raw = extra["raw"]
    jet_eta, jet_phi = jets["eta"].astype(np.float64), jets["phi"].astype(np.float64)
    cls = extra["cls"]
    is_pu_jet = cls == PILEUP
    central = np.abs(jet_eta) < TRACKER_ETA

    # ---------------------------------------------------------------- constituents: type, pT
    ntype = np.stack([extra[f"n_{k}"] for k in TYPE_COUNT_KEYS], axis=1).astype(np.int64)
    energy = np.stack(
        [extra["T_ch"], extra["T_nh"], extra["T_ga"], extra["T_ce"] - extra["T_e"], extra["T_e"], extra["T_mu"],
         extra["O_ch"], extra["O_ga"], extra["O_nh"]],
        axis=1,
    )
    energy = np.where(ntype > 0, np.maximum(energy, 0.0), 0.0)
    n_const = ntype.sum(axis=1)
    jet = np.repeat(np.arange(m), n_const)
    ctype = np.repeat(np.tile(np.arange(9), m), ntype.ravel())
    group = jet * 9 + ctype
    k = SHARE_SHAPE * np.exp(SHARE_SOFTNESS * extra["s"])[jet]
    wpt = energy.ravel()[group] * _group_shares(rng, group, k, 9 * m)
    nc = jet.size
    pu_like = PILEUP_TYPE[ctype] | is_pu_jet[jet]
    charged = CHARGED[ctype] & central[jet]

    # Puppi weights: 1 for charged from the PV and leptons, ~1 for neutrals, small for pileup
    w = np.ones(nc)
    for sel, draw in (
        (~pu_like & ~charged, lambda n: 1.0 - rng.beta(0.5, 6.0, n)),
        (pu_like & charged, lambda n: rng.beta(*PU_WEIGHT_CHARGED, n)),
        (pu_like & ~charged, lambda n: rng.beta(*PU_WEIGHT_NEUTRAL, n)),
    ):
        idx = np.flatnonzero(sel)
        w[idx] = np.clip(draw(idx.size), 0.02, 1.0)

    # ---------------------------------------------------------------- directions
    # Gaussian around the axis, softer particles wider; pileup uniform in the cone
    hs = ~pu_like | is_pu_jet[jet]  # what belongs to the jet (a pileup jet as a whole)
    mean_wpt = (raw / np.maximum(n_const, 1))[jet]
    width = 0.05 * np.exp(0.15 * extra["s"])[jet] * np.clip(wpt / mean_wpt, 0.05, 20.0) ** -0.3
    deta = width * rng.normal(size=nc)
    dphi = width * rng.normal(size=nc)
    idx = np.flatnonzero(~hs)
    r_pu = JET_RADIUS * np.sqrt(rng.uniform(size=idx.size))
    a_pu = rng.uniform(-np.pi, np.pi, idx.size)
    deta[idx], dphi[idx] = r_pu * np.cos(a_pu), r_pu * np.sin(a_pu)

    # match the invariant mass of the constituents to the raw jet mass (scaling the angles)
    raw_mass = np.clip(jets["mass"] * (1.0 - jets["rawFactor"]), 0.0, None).astype(np.float64)
    deta, dphi = _recentre(deta, dphi, wpt, hs, jet, m)
    mass = _mass(wpt, jet_eta[jet] + deta, jet_phi[jet] + dphi, charged, jet, m)
    f = np.where(mass > 0, np.clip(raw_mass / np.maximum(mass, 1e-3), 0.4, 2.5), 1.0)[jet]
    deta, dphi = np.where(hs, deta * f, deta), np.where(hs, dphi * f, dphi)
    r = np.hypot(deta, dphi)
    shrink = np.where(r > 0.95 * JET_RADIUS, 0.95 * JET_RADIUS * rng.uniform(0.5, 1.0, nc) / np.maximum(r, 1e-9), 1.0)
    deta, dphi = _recentre(deta * shrink, dphi * shrink, wpt, hs, jet, m)
    eta = jet_eta[jet] + deta
    phi = delta_phi(jet_phi[jet] + dphi, 0.0)

    # scale the jet's own particles so that |sum of Puppi-weighted pT vectors| = raw pT
    px, py = wpt * np.cos(phi), wpt * np.sin(phi)
    ax, ay = (np.bincount(jet, np.where(hs, v, 0.0), minlength=m) for v in (px, py))
    bx, by = (np.bincount(jet, np.where(hs, 0.0, v), minlength=m) for v in (px, py))
    a2, ab, b2 = ax**2 + ay**2, ax * bx + ay * by, bx**2 + by**2
    disc = ab**2 - a2 * (b2 - raw**2)
    scale = (-ab + np.sqrt(np.maximum(disc, 0.0))) / np.maximum(a2, 1e-12)
    fallback = (disc < 0) | (scale <= 0)
    all_scale = raw / np.maximum(np.hypot(ax + bx, ay + by), 1e-9)
    wpt = wpt * np.where(hs, np.where(fallback, all_scale, scale)[jet], np.where(fallback, all_scale, 1.0)[jet])
    pt = wpt / w

    # sort inside each jet by candidate pT (PFCands are laid out jet by jet)
    order = np.argsort(jet + 1.0 / (2.0 + pt), kind="stable")
    jet, ctype, pt, w, eta, phi, charged, pu_like = (v[order] for v in (jet, ctype, pt, w, eta, phi, charged, pu_like))

    # ---------------------------------------------------------------- identities
    pdg = PDG_OF_TYPE[ctype]
    fwd = ~central[jet]
    pdg = np.where(fwd & (pdg == 211), 130, np.where(fwd & (pdg == 11), 22, pdg))  # no tracks outside the tracker
    hf = np.abs(eta) > HF_ETA
    pdg = np.where(hf & (pdg == 130), 1, np.where(hf & (pdg == 22), 2, pdg))
    sign = np.where(rng.uniform(size=nc) < 0.5, 1, -1)
    lepton = (pdg == 11) | (pdg == 13)
    charge = np.where(charged, sign, 0)
    # pdgId sign convention: pi+ is +211 (charge +1), e- is +11 (charge -1)
    pdg_id = np.where(charged, np.where(lepton, -sign, sign) * pdg, pdg)
    mass_c = np.where(charged & (pdg == 211), PION_MASS, np.where(pdg == 11, ELECTRON_MASS, np.where(pdg == 13, MUON_MASS, 0.0)))

    # ---------------------------------------------------------------- tracks (charged candidates only)
    hadflav = extra["hadflav"]
    n_decay = np.zeros(m, np.int64)
    ctau = np.zeros(m)
    for fl, code in ((BOTTOM, 5), (CHARM, 4)):
        is_fl = hadflav == code
        lo, mu_ = N_DECAY_TRACKS[fl]
        n_decay = np.where(is_fl, lo + rng.poisson(mu_, m), n_decay)
        ctau = np.where(is_fl, CTAU[fl], ctau)
    semilep = extra["nu"] > 0
    # heavy-flavour decay products: the leading charged hadrons of b/c jets, and their leptons
    is_ch = charged & (ctype == CH)
    rank = np.cumsum(is_ch) - 1
    first = np.searchsorted(jet, np.arange(m))  # first constituent of each jet (sorted by jet)
    rank = rank - np.concatenate([[0], np.cumsum(is_ch)])[first][jet]
    decay = is_ch & (rank < n_decay[jet]) | charged & ((ctype == EL) | (ctype == MU)) & semilep[jet]
    decay &= ctau[jet] > 0

    t = np.flatnonzero(charged & (pt > TRACK_DETAILS_PT))  # candidates with track details
    nt = t.size
    tj, tpt, teta = jet[t], pt[t], eta[t]
    tdecay = decay[t]
    d0_err = np.hypot(D0_RES[0], D0_RES[1] / np.maximum(tpt, 0.1)) * (1.0 + 0.3 * np.abs(teta))
    dz_err = DZ_SCALE * d0_err
    # lifetime: IP ~ c tau x Exp x |N(0, 0.7)| independent of the boost, 85 % lifetime-signed positive
    ip = np.where(tdecay, ctau[tj] * rng.exponential(1.0, nt) * np.abs(rng.normal(0.0, 0.7, nt)), 0.0)
    ip_sign = np.where(rng.uniform(size=nt) < 0.85, 1.0, -1.0)
    ip_z = np.where(tdecay, ctau[tj] * rng.exponential(1.0, nt) * rng.normal(0.0, 0.7, nt) * np.cosh(np.clip(teta, -3, 3)), 0.0)
    tail = np.where(rng.uniform(size=nt) < 0.03, 5.0, 1.0)  # non-Gaussian resolution tail
    d0_meas = d0_err * tail * rng.normal(size=nt)
    dz_meas = dz_err * tail * rng.normal(size=nt)
    tpu = pu_like[t]
    pu_dz = np.where(tpu, np.where(rng.uniform(size=nt) < 0.5, 1.0, -1.0) * (0.1 + rng.exponential(3.0, nt)), 0.0)
    geo_sign = np.where(rng.uniform(size=nt) < 0.5, 1.0, -1.0)
    d0 = d0_meas + ip * ip_sign * geo_sign
    dz = dz_meas + ip_z + pu_dz
    sip3d = np.where(tdecay, ip_sign * np.hypot(ip, ip_z), np.sign(d0_meas) * np.hypot(d0_meas, 0.3 * dz_meas))
    u = rng.uniform(size=nt)
    quality = np.select([tpu, tdecay & (u < 0.4), tdecay & (u < 0.8), u < 0.8, u < 0.9], [np.where(u < 0.6, 1, 0), 4, 5, 7, 6], 5)
    lost = np.where(tdecay, rng.choice(LOST_HITS, nt, p=LOST_HITS_DISPLACED), rng.choice(LOST_HITS, nt, p=LOST_HITS_PROMPT))

    def scatter(values, fill):
        """Per-candidate array (written type) from the values of the tracks, ``fill`` elsewhere."""
        out = np.full(nc, fill, dtype=np.int32 if isinstance(fill, int) else np.float32)
        out[t] = values
        return out

    pv_quality = np.where(charged, np.where(pu_like, np.where(rng.uniform(size=nc) < 0.6, 1, 0), 5), 7)
    pv_quality[t] = quality
    pf = {
        "pt": pt,
        "eta": eta,
        "phi": phi,
        "mass": mass_c,
        "d0": scatter(d0, -1.0),
        "d0Err": scatter(d0_err, -1.0),
        "dz": scatter(dz, -1.0),
        "dzErr": scatter(dz_err, -1.0),
        "puppiWeight": w,
        "puppiWeightNoLep": w,
        "trkChi2": scatter(rng.gamma(2.0, 0.5, nt) * np.where(tdecay, 1.3, 1.0), -1.0),
        "vtxChi2": scatter(np.zeros(nt), -1.0),
        "charge": charge,
        "pdgId": pdg_id,
        "lostInnerHits": scatter(lost, -1),
        "pvAssocQuality": pv_quality,
        "trkQuality": scatter(np.where(rng.uniform(size=nt) < 0.97, 5, 1), 0),
    }

    # b-tagging track features relative to the jet axis (zero for candidates without a track)
    jx, jy, jz = np.cos(jet_phi[tj]), np.sin(jet_phi[tj]), np.sinh(jet_eta[tj])
    cx, cy, cz = np.cos(phi[t]), np.sin(phi[t]), np.sinh(teta)
    dot = cx * jx + cy * jy + cz * jz
    cross = np.sqrt((cy * jz - cz * jy) ** 2 + (cz * jx - cx * jz) ** 2 + (cx * jy - cy * jx) ** 2)
    norm = np.sqrt((cx**2 + cy**2 + cz**2) * (jx**2 + jy**2 + jz**2))
    sin_rel, cos_rel = cross / norm, dot / norm
    jpf = {
        "pt": pt,
        "btagEtaRel": scatter(np.log((1.0 + cos_rel) / np.maximum(sin_rel, 1e-6)), 0.0),
        "btagPtRatio": scatter(sin_rel, 0.0),
        "btagPParRatio": scatter(cos_rel, 0.0),
        "btagSip3dVal": scatter(sip3d, 0.0),
        "btagSip3dSig": scatter(sip3d / np.hypot(d0_err, dz_err), 0.0),
        "btagJetDistVal": scatter(-np.abs(np.where(tdecay, 0.1 * ip, 0.002 * rng.normal(size=nt))), 0.0),
    }
    ev_of_jet = np.repeat(np.arange(n_ev), jet_counts)
    cand_counts = np.bincount(ev_of_jet, n_const, minlength=n_ev).astype(np.int64)
    jpf["pFCandsIdx"] = local_index(cand_counts)
    jpf["jetIdx"] = local_index(jet_counts)[jet]

    svs = _secondary_vertices(rng, jet_counts, jets, extra, raw, central, pv)
    return {
        "PFCands": (cand_counts, pf),
        "JetPFCands": (cand_counts, jpf),
        **svs,
    }


def _recentre(deta, dphi, wpt, hs, jet, m):
    """Shift the jet's own particles so that the pT-weighted centroid of all is the jet axis."""
    tot = np.bincount(jet, np.where(hs, wpt, 0.0), minlength=m)
    se = np.bincount(jet, wpt * deta, minlength=m) / np.maximum(tot, 1e-9)
    sp = np.bincount(jet, wpt * dphi, minlength=m) / np.maximum(tot, 1e-9)
    return np.where(hs, deta - se[jet], deta), np.where(hs, dphi - sp[jet], dphi)


def _mass(wpt, eta, phi, charged, jet, m):
    """Invariant mass of the (Puppi-weighted) constituents of each jet."""
    px, py, pz = wpt * np.cos(phi), wpt * np.sin(phi), wpt * np.sinh(eta)
    e = np.sqrt(px**2 + py**2 + pz**2 + np.where(charged, PION_MASS**2, 0.0))
    s = [np.bincount(jet, v, minlength=m) for v in (px, py, pz, e)]
    return np.sqrt(np.clip(s[3] ** 2 - s[0] ** 2 - s[1] ** 2 - s[2] ** 2, 0.0, None))


def _secondary_vertices(rng, jet_counts, jets, extra, raw, central, pv):
    """One secondary vertex for a share of b (70 %), c (30 %) and light (3 %) jets in the tracker."""
    m = raw.size
    n_ev = jet_counts.size
    hadflav = extra["hadflav"]
    key = np.where(hadflav == 5, 0, np.where(hadflav == 4, 1, 2))
    params = [BOTTOM, CHARM, "light"]
    eff = np.array([SV_EFFICIENCY[p] for p in params])[key]
    eff = eff * np.clip(raw / 20.0, 0.3, 1.0)  # fewer vertices in soft jets
    has = central & (extra["cls"] != PILEUP) & (rng.uniform(size=m) < eff)
    j = np.flatnonzero(has)
    kj = key[j]
    pick = lambda table: np.array([table[p] for p in params])[kj]  # noqa: E731
    med, sig, cap = pick(SV_MASS).T
    sv_mass = np.minimum(med * np.exp(sig * rng.normal(size=j.size)), cap)
    a, b, sc = pick(SV_PTREL).T
    ptrel = sc * rng.beta(a, b)
    sv_pt = np.maximum(ptrel * raw[j], 1.0)
    ntracks = np.where(kj == 0, 2 + rng.poisson(1.3, j.size), np.where(kj == 1, 2 + rng.poisson(0.5, j.size), 2))
    jet_eta, jet_phi = jets["eta"][j].astype(np.float64), jets["phi"][j].astype(np.float64)
    sv_eta = jet_eta + 0.03 * rng.normal(size=j.size)
    sv_phi = delta_phi(jet_phi + 0.03 * rng.normal(size=j.size), 0.0)
    ctau = np.select([kj == 0, kj == 1], [CTAU[BOTTOM], CTAU[CHARM]], 1.0)  # light: K0s-like, long
    boost = np.where(kj == 2, 1.0, sv_pt / sv_mass)
    dxy = np.minimum(boost * ctau * rng.exponential(1.0, j.size), 20.0)
    dxy_err = np.hypot(0.008, 0.03 * dxy)
    d3d = dxy * np.cosh(sv_eta)
    d3d_err = dxy_err * 1.3 * np.sqrt(np.cosh(sv_eta))
    p_angle = np.abs(rng.normal(0.0, 0.005 + 0.2 * sv_mass / (sv_pt * np.cosh(sv_eta)), j.size))
    ndof = 2.0 * ntracks - 3.0
    chi2 = rng.chisquare(ndof)
    deta, dphi = sv_eta - jet_eta, delta_phi(sv_phi - jet_phi, 0.0)
    p_sv = sv_pt * np.cosh(sv_eta)
    e_sv = np.sqrt(p_sv**2 + sv_mass**2)
    raw_mass = jets["mass"][j] * (1.0 - jets["rawFactor"][j])
    e_jet = np.sqrt((raw[j] * np.cosh(jet_eta)) ** 2 + raw_mass**2)
    ev_of_jet = np.repeat(np.arange(n_ev), jet_counts)
    sv_counts = np.bincount(ev_of_jet[j], minlength=n_ev).astype(np.int64)
    sv_idx = local_index(sv_counts)
    ev = ev_of_jet[j]
    x = np.asarray(pv["PV_x"], np.float64)[ev] + dxy * np.cos(sv_phi)
    y = np.asarray(pv["PV_y"], np.float64)[ev] + dxy * np.sin(sv_phi)
    z = np.asarray(pv["PV_z"], np.float64)[ev] + dxy * np.sinh(sv_eta)
    sv = {
        "dlen": d3d,
        "dlenSig": d3d / d3d_err,
        "dxy": dxy,
        "dxySig": dxy / dxy_err,
        "pAngle": p_angle,
        "chi2": chi2 / ndof,
        "eta": sv_eta,
        "mass": sv_mass,
        "ndof": ndof,
        "phi": sv_phi,
        "pt": sv_pt,
        "x": x,
        "y": y,
        "z": z,
        "ntracks": ntracks,
    }
    jsv = {
        "mass": sv_mass,
        "pt": sv_pt,
        "ntracks": ntracks.astype(np.float64),
        "chi2": chi2,
        "normchi2": chi2 / ndof,
        "dxy": dxy,
        "dxysig": dxy / dxy_err,
        "d3d": d3d,
        "d3dsig": d3d / d3d_err,
        "costhetasvpv": np.cos(p_angle),
        "phirel": dphi,
        "ptrel": sv_pt / raw[j],
        "deltaR": np.hypot(deta, dphi) - 0.5,  # DeepJet convention: dR(SV, jet) - 0.5
        "enration": e_sv / e_jet,
        "jetIdx": local_index(jet_counts)[j],
        "sVIdx": sv_idx,
    }
    return {"SV": (sv_counts, sv), "JetSVs": (sv_counts, jsv)}


__all__ = ["build"]
