"""Generator: observable response model and PFNano constituents (crema.generate, ``pfnano=True``)."""

from __future__ import annotations

import warnings
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot

from crema.generate import generate_events, write_nanoaod

REAL_PFNANO = Path(__file__).parent / "data" / "pfnano.root"
PFNANO_TABLES = ("PFCands", "JetPFCands", "SV", "JetSVs")


def flat(ev, key) -> np.ndarray:
    return np.asarray(ak.flatten(ev[key]), dtype=np.float64)


def half_width(r: np.ndarray) -> float:
    q16, q50, q84 = np.percentile(r, [16, 50, 84])
    return (q84 - q16) / 2 / q50


def matched_gen_pt(ev) -> np.ndarray:
    gi = flat(ev, "Jet_genJetIdx").astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(np.asarray(ev["nGenJet"]))])
    event = np.repeat(np.arange(len(ev["nJet"])), np.asarray(ev["nJet"]))
    gen = flat(ev, "GenJet_pt")
    return np.where(gi >= 0, gen[np.minimum(offsets[event] + np.maximum(gi, 0), gen.size - 1)], np.nan)


def per_jet(ev, values: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Sum of a per-candidate quantity over each jet's constituents (PFCands are laid out jet by jet)."""
    n = flat(ev, "Jet_nConstituents").astype(np.int64)
    jet = np.repeat(np.arange(n.size), n)
    return np.bincount(jet, values if mask is None else np.where(mask, values, 0.0), minlength=n.size)


@pytest.fixture(scope="module")
def tt():
    return generate_events("tt_sl", 3000, seed=31, pfnano=True)


@pytest.fixture(scope="module")
def big():
    """Enough jets for response studies (no PFNano tables)."""
    return generate_events("tt_sl", 12000, seed=32)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    return write_nanoaod(tmp_path_factory.mktemp("pfnano") / "tt.root", "tt_sl", 400, seed=33, pfnano=True)


# ----------------------------------------------------------------------------- format


def test_branch_names_and_types_match_real_pfnano(written):
    mine = uproot.open(written)["Events"]
    real = uproot.open(REAL_PFNANO)["Events"]
    for coll in PFNANO_TABLES:
        real_fields = {k: real[k].typename for k in real.keys() if k.startswith(coll + "_")}
        mine_fields = {k: mine[k].typename for k in mine.keys() if k.startswith(coll + "_")}
        assert real_fields, coll
        assert mine_fields == real_fields, coll
        # one counter per table; int32 like every NanoAODv12 counter (the older reference file has uint32)
        assert mine[f"n{coll}"].typename == "int32_t"
    assert not [k for k in mine.keys() if k.startswith("n") and "_" in k]
    # event-level inputs of a jet calibration are there too
    for b in ("Rho_fixedGridRhoFastjetAll", "PV_npvs", "PV_npvsGood"):
        assert b in mine.keys()


def test_pfnano_changes_no_other_branch():
    plain = generate_events("wjets", 300, seed=4)
    with_pf = generate_events("wjets", 300, seed=4, pfnano=True)
    assert set(with_pf) - set(plain) == {k for k in with_pf if k.split("_")[0].lstrip("n") in PFNANO_TABLES}
    assert all(ak.array_equal(ak.Array(plain[k]), ak.Array(with_pf[k])) for k in plain)
    empty = generate_events("dy", 0, pfnano=True)
    assert len(empty["PFCands_pt"]) == 0 and empty["PFCands_pt"].type.content.content.primitive == "float32"


def test_nanoaodschema_cross_references(written):
    from coffea.nanoevents import NanoAODSchema, NanoEventsFactory, PFNanoAODSchema

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        events = NanoEventsFactory.from_root({str(written): "Events"}, schemaclass=NanoAODSchema, mode="eager").events()
    assert [str(w.message) for w in caught] == []
    jets = events.Jet
    const = jets.constituents  # JetPFCands of each jet, through Jet_nConstituents
    assert ak.all(ak.num(const, axis=2) == jets.nConstituents)
    assert ak.all(const.jetIdx == ak.local_index(jets, axis=1))
    cands = events.PFCands[events.JetPFCands.pFCandsIdx]
    assert ak.all(cands.pt == events.JetPFCands.pt)
    assert ak.all(events.SV[events.JetSVs.sVIdx].mass == events.JetSVs.mass)
    assert ak.sum(ak.num(events.SV)) > 50

    # PFNanoAODSchema resolves the global cross-references; it also looks for AK8 and gen tables
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pf = NanoEventsFactory.from_root({str(written): "Events"}, schemaclass=PFNanoAODSchema, mode="eager").events()
    assert all(("FatJet" in str(w.message)) or ("Gen" in str(w.message)) or ("SubJet" in str(w.message)) for w in caught)
    assert ak.all(pf.JetPFCands.pf.pt == pf.JetPFCands.pt)
    assert ak.all(pf.JetPFCands.jet.pt == pf.Jet.pt[pf.JetPFCands.jetIdx])
    assert ak.all(pf.JetSVs.sv.pt == pf.JetSVs.pt)


# ----------------------------------------------------------------------------- constituents


def test_constituents_carry_the_jet(tt):
    raw = flat(tt, "Jet_pt") * (1.0 - flat(tt, "Jet_rawFactor"))
    pt, phi, eta, w = (flat(tt, f"PFCands_{k}") for k in ("pt", "phi", "eta", "puppiWeight"))
    assert np.array_equal(np.asarray(tt["nPFCands"]), np.asarray(ak.sum(tt["Jet_nConstituents"], axis=1)))
    # the Puppi-weighted constituents add up to the raw jet
    px, py = per_jet(tt, w * pt * np.cos(phi)), per_jet(tt, w * pt * np.sin(phi))
    np.testing.assert_allclose(np.hypot(px, py), raw, rtol=1e-4)
    scalar = per_jet(tt, w * pt) / raw
    assert np.all((scalar >= 1.0 - 1e-4) & (scalar < 1.05))
    # each type carries its energy fraction
    pdg = np.abs(flat(tt, "PFCands_pdgId"))
    for codes, field in (((211,), "chHEF"), ((130, 1), "neHEF"), ((22, 2), "neEmEF"), ((11,), "chEmEF"), ((13,), "muEF")):
        frac = per_jet(tt, w * pt, np.isin(pdg, codes)) / raw
        assert np.percentile(np.abs(frac - flat(tt, f"Jet_{field}")), 99) < 0.01, field
    # inside the cone around the jet axis, gluon jets wider than quark jets
    n = flat(tt, "Jet_nConstituents").astype(np.int64)
    jeta, jphi = np.repeat(flat(tt, "Jet_eta"), n), np.repeat(flat(tt, "Jet_phi"), n)
    dr = np.hypot(eta - jeta, (phi - jphi + np.pi) % (2 * np.pi) - np.pi)
    assert dr.max() < 0.42
    width = per_jet(tt, w * pt * dr) / per_jet(tt, w * pt)
    hf, pf = flat(tt, "Jet_hadronFlavour"), np.abs(flat(tt, "Jet_partonFlavour"))
    assert width[(hf == 0) & (pf == 21)].mean() > width[(hf == 0) & (pf >= 1) & (pf <= 3)].mean()
    # no tracks outside the tracker: forward jets have only neutral candidates (HF ones beyond 3)
    forward = np.repeat(np.abs(flat(tt, "Jet_eta")) > 2.5, n)
    assert np.all(flat(tt, "PFCands_charge")[forward] == 0)
    assert np.all(np.isin(pdg[np.abs(eta) > 3.0], (1, 2)))


def test_pileup_and_heavy_flavour_tracks(tt):
    w, dz, d0, d0_err = (flat(tt, f"PFCands_{k}") for k in ("puppiWeight", "dz", "d0", "d0Err"))
    charged = flat(tt, "PFCands_charge") != 0
    track = charged & (d0_err > 0)
    pileup = track & (w < 0.7)
    assert pileup.sum() > 100
    assert np.median(np.abs(dz[pileup])) > 0.5 > 0.02 > np.median(np.abs(dz[track & (w == 1)]))
    assert np.all(flat(tt, "PFCands_pvAssocQuality")[pileup] <= 1)
    # displaced tracks: lifetime in b jets, a few in c jets, almost none in light jets
    displaced = per_jet(tt, np.ones(w.size), track & (np.abs(d0) > 3 * d0_err))
    hf = flat(tt, "Jet_hadronFlavour")
    central = np.abs(flat(tt, "Jet_eta")) < 2.4
    n_b, n_c, n_l = (displaced[central & (hf == f)].mean() for f in (5, 4, 0))
    assert n_b > 1.5 > n_c > 0.5 > 0.2 > n_l
    # secondary vertices: mostly in b jets, heavier there
    sv_jet = flat(tt, "JetSVs_jetIdx").astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(np.asarray(tt["nJet"]))])
    event = np.repeat(np.arange(len(tt["nJet"])), np.asarray(tt["nJetSVs"]))
    sv_flav = hf[offsets[event] + sv_jet]
    mass = flat(tt, "JetSVs_mass")
    assert np.mean(sv_flav == 5) > 0.6
    assert np.median(mass[sv_flav == 5]) > 1.5 > np.median(mass[sv_flav == 0])
    assert np.all(flat(tt, "SV_dxySig") > 0) and np.all(flat(tt, "JetSVs_costhetasvpv") > 0.9)


# ----------------------------------------------------------------------------- response model


def _response(ev):
    gen = matched_gen_pt(ev)
    return flat(ev, "Jet_pt") / gen, gen


def test_total_resolution_is_the_jer(big):
    """The decomposition keeps the total width: the 16-84 % half width is sigma_JER x RESOLUTION_SCALE."""
    from crema.generate.jec import jer

    r, gen = _response(big)
    eta = flat(big, "Jet_eta")
    hf, pf = flat(big, "Jet_hadronFlavour"), np.abs(flat(big, "Jet_partonFlavour"))
    rho = np.repeat(np.asarray(big["Rho_fixedGridRhoFastjetAll"], np.float64), np.asarray(big["nJet"]))
    sel = (gen > 50) & (gen < 100) & (np.abs(eta) < 1.3) & (hf == 0) & (pf >= 1) & (pf <= 3)
    sigma = jer()(eta[sel], gen[sel], rho[sel])
    assert half_width(r[sel]) == pytest.approx(np.mean(sigma), rel=0.08)


def test_response_falls_with_neutral_hadron_fraction(big):
    r, gen = _response(big)
    ne = flat(big, "Jet_neHEF")
    hf, pf = flat(big, "Jet_hadronFlavour"), np.abs(flat(big, "Jet_partonFlavour"))
    sel = (gen > 30) & (gen < 150) & (np.abs(flat(big, "Jet_eta")) < 2.5) & (hf == 0) & (pf >= 1) & (pf <= 3)
    assert np.corrcoef(r[sel], ne[sel])[0, 1] < -0.3
    assert np.median(r[sel & (ne > 0.25)]) < np.median(r[sel & (ne < 0.03)]) - 0.08


def test_flavour_response(big):
    r, gen = _response(big)
    hf, pf = flat(big, "Jet_hadronFlavour"), np.abs(flat(big, "Jet_partonFlavour"))
    sel = (gen > 30) & (np.abs(flat(big, "Jet_eta")) < 2.5)
    uds = np.median(r[sel & (hf == 0) & (pf >= 1) & (pf <= 3)])
    b = hf == 5
    assert np.median(r[sel & b]) < uds - 0.01
    low = sel & (gen < 50) & (hf == 0)
    assert np.median(r[low & (pf == 21)]) < np.median(r[low & (pf >= 1) & (pf <= 3)])
    # semileptonic b decays (a muon in the jet) are lower still
    assert np.median(r[sel & b & (flat(big, "Jet_muEF") > 0.02)]) < np.median(r[sel & b & (flat(big, "Jet_muEF") == 0)]) - 0.02


def test_jet_features_beat_the_jec(big):
    """A least-squares fit of log(gen / raw) on jet-level features narrows the response."""
    r, gen = _response(big)
    raw = flat(big, "Jet_pt") * (1.0 - flat(big, "Jet_rawFactor"))
    eta = np.abs(flat(big, "Jet_eta"))
    rho = np.repeat(np.asarray(big["Rho_fixedGridRhoFastjetAll"], np.float64), np.asarray(big["nJet"]))
    keys = ("chHEF", "neHEF", "chEmEF", "neEmEF", "muEF", "nConstituents", "area")
    cols = [np.log(raw), np.log(raw) ** 2, rho] + [flat(big, f"Jet_{k}") for k in keys]
    cols = cols + [c / np.sqrt(raw) for c in cols]
    sel = np.isfinite(gen) & (eta < 2.5)
    X = np.stack([np.ones(raw.size), *cols], axis=1)[sel]
    y = np.log(gen / raw)[sel]
    train = np.arange(y.size) % 2 == 0
    coef, *_ = np.linalg.lstsq(X[train], y[train], rcond=None)
    test = ~train & (gen[sel] > 30)
    calibrated = raw[sel][test] * np.exp(X[test] @ coef) / gen[sel][test]
    assert half_width(calibrated) < 0.92 * half_width(r[sel][test])


def test_cli_generate_pfnano(tmp_path):
    from crema.workflows.cli import main

    out = tmp_path / "dy.root"
    assert main(["generate", "dy", "-n", "50", "-o", str(out), "--pfnano"]) == 0
    tree = uproot.open(out)["Events"]
    assert tree.num_entries == 50 and "PFCands_puppiWeight" in tree.keys() and "JetSVs_sVIdx" in tree.keys()


def test_pfnano_file_independent_of_chunk_size(tmp_path, monkeypatch):
    from crema.generate import events as gen_events

    monkeypatch.setattr(gen_events, "BLOCK_SIZE", 200)
    small = write_nanoaod(tmp_path / "a.root", "tt_dl", 500, seed=8, chunk_size=200, pfnano=True)
    large = write_nanoaod(tmp_path / "b.root", "tt_dl", 500, seed=8, pfnano=True)
    a = uproot.open(small)["Events"].arrays(filter_name=["PFCands_*", "JetSVs_*", "Jet_pt"])
    b = uproot.open(large)["Events"].arrays(filter_name=["PFCands_*", "JetSVs_*", "Jet_pt"])
    assert len(a) == 500 and ak.array_equal(a, b)
