"""Detector response for electrons and muons (prompt and non-prompt).

Candidates are the prompt e/mu of the hard process and the non-prompt e/mu from
semileptonic b/c hadron decays inside jets.  Isolation is built from real
activity: pileup/underlying-event energy in the cone plus, for a lepton inside a
jet, the rest of that jet, so non-prompt leptons fail isolation mostly by
themselves.  ID decisions are thresholds on latent Gaussian "quality" variables,
which makes the working points nested (mvaIso_WP80 within WP90, tightId within
mediumId within looseId) with the efficiencies listed in docs/generator.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .genjets import Clusters, Inputs
from .kinematics import delta_phi
from .padded import compact, gather, order_and_select
from .processes import HardEvent
from .reco_event import Pileup

E_PT_MIN, E_ETA_MAX = 5.0, 2.5
MU_PT_MIN, MU_ETA_MAX = 3.0, 2.4
# reconstruction efficiency (prompt, non-prompt in a jet)
E_RECO_EFF = (0.97, 0.55)
MU_RECO_EFF = (0.99, 0.90)
E_GAP = (1.4442, 1.566)  # ECAL barrel-endcap transition
MASS_E, MASS_MU = 0.000511, 0.10566


@dataclass
class Leptons:
    """Electron and Muon collections (flat, final order) plus MET bookkeeping."""

    e_counts: np.ndarray
    e_fields: dict[str, np.ndarray]
    mu_counts: np.ndarray
    mu_fields: dict[str, np.ndarray]
    mis_px: np.ndarray
    mis_py: np.ndarray
    sum_pt: np.ndarray


def _candidates(hard: HardEvent, inp: Inputs):
    """Truth slots of lepton candidates with (origin code, clustering-input column)."""
    col_of = {s: k for k, s in enumerate(inp.slots)}
    out = []
    for s in hard.finals:
        out.append((s, None, col_of[s]))  # prompt (if this slot is an e/mu in the event)
    for parton, hf in hard.hadrons.items():
        out.append((hf.lepton, hf.flavour, col_of[parton]))
    return out


def reco_leptons(
    rng: np.random.Generator,
    hard: HardEvent,
    inp: Inputs,
    cl: Clusters,
    jet_new_index: np.ndarray,
    jet_pt_flat: np.ndarray,
    jet_counts: np.ndarray,
    genpart_index: np.ndarray,
    pu: Pileup,
) -> Leptons:
    """Electrons and muons with kinematics, isolation, impact parameters, IDs and truth links."""
    rec = hard.rec
    n = rec.n
    cands = _candidates(hard, inp)
    L = len(cands)
    shape = (n, L)
    g = {k: np.zeros(shape) for k in ("pt", "eta", "phi", "act", "disp")}
    pdg = np.zeros(shape, np.int64)
    origin = np.zeros(shape, np.int64)
    valid = np.zeros(shape, bool)
    jet_col = np.full(shape, -1)
    gen_idx = np.full(shape, -1)
    for j, (slot, flav, col) in enumerate(cands):
        sl = rec[slot]
        apdg = np.abs(sl.pdg)
        is_lep = sl.present & ((apdg == 11) | (apdg == 13))
        g["pt"][:, j] = sl.p4.pt
        g["eta"][:, j] = np.where(is_lep, sl.p4.eta, 99.0)
        g["phi"][:, j] = sl.p4.phi
        pdg[:, j] = sl.pdg
        prompt = flav is None
        origin[:, j] = 1 if prompt else flav
        valid[:, j] = is_lep
        cluster = cl.member_of[:, col]
        jet_col[:, j] = cluster
        gen_idx[:, j] = genpart_index[:, slot]
        # activity in the isolation cone from the rest of the jet this lepton sits in
        rest = np.clip(gather(cl.pt, cluster[:, None], 0.0)[:, 0] - sl.p4.pt, 0.0, None)
        share = rng.uniform(0.3, 0.8, n) if prompt else rng.uniform(0.35, 0.85, n)
        g["act"][:, j] = rest * share
        # b/c hadron flight gives non-prompt leptons a large impact parameter
        g["disp"][:, j] = 0.0 if prompt else np.where(flav == 5, 0.04, 0.025)

    abs_eta = np.abs(g["eta"])
    is_e = valid & (np.abs(pdg) == 11)
    is_mu = valid & (np.abs(pdg) == 13)
    prompt = origin == 1
    u = rng.uniform(size=shape)
    eff_e = np.where(prompt, E_RECO_EFF[0], E_RECO_EFF[1]) * np.where((abs_eta > E_GAP[0]) & (abs_eta < E_GAP[1]), 0.7, 1.0)
    eff_mu = np.where(prompt, MU_RECO_EFF[0], MU_RECO_EFF[1])
    # momentum resolution: muons ~1% (+ curvature term), electrons ~1.5%; endcaps 1.4x worse
    endcap = np.where(abs_eta > 1.4, 1.4, 1.0)
    res = np.where(is_mu, 0.008 + 1e-4 * g["pt"], np.sqrt(0.010**2 + 0.08**2 / np.maximum(g["pt"], 1.0))) * endcap
    pt = g["pt"] * (1.0 + res * rng.normal(size=shape))
    eta = g["eta"] + 0.001 * rng.normal(size=shape)
    phi = delta_phi(g["phi"] + 0.001 * rng.normal(size=shape), 0.0)
    keep_e = is_e & (u < eff_e) & (pt > E_PT_MIN) & (abs_eta < E_ETA_MAX)
    keep_mu = is_mu & (u < eff_mu) & (pt > MU_PT_MIN) & (abs_eta < MU_ETA_MAX)

    jet_idx = gather(jet_new_index, jet_col, -1)
    base = {
        "pt": pt,
        "eta": eta,
        "phi": phi,
        "g_pt": g["pt"],
        "g_phi": g["phi"],
        "pdg": pdg,
        "origin": origin,
        "act": g["act"],
        "disp": g["disp"],
        "jet_idx": jet_idx,
        "gen_idx": gen_idx,
        "n_pu": np.broadcast_to(pu.n_pu[:, None], shape),
        "res": res,
    }
    jet_offsets = np.concatenate([[0], np.cumsum(jet_counts)])
    out = {}
    mis_px = np.zeros(n)
    mis_py = np.zeros(n)
    sum_pt = np.zeros(n)
    for flavour, keep in (("e", keep_e), ("mu", keep_mu)):
        order, _ = order_and_select(keep, pt)
        counts, f = compact(keep, order, base)
        ev = np.repeat(np.arange(n), counts)
        jet_pt = np.where(f["jet_idx"] >= 0, jet_pt_flat[jet_offsets[ev] + np.clip(f["jet_idx"], 0, None)] if jet_pt_flat.size else 0.0, 0.0)
        out[flavour] = (counts, _lepton_fields(rng, flavour, f, jet_pt))
        pr = f["origin"] == 1
        mis_px += np.bincount(ev, np.where(pr, f["pt"] * np.cos(f["phi"]) - f["g_pt"] * np.cos(f["g_phi"]), 0.0), minlength=n)
        mis_py += np.bincount(ev, np.where(pr, f["pt"] * np.sin(f["phi"]) - f["g_pt"] * np.sin(f["g_phi"]), 0.0), minlength=n)
        sum_pt += np.bincount(ev, np.where(pr, f["pt"], 0.0), minlength=n)
    return Leptons(out["e"][0], out["e"][1], out["mu"][0], out["mu"][1], mis_px, mis_py, sum_pt)


def _lepton_fields(rng, flavour: str, f: dict[str, np.ndarray], jet_pt: np.ndarray) -> dict[str, np.ndarray]:
    m = f["pt"].size
    pt = f["pt"]
    prompt = f["origin"] == 1
    norm = lambda: rng.normal(size=m)  # noqa: E731

    # isolation: pileup/UE in the cone (mean 0.2 + 0.012 nPU GeV for R = 0.3) + jet activity
    ue03 = rng.exponential(0.2 + 0.012 * f["n_pu"])
    act = f["act"]
    iso03 = (ue03 + act) / pt
    iso04 = (ue03 * (0.4 / 0.3) ** 2 + 1.15 * act) / pt
    r_mini = np.clip(10.0 / pt, 0.05, 0.2)
    mini = (ue03 * (r_mini / 0.3) ** 2 + act * (r_mini / 0.3) ** 0.7) / pt
    chg = rng.uniform(0.5, 0.8, m)

    # impact parameters (cm): resolution-driven for prompt, flight-driven for non-prompt
    s_xy = 0.0010 + 0.01 / pt
    s_z = 0.0020 + 0.02 / pt
    tail = np.where(rng.uniform(size=m) < 0.02, 1.0 + rng.exponential(3.0, m), 1.0)
    dxy = s_xy * norm() * tail + f["disp"] * norm()
    dz = s_z * norm() * tail + 1.3 * f["disp"] * norm()
    dxy_err = s_xy * rng.uniform(0.85, 1.15, m)
    dz_err = s_z * rng.uniform(0.85, 1.15, m)
    ip3d = np.hypot(dxy, dz)
    sip3d = ip3d / np.hypot(dxy_err, dz_err) * np.sqrt(2.0)

    in_jet = f["jet_idx"] >= 0
    pt_ratio = np.where(in_jet, np.clip(pt / np.maximum(jet_pt, 1e-3), 0.0, 1.5), 1.0 / (1.0 + iso04))
    ptrel = np.where(in_jet & ~prompt, rng.exponential(1.5, m), np.where(in_jet, rng.exponential(0.3, m), 0.0))
    # ttH lepton MVA: prompt-like when isolated, displaced little, carrying its jet's pt
    x_tth = 2.2 - 5.0 * np.clip(mini, 0, 1) - 0.15 * np.clip(sip3d, 0, 20) + 1.2 * (np.clip(pt_ratio, 0, 1) - 0.8) + 0.6 * norm()
    common = {
        "pt": pt,
        "eta": f["eta"],
        "phi": f["phi"],
        "charge": -np.sign(f["pdg"]),
        "pdgId": f["pdg"],
        "dxy": dxy,
        "dxyErr": dxy_err,
        "dz": dz,
        "dzErr": dz_err,
        "ip3d": ip3d,
        "sip3d": sip3d,
        "miniPFRelIso_all": mini,
        "miniPFRelIso_chg": mini * chg,
        "pfRelIso03_all": iso03,
        "pfRelIso03_chg": iso03 * chg,
        "jetIdx": f["jet_idx"],
        "jetRelIso": 1.0 / np.maximum(pt_ratio, 1e-3) - 1.0,
        "jetPtRelv2": ptrel,
        "jetNDauCharged": np.where(in_jet, np.where(prompt, 1, rng.poisson(5.0, m) + 1), 0),
        "mvaTTH": np.tanh(x_tth / 1.2),
        "genPartIdx": f["gen_idx"],
        "genPartFlav": f["origin"],
        "tightCharge": rng.choice(3, m, p=[0.03, 0.07, 0.90]),
    }
    if flavour == "e":
        x_noiso = np.where(prompt, 2.6, 0.6) + 1.02 * norm()
        x_iso = x_noiso - 6.0 * np.clip(iso03 - 0.05, 0.0, None)
        y_id = np.where(prompt, 2.0, 1.0) + norm()
        id_level = (y_id > 0.04).astype(int) + (y_id > 0.305) + (y_id > 0.595) + (y_id > 0.92)
        iso_level = (
            (iso03 < 0.198 + 0.506 / pt).astype(int)
            + (iso03 < 0.112 + 0.506 / pt)
            + (iso03 < 0.0478 + 0.506 / pt)
            + (iso03 < 0.0287 + 0.506 / pt)
        )
        lost = np.where(prompt, rng.choice(3, m, p=[0.93, 0.06, 0.01]), rng.choice(3, m, p=[0.8, 0.15, 0.05]))
        return {
            **common,
            "mass": np.full(m, MASS_E),
            "mvaIso": np.tanh(x_iso),
            "mvaIso_WP80": x_iso > 1.5,
            "mvaIso_WP90": x_iso > 1.0,
            "mvaNoIso": np.tanh(x_noiso),
            "mvaNoIso_WP80": x_noiso > 1.5,
            "mvaNoIso_WP90": x_noiso > 1.0,
            "cutBased": np.minimum(id_level, iso_level),
            "convVeto": rng.uniform(size=m) < np.where(prompt, 0.99, 0.93),
            "lostHits": lost,
            "deltaEtaSC": 0.015 * norm(),
            "sieie": np.where(np.abs(f["eta"]) < 1.479, 0.0095, 0.027) * np.exp(np.where(prompt, 0.08, 0.15) * norm()),
            "hoe": rng.exponential(np.where(prompt, 0.01, 0.05)),
            "eInvMinusPInv": np.where(prompt, 0.004, 0.01) * norm(),
            "r9": rng.beta(np.where(prompt, 8.0, 4.0), 2.0),
            "photonIdx": np.full(m, -1),
        }
    # muons: latent quality; IDs nested loose > medium > tight
    q = np.where(prompt, 3.2, 2.2) + norm()
    loose = q > 0.3
    medium = q > 0.75
    tight = q > 1.25
    pf_iso_id = (
        (iso04 < 0.40).astype(int) + (iso04 < 0.25) + (iso04 < 0.20) + (iso04 < 0.15) + (iso04 < 0.10) + (iso04 < 0.05)
    )
    mini_iso_id = (mini < 0.40).astype(int) + (mini < 0.20) + (mini < 0.10) + (mini < 0.05)
    tk_rel = iso03 * chg
    return {
        **common,
        "mass": np.full(m, MASS_MU),
        "pfRelIso04_all": iso04,
        "pfIsoId": pf_iso_id,
        "miniIsoId": mini_iso_id,
        "tkRelIso": tk_rel,
        "tkIsoId": (tk_rel < 0.10).astype(int) + (tk_rel < 0.05),
        "looseId": loose,
        "mediumId": medium,
        "mediumPromptId": medium & (np.abs(dxy) < 0.02) & (np.abs(dz) < 0.1),
        "tightId": tight,
        "softId": loose & (np.abs(dxy) < 0.3) & (np.abs(dz) < 20.0),
        "highPtId": np.where(tight & (pt > 50.0), 2, np.where(medium & (pt > 50.0), 1, 0)),
        "isGlobal": q > 0.1,
        "isTracker": np.ones(m, bool),
        "isPFcand": loose,
        "isStandalone": q > 0.0,
        "ptErr": f["res"] * pt,
        "segmentComp": rng.beta(np.where(prompt, 8.0, 5.0), 2.0),
        "nStations": np.clip(rng.poisson(3.0, m), 1, 4),
        "nTrackerLayers": np.clip(rng.poisson(13.0, m), 5, 18),
        "fsrPhotonIdx": np.full(m, -1),
    }
