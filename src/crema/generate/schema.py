"""Branches written by the generator and their NanoAODv12 types.

One place for every branch name and dtype.  Types follow real NanoAODv12 files
(``tests/data/nano_tt_v12.root``), the opt-in PFNano tables the PFNano file
``tests/data/pfnano.root``; the collections Photon, FsrPhoton,
LowPtElectron, Tau and GenVisTau are written empty but present, with the index
branches NanoAODSchema cross-references, so that coffea's schema is quiet.
"""

from __future__ import annotations

import numpy as np

from crema.generate.reco_event import MET_FILTERS

F4, I4, I2, U1, U2, U4, U8, B = (
    np.float32,
    np.int32,
    np.int16,
    np.uint8,
    np.uint16,
    np.uint32,
    np.uint64,
    np.bool_,
)


def _f(*names: str) -> dict[str, type]:
    return {n: F4 for n in names}


P4_FIELDS = _f("pt", "eta", "phi", "mass")

_LEPTON_COMMON = {
    **P4_FIELDS,
    "charge": I4,
    "pdgId": I4,
    **_f("dxy", "dxyErr", "dz", "dzErr", "ip3d", "sip3d"),
    **_f("miniPFRelIso_all", "miniPFRelIso_chg", "pfRelIso03_all", "pfRelIso03_chg"),
    "jetIdx": I2,
    **_f("jetRelIso", "jetPtRelv2"),
    "jetNDauCharged": U1,
    "mvaTTH": F4,
    "genPartIdx": I2,
    "genPartFlav": U1,
    "tightCharge": U1,
}

COLLECTIONS: dict[str, dict[str, type]] = {
    "GenPart": {**P4_FIELDS, "pdgId": I4, "status": I4, "statusFlags": U2, "genPartIdxMother": I2},
    "GenJet": {**P4_FIELDS, "hadronFlavour": U1, "partonFlavour": I2},
    "GenJetAK8": {**P4_FIELDS, "hadronFlavour": U1, "partonFlavour": I2},
    "Jet": {
        **P4_FIELDS,
        **_f("rawFactor", "area"),
        "jetId": U1,
        "genJetIdx": I2,
        "hadronFlavour": U1,
        "partonFlavour": I2,
        **_f("btagPNetB", "btagPNetCvB", "btagPNetCvL", "btagPNetCvNotB", "btagPNetQvG", "btagPNetTauVJet"),
        **_f("btagDeepFlavB", "btagDeepFlavCvB", "btagDeepFlavCvL", "btagDeepFlavQG"),
        **_f("PNetRegPtRawCorr", "PNetRegPtRawCorrNeutrino", "PNetRegPtRawRes"),
        **_f("chHEF", "neHEF", "chEmEF", "neEmEF", "muEF"),
        "nConstituents": U1,
        "nElectrons": U1,
        "nMuons": U1,
        "electronIdx1": I2,
        "electronIdx2": I2,
        "muonIdx1": I2,
        "muonIdx2": I2,
    },
    "FatJet": {
        **P4_FIELDS,
        **_f("msoftdrop", "rawFactor", "area"),
        "jetId": U1,
        "nConstituents": U1,
        "genJetAK8Idx": I2,
        "hadronFlavour": U1,
        "nBHadrons": U1,
        "nCHadrons": U1,
        **_f("particleNet_QCD", "particleNet_XbbVsQCD", "particleNet_XccVsQCD", "particleNet_XqqVsQCD"),
        "particleNet_massCorr": F4,
        **_f("particleNetWithMass_QCD", "particleNetWithMass_HbbvsQCD", "particleNetWithMass_TvsQCD"),
        "particleNetWithMass_WvsQCD": F4,
        **_f("tau1", "tau2", "tau3", "tau4"),
        "subJetIdx1": I2,
        "subJetIdx2": I2,
    },
    "SubJet": {**P4_FIELDS, **_f("btagDeepB", "rawFactor"), "hadronFlavour": U1, "nBHadrons": U1, "nCHadrons": U1},
    "Electron": {
        **_LEPTON_COMMON,
        "mvaIso": F4,
        "mvaIso_WP80": B,
        "mvaIso_WP90": B,
        "mvaNoIso": F4,
        "mvaNoIso_WP80": B,
        "mvaNoIso_WP90": B,
        "cutBased": U1,
        "convVeto": B,
        "lostHits": U1,
        **_f("deltaEtaSC", "sieie", "hoe", "eInvMinusPInv", "r9"),
        "photonIdx": I2,
    },
    "Muon": {
        **_LEPTON_COMMON,
        "pfRelIso04_all": F4,
        "pfIsoId": U1,
        "miniIsoId": U1,
        "tkRelIso": F4,
        "tkIsoId": U1,
        "looseId": B,
        "mediumId": B,
        "mediumPromptId": B,
        "tightId": B,
        "softId": B,
        "highPtId": U1,
        "isGlobal": B,
        "isTracker": B,
        "isPFcand": B,
        "isStandalone": B,
        **_f("ptErr", "segmentComp"),
        "nStations": U1,
        "nTrackerLayers": U1,
        "fsrPhotonIdx": I2,
    },
    # present for the schema's cross-references, always empty
    "Photon": {**_f("pt", "eta", "phi"), "electronIdx": I2, "genPartIdx": I2, "jetIdx": I2},
    "FsrPhoton": {**_f("pt", "eta", "phi", "relIso03", "dROverEt2"), "muonIdx": I2, "electronIdx": I2},
    "LowPtElectron": {**P4_FIELDS, "charge": I4, "pdgId": I4, "electronIdx": I2, "genPartIdx": I2, "photonIdx": I2},
    "Tau": {**P4_FIELDS, "charge": I2, "decayMode": U1, "genPartIdx": I2, "jetIdx": I2},
    "GenVisTau": {**P4_FIELDS, "charge": I2, "status": U1, "genPartIdxMother": I2},
}
EMPTY_COLLECTIONS = ("Photon", "FsrPhoton", "LowPtElectron", "Tau", "GenVisTau")

# PFNano tables (opt-in), names and types as in the PFNano file tests/data/pfnano.root
PFNANO_COLLECTIONS: dict[str, dict[str, type]] = {
    "PFCands": {
        **P4_FIELDS,
        **_f("d0", "d0Err", "dz", "dzErr", "puppiWeight", "puppiWeightNoLep", "trkChi2", "vtxChi2"),
        **{k: I4 for k in ("charge", "pdgId", "lostInnerHits", "pvAssocQuality", "trkQuality")},
    },
    "JetPFCands": {
        **_f("pt", "btagEtaRel", "btagPtRatio", "btagPParRatio", "btagSip3dVal", "btagSip3dSig", "btagJetDistVal"),
        "pFCandsIdx": I4,
        "jetIdx": I4,
    },
    "SV": {
        **_f("dlen", "dlenSig", "dxy", "dxySig", "pAngle", "chi2", "eta", "mass", "ndof", "phi", "pt", "x", "y", "z"),
        "ntracks": U1,
    },
    "JetSVs": {
        **_f("mass", "pt", "ntracks", "chi2", "normchi2", "dxy", "dxysig", "d3d", "d3dsig", "costhetasvpv"),
        **_f("phirel", "ptrel", "deltaR", "enration"),
        "jetIdx": I4,
        "sVIdx": I4,
    },
}

SCALARS: dict[str, type] = {
    "run": U4,
    "luminosityBlock": U4,
    "event": U8,
    "genWeight": F4,
    "Generator_weight": F4,
    "LHEWeight_originalXWGTUP": F4,
    **_f("MET_pt", "MET_phi", "MET_sumEt", "MET_covXX", "MET_covXY", "MET_covYY", "MET_significance"),
    **_f("PuppiMET_pt", "PuppiMET_phi", "PuppiMET_sumEt"),
    **_f("GenMET_pt", "GenMET_phi"),
    **_f(
        "Rho_fixedGridRhoFastjetAll",
        "Rho_fixedGridRhoFastjetCentral",
        "Rho_fixedGridRhoFastjetCentralNeutral",
        "Rho_fixedGridRhoFastjetCentralChargedPileUp",
    ),
    "PV_npvs": U1,
    "PV_npvsGood": U1,
    **_f("PV_x", "PV_y", "PV_z"),
    "Pileup_nTrueInt": F4,
    "Pileup_nPU": I4,
    "Pileup_sumEOOT": I4,
    "Pileup_sumLOOT": I4,
    **{
        f"Flag_{f}": B
        for f in (*MET_FILTERS, "METFilters")
    },
    **{
        f"HLT_{t}": B
        for t in (
            "IsoMu24",
            "Ele30_WPTight_Gsf",
            "Ele32_WPTight_Gsf",
            "Mu17_TrkIsoVVL_Mu8_TrkIsoVVL_DZ_Mass3p8",
            "Ele23_Ele12_CaloIdL_TrackIdL_IsoVL",
            "Mu8_TrkIsoVVL_Ele23_CaloIdL_TrackIdL_IsoVL_DZ",
            "Mu23_TrkIsoVVL_Ele12_CaloIdL_TrackIdL_IsoVL",
        )
    },
}
COUNTER_TYPE = I4
# theory weight vectors (crema.generate.theory): name -> entries per event, counter n<name>
WEIGHT_ARRAYS = {"LHEScaleWeight": 9, "LHEPdfWeight": 103, "PSWeight": 4}
WEIGHT_ARRAY_TYPE = F4


def collections(pfnano: bool = False) -> dict[str, dict[str, type]]:
    """Collections written (with the PFNano tables if ``pfnano``)."""
    return {**COLLECTIONS, **PFNANO_COLLECTIONS} if pfnano else COLLECTIONS


def branch_types(pfnano: bool = False) -> dict[str, type]:
    """Flat map of every written branch (collection fields as ``Coll_field``, counters ``nColl``)."""
    out: dict[str, type] = dict(SCALARS)
    for coll, fields in collections(pfnano).items():
        out[f"n{coll}"] = COUNTER_TYPE
        out.update({f"{coll}_{k}": t for k, t in fields.items()})
    for name in WEIGHT_ARRAYS:
        out[f"n{name}"] = COUNTER_TYPE
        out[name] = WEIGHT_ARRAY_TYPE
    return out
