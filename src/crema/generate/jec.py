"""The real CMS Summer22 AK4 Puppi jet energy correction and resolution, fast.

The generator needs the JEC both ways: reco jets are generated at a target
corrected pt and the raw pt is what the real JEC maps onto that target (so that
the stored ``Jet_pt = raw * JEC(raw)`` and ``Jet_rawFactor`` close exactly under
correctionlib).  Inverting needs several evaluations per jet, so the inversion
uses a fine (eta bin x log pt) table sampled from correctionlib; the final
forward correction is evaluated with correctionlib's compound
``L1L2L3Res`` itself.  The table assumes the MC correction does not depend on
jet area and rho (true for Puppi: its L1FastJet is unity); this is checked when
the table is built, and otherwise the inversion falls back to correctionlib.

The jet pt resolution (``JRV1_MC_PtResolution``) is tabulated the same way and
used as the width of the simulated detector smearing.
"""

from __future__ import annotations

import functools
import gzip
import json
from importlib import resources

import correctionlib
import numpy as np

JERC_FILE = "jet_jerc_Summer22_V3.json.gz"
JEC_NAME = "Summer22_22Sep2023_V3_MC_L1L2L3Res_AK4PFPuppi"
JER_NAME = "Summer22_22Sep2023_JRV1_MC_PtResolution_AK4PFPuppi"

_LOGPT = np.linspace(np.log(1.0), np.log(10000.0), 4001)
_DX = _LOGPT[1] - _LOGPT[0]


def jerc_path() -> str:
    """Path of the packaged JERC json."""
    return str(resources.files("crema") / "data" / "corrections" / JERC_FILE)


@functools.cache
def correction_set() -> correctionlib.CorrectionSet:
    """The packaged JERC correction set (loaded once)."""
    return correctionlib.CorrectionSet.from_file(jerc_path())


@functools.cache
def _json() -> dict:
    with gzip.open(jerc_path(), "rt") as f:
        return json.load(f)


def _binning(name: str) -> dict:
    for c in _json()["corrections"]:
        if c["name"] == name:
            return c["data"]
    raise KeyError(name)


def _eta_edges_of_compound(name: str) -> np.ndarray:
    comp = next(c for c in _json()["compound_corrections"] if c["name"] == name)
    edges: set[float] = set()
    for member in comp["stack"]:
        data = _binning(member)
        if data.get("nodetype") == "binning" and data.get("input") == "JetEta":
            edges.update(data["edges"])
    return np.array(sorted(edges))


def _interp(table: np.ndarray, row: np.ndarray, pt: np.ndarray) -> np.ndarray:
    """Linear interpolation in log pt of table[row, :]."""
    x = (np.log(np.clip(pt, 1.0, 9999.0)) - _LOGPT[0]) / _DX
    i = np.minimum(x.astype(np.int64), _LOGPT.size - 2)
    f = x - i
    return table[row, i] * (1.0 - f) + table[row, i + 1] * f


def _bin(edges: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Bin index with under/overflow mapped onto extra rows 0 and len(edges)."""
    return np.searchsorted(edges, x, side="right")


class JEC:
    """Forward and inverse of the compound MC JEC ``JEC_NAME``.

    The forward correction is the product of the compound's stack members; members
    that are exactly 1 everywhere (for Puppi MC: L1FastJet, L3Absolute, L2L3Residual)
    are verified to be so on a probe grid and skipped, which halves the cost of
    the exact evaluation without changing its value.
    """

    def __init__(self) -> None:
        cset = correction_set()
        self.compound = cset.compound[JEC_NAME]
        self.inputs = [i.name for i in self.compound.inputs]
        stack = next(c for c in _json()["compound_corrections"] if c["name"] == JEC_NAME)["stack"]
        self.edges = _eta_edges_of_compound(JEC_NAME)
        # rows: underflow, every bin, overflow (the correction's flow value)
        centres = np.concatenate([[self.edges[0] - 1.0], 0.5 * (self.edges[1:] + self.edges[:-1]), [self.edges[-1] + 1.0]])
        eta = np.repeat(centres, _LOGPT.size)
        pt = np.tile(np.exp(_LOGPT), centres.size)
        self.table = self._exact(np.full(eta.size, 0.5), eta, pt, np.full(eta.size, 25.0)).reshape(centres.size, -1)
        # is the table (area = 0.5, rho = 25) valid for every area and rho?
        probe = np.linspace(0, eta.size - 1, 5000).astype(np.int64)
        ref = self.table.reshape(-1)[probe]
        self.area_rho_independent = all(
            np.allclose(self._exact(np.full(probe.size, a), eta[probe], pt[probe], np.full(probe.size, r)), ref, rtol=1e-9)
            for a, r in ((0.3, 3.0), (0.7, 70.0))
        )
        # stack members that are not identically one (evaluated in order, pt updated in between)
        probe_args = {
            "JetA": np.tile([0.3, 0.5, 0.7], probe.size)[: probe.size],
            "JetEta": eta[probe],
            "JetPt": pt[probe],
            "Rho": np.tile([3.0, 25.0, 70.0], probe.size)[: probe.size],
        }
        self.members = []
        for name in stack:
            corr = cset[name]
            names = [i.name for i in corr.inputs]
            if not np.all(corr.evaluate(*[probe_args[k] for k in names]) == 1.0):
                self.members.append((corr, names))
        ok = self._product(probe_args) if self.members else np.ones(probe.size)
        if not np.allclose(ok, self.compound.evaluate(*[probe_args[k] for k in self.inputs]), rtol=1e-12):
            self.members = None  # fall back to the compound itself

    def _exact(self, area, eta, raw_pt, rho) -> np.ndarray:
        args = {"JetA": area, "JetEta": eta, "JetPt": raw_pt, "Rho": rho}
        return self.compound.evaluate(*[np.asarray(args[k], dtype=np.float64) for k in self.inputs])

    def _product(self, args: dict) -> np.ndarray:
        args = dict(args)
        total = np.ones(np.size(args["JetPt"]))
        for corr, names in self.members:
            f = corr.evaluate(*[args[k] for k in names])
            total = total * f
            args["JetPt"] = args["JetPt"] * f
        return total

    def factor(self, area, eta, raw_pt, rho) -> np.ndarray:
        """Exact correctionlib JEC factor at the raw pt (same value as the compound)."""
        if self.members is None:
            return self._exact(area, eta, raw_pt, rho)
        args = {"JetA": area, "JetEta": eta, "JetPt": raw_pt, "Rho": rho}
        return self._product({k: np.asarray(v, dtype=np.float64) for k, v in args.items()})

    def raw_for(self, target_pt, area, eta, rho, iterations: int = 5) -> np.ndarray:
        """Raw pt whose corrected pt (raw * JEC(raw)) equals ``target_pt`` (fixed-point iteration)."""
        target_pt = np.asarray(target_pt, dtype=np.float64)
        if self.area_rho_independent:
            row = _bin(self.edges, eta)
            f = lambda raw: _interp(self.table, row, raw)  # noqa: E731
        else:
            f = lambda raw: self._exact(area, eta, raw, rho)  # noqa: E731
        raw = target_pt / f(target_pt)
        for _ in range(iterations):
            raw = target_pt / f(raw)
        return raw


class JER:
    """Tabulated MC jet pt resolution ``JER_NAME`` as a function of (eta, pt, rho)."""

    def __init__(self) -> None:
        corr = correction_set()[JER_NAME]
        inputs = [i.name for i in corr.inputs]
        data = _binning(JER_NAME)
        self.eta_edges = np.array(data["edges"])
        self.rho_edges = np.array(data["content"][0]["edges"])
        ce = np.concatenate([[self.eta_edges[0]], 0.5 * (self.eta_edges[1:] + self.eta_edges[:-1]), [self.eta_edges[-1]]])
        ce[0] += 1e-3
        ce[-1] -= 1e-3  # flow bins: use the outermost bins' values
        cr = np.concatenate([[self.rho_edges[0]], 0.5 * (self.rho_edges[1:] + self.rho_edges[:-1]), [self.rho_edges[-1] - 1e-3]])
        e, r, p = np.meshgrid(ce, cr, np.exp(_LOGPT), indexing="ij")
        args = {"JetEta": e.ravel(), "Rho": r.ravel(), "JetPt": p.ravel()}
        vals = corr.evaluate(*[args[k] for k in inputs])
        self.n_rho = cr.size
        self.table = vals.reshape(ce.size * cr.size, -1)

    def __call__(self, eta, pt, rho) -> np.ndarray:
        """Relative pt resolution sigma(pt)/pt."""
        ie = _bin(self.eta_edges, eta)
        ir = np.minimum(_bin(self.rho_edges, rho), self.n_rho - 1)
        return _interp(self.table, ie * self.n_rho + ir, pt)


@functools.cache
def jec() -> JEC:
    """Shared JEC helper (built once per process, ~1 s)."""
    return JEC()


@functools.cache
def jer() -> JER:
    """Shared JER helper (built once per process)."""
    return JER()
