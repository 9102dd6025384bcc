"""Jet energy scale and resolution corrections with correctionlib, their variations, and MET propagation.

Steps for each jet (see docs/corrections.md):

1. undo NanoAOD's correction: ``pt_raw = pt * (1 - rawFactor)`` (same for mass);
2. apply the era's compound L1L2L3Res correction (inputs read from the correction itself), or,
   with a ``calibration`` (e.g. the DNN :class:`crema.models.jet_calibration.JetCalibration`),
   its per-jet factor ``pt / pt_raw`` instead (on data times the era's residual correction);
3. simulation only: JER hybrid smearing -- scale towards/away from the matched GenJet when
   dR < R/2 and |pt - pt_gen| < 3 sigma_JER pt, else a Gaussian of width sigma_JER sqrt(SF^2 - 1)
   whose random numbers come from correctionlib's counter-based ``HashPRNG`` seeded by
   (run, luminosityBlock, event, jet index), so results do not depend on chunking or executor;
4. JES uncertainty sources scale the smeared pt by (1 +- uncertainty); JER up/down redo step 3
   with the SF varied;
5. jets are re-sorted by pt; :meth:`JetCorrector.corrected_met` propagates the change to MET.

A jet with a non-finite input (pt, eta, area, rho...) gets NaN pt and mass (correctionlib is never
handed the bad value, :func:`crema.corrections.files.evaluate`); the object selection drops it and
MET propagation skips it.

Why not coffea's ``CorrectedJetsFactory``: its random stream is seeded from the first and last jet
of the chunk (results change with chunking), it has no dR requirement on the GenJet match, and its
lazy graph is heavier than the few array operations needed here. Evaluation stays in correctionlib.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import awkward as ak
import correctionlib
import correctionlib.schemav2 as cs
import numpy as np

from crema.corrections import files
from crema.corrections.era import EraConfig, JetsConfig, resolve_correction_file
from crema.flat import FlatFields
from crema.physical import physical, physical_kinematics
from crema.schema import ConfigError

log = logging.getLogger(__name__)

NOMINAL = "nominal"
_MIN_JET_ENERGY = 1e-2  # GeV: smearing never takes a jet below this energy (as CMSSW does)
_STREAMS = {"jets": 0, "fatjets": 1}  # separate random streams for AK4 and AK8


# --------------------------------------------------------------------------- random numbers
@functools.lru_cache(maxsize=1)
def _normal_generator() -> Any:
    # correctionlib's HashPRNG: a hash of the integer inputs seeds the draw, so the number for a given
    # (run, lumi, event, jet, stream) is the same whatever else is in the array.
    names = ["run", "luminosityBlock", "event", "index", "stream"]
    correction = cs.Correction(
        name="crema_jer_standard_normal",
        version=1,
        inputs=[cs.Variable(name=n, type="int") for n in names],
        output=cs.Variable(name="z", type="real"),
        data=cs.HashPRNG(nodetype="hashprng", inputs=names, distribution="stdnormal"),
    )
    return correction.to_evaluator()


def standard_normal(run: np.ndarray, lumi: np.ndarray, event: np.ndarray, index: np.ndarray,
                    stream: int = 0) -> np.ndarray:
    """One N(0, 1) number per jet, a pure function of (run, lumi, event, jet index, stream)."""
    as_int = lambda a: np.asarray(a).astype(np.int64, copy=False)  # noqa: E731 (uint64 event wraps, still unique)
    return _normal_generator().evaluate(as_int(run), as_int(lumi), as_int(event), as_int(index), int(stream))


# --------------------------------------------------------------------------- corrector
@dataclass
class _Flat:
    """Flat (one entry per jet) inputs and nominal products shared by all variations of one chunk."""

    objects: FlatFields  # the jets (their counts per event, event of each jet)
    eta: np.ndarray
    phi: np.ndarray
    rho: np.ndarray
    pt_orig: np.ndarray
    mass_orig: np.ndarray
    pt_raw: np.ndarray
    mass_raw: np.ndarray
    pt_jec: np.ndarray
    mass_jec: np.ndarray
    is_mc: bool
    smear: dict[str, np.ndarray] = field(default_factory=dict)  # JER factor by nominal/up/down


class JetCorrector:
    """JEC, JER smearing, JES/JER variations and type-1 MET propagation for one jet collection.

    Construct once (it validates the era's keys); it is picklable and loads the correctionlib file
    lazily, once per process. ``section`` is ``"jets"`` (AK4) or ``"fatjets"`` (AK8).

    ``calibration``: ``None`` (default) for the era's compound JEC, or any picklable callable
    ``calibration(jets, events)`` returning the factor ``pt / pt_raw`` per jet with the jets'
    layout (the DNN :class:`crema.models.jet_calibration.JetCalibration`), which then replaces
    the compound JEC as the nominal calibration; smearing, variations and MET act on top of it.
    Data get that factor times the era's residual, ``jec_data / jec`` on the raw jet (the
    L2L3Residual when data and simulation share L1L2L3, as in Summer22).
    """

    def __init__(self, era: EraConfig, section: str = "jets", calibration: Any = None) -> None:
        if section not in _STREAMS:
            raise ValueError(f"section must be one of {', '.join(_STREAMS)}, got {section!r}")
        cfg: JetsConfig | None = getattr(era, section)
        if cfg is None:
            raise ConfigError(_missing_section_message(era, section))
        self.era_name = era.name
        self.section = section
        self.config = cfg
        self.path = resolve_correction_file(cfg.file)
        try:
            cfg.validate()  # done already if the era came from load_era; cheap then (cached summary)
        except ConfigError as err:
            raise ConfigError(f"{section}.{err}") from None
        s = files.summary(self.path)
        self._inputs = {name: s.corrections[name].input_names for name in self._keys()}
        # validity ranges for resolution, SF and uncertainties (the JEC itself is applied unclipped)
        self._ranges = {name: files.input_ranges(s.corrections[name]) for name in self._keys()
                        if not s.corrections[name].compound}
        self._sources = cfg.sources()
        self.calibration = calibration
        self._cset: correctionlib.CorrectionSet | None = None

    # ------------------------------------------------------------------ public API
    @property
    def variations(self) -> list[str]:
        """Named variations for simulation: ``JES_<source>_up/down`` for each source, ``JER_up/down``."""
        out = [f"JES_{s}_{d}" for s in self._sources for d in ("up", "down")]
        return out + ["JER_up", "JER_down"]

    def correct(self, events: ak.Array, variation: str = NOMINAL) -> ak.Array:
        """The jet collection with corrected ``pt``/``mass`` for ``variation``, sorted by pt.

        Added fields: ``pt_raw``/``mass_raw`` (NanoAOD correction undone), ``pt_jec`` (after JEC or the
        ``calibration``, before smearing) and ``pt_orig``/``mass_orig`` (as stored in NanoAOD, for MET propagation).
        Data (events without ``genWeight``) get the data JEC only; every variation returns the
        nominal jets for data, so a processor can loop over variations uniformly.
        """
        return self.correct_all(events, [variation])[variation]

    def correct_all(self, events: ak.Array, variations: Iterable[str] | None = None) -> dict[str, ak.Array]:
        """``{variation: jets}`` for ``nominal`` and ``variations`` (default: all), sharing the JEC/JER work."""
        wanted = [NOMINAL, *self.variations] if variations is None else list(variations)
        return dict(self.iter_correct(events, wanted))

    def iter_correct(self, events: ak.Array, variations: Iterable[str]) -> Iterator[tuple[str, ak.Array]]:
        """``(variation, jets)`` for each of ``variations`` in turn, sharing the JEC/JER work like
        :meth:`correct_all`; a variation's arrays are built only when it is reached, so a caller that
        drops each before the next holds one variation at a time."""
        wanted = list(variations)
        unknown = [v for v in wanted if v != NOMINAL and v not in self.variations]
        if unknown:
            raise ValueError(f"unknown jet variation {unknown[0]!r} (known: nominal, {', '.join(self.variations)})")
        # JER up/down scale factors are evaluated only when those variations are asked for
        jer = ("nominal", *(d for d in ("up", "down") if f"JER_{d}" in wanted))
        flat = self._flat(events, jer)
        # the fields every variation shares are added once; each variation then adds its pt and mass
        shared = FlatFields(flat.objects.with_fields({"pt_raw": flat.pt_raw, "mass_raw": flat.mass_raw,
                                                      "pt_jec": flat.pt_jec, "pt_orig": flat.pt_orig,
                                                      "mass_orig": flat.mass_orig}))
        return ((v, self._build(shared, *self._pt_mass(flat, v))) for v in wanted)

    def jec_factor(self, events: ak.Array) -> np.ndarray:
        """Flat (collection order) nominal calibration factor ``pt_jec / pt_raw``, before smearing."""
        flat = self._flat(events, ())
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(flat.pt_raw > 0, flat.pt_jec / flat.pt_raw, 1.0)

    def corrected_met(self, events: ak.Array, jets: ak.Array, met: str = "PuppiMET") -> ak.Array:
        """``events[met]`` with ``pt``/``phi`` moved by the jet corrections (type-1 style propagation).

        MET_xy -= sum over jets with corrected pt > ``met_jet_pt_min`` of (corrected - NanoAOD) pt_xy.
        NanoAOD's MET already contains NanoAOD's own JEC, so only the change is propagated.
        """
        if "pt_orig" not in ak.fields(jets):
            raise ValueError("corrected_met needs jets from JetCorrector.correct (no pt_orig field)")
        m = events[met]
        # per jet on flat numpy (jets in their pt order, the order the sums run in); one awkward sum per axis
        counts = ak.num(jets, axis=1)
        flat = lambda a: np.asarray(ak.to_numpy(ak.flatten(a, axis=1)))  # noqa: E731
        pt, pt_orig, phi = flat(jets["pt"]), flat(jets.pt_orig), flat(jets["phi"])
        # a jet with unphysical kinematics (dropped by the selection) moves nothing: it must not turn MET into NaN
        usable = flat(physical_kinematics(jets)) & physical(pt_orig, "pt")
        with np.errstate(invalid="ignore"):
            moved = np.where(usable & (pt > self.config.met_jet_pt_min), pt - pt_orig, 0.0)
        dx = ak.sum(ak.unflatten(moved * np.cos(phi), counts), axis=1)
        dy = ak.sum(ak.unflatten(moved * np.sin(phi), counts), axis=1)
        px = m["pt"] * np.cos(m["phi"]) - dx
        py = m["pt"] * np.sin(m["phi"]) - dy
        out = ak.with_field(m, np.hypot(px, py), "pt")
        return ak.with_field(out, np.arctan2(py, px), "phi")

    @classmethod
    def optional(cls, era: EraConfig, section: str) -> "JetCorrector | None":
        """A corrector, or ``None`` with a one-line log message when the era has no such section."""
        if getattr(era, section) is None:
            log.warning(_missing_section_message(era, section))
            return None
        return cls(era, section)

    # ------------------------------------------------------------------ pickling
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cset"] = None  # compiled correctionlib objects stay in their process
        return state

    # ------------------------------------------------------------------ internals
    def _keys(self) -> list[str]:
        cfg = self.config
        keys = [cfg.jec, cfg.jer_resolution, cfg.jer_scale_factor]
        keys += [cfg.uncertainty_key(s) for s in cfg.sources()]
        return keys + ([cfg.jec_data] if cfg.jec_data else [])

    @property
    def cset(self) -> correctionlib.CorrectionSet:
        if self._cset is None:
            self._cset = files.correction_set(self.path)
        return self._cset

    def _evaluate(self, name: str, values: dict[str, Any], compound: bool = False) -> np.ndarray:
        # inputs in the order the correction declares them; real inputs clipped into its bin range
        # (the compound JEC has no ranges: unclipped); NaN out for a jet with a non-finite input
        ranges = self._ranges.get(name, {})
        correction = self.cset.compound[name] if compound else self.cset[name]
        return files.evaluate(correction, [values[inp] for inp in self._inputs[name]],
                              [ranges.get(inp) for inp in self._inputs[name]])

    def _flat(self, events: ak.Array, jer: tuple[str, ...] = ("nominal", "up", "down")) -> _Flat:
        cfg = self.config
        jets = events[cfg.collection]
        objects = FlatFields(jets)
        counts = objects.counts
        col = lambda name: np.asarray(objects[name], dtype=np.float64)  # noqa: E731
        per_jet = lambda a: np.repeat(np.asarray(ak.to_numpy(a)), counts)  # noqa: E731
        pt, mass, raw_factor = col("pt"), col("mass"), col("rawFactor")
        eta, phi = col("eta"), col("phi")
        rho = per_jet(_rho(events, cfg.rho)).astype(np.float64)
        run = per_jet(events.run)
        is_mc = "genWeight" in ak.fields(events)
        flat = _Flat(objects=objects, eta=eta, phi=phi, rho=rho, pt_orig=pt, mass_orig=mass,
                     pt_raw=pt * (1.0 - raw_factor), mass_raw=mass * (1.0 - raw_factor),
                     pt_jec=pt, mass_jec=mass, is_mc=is_mc)

        jec = cfg.jec if is_mc else cfg.jec_data
        if jec is None:
            raise ConfigError(f"era {self.era_name}: {self.section}.jec_data is not set, so data jets cannot be corrected")
        values = {"JetA": col("area"), "JetEta": eta, "JetPhi": phi, "JetPt": flat.pt_raw,
                  "JetMass": flat.mass_raw, "Rho": rho, "run": run}
        if self.calibration is None:
            factor = self._evaluate(jec, values, compound=True)
        else:
            factor = np.asarray(ak.to_numpy(ak.flatten(self.calibration(jets, events), axis=1)), dtype=np.float64)
            if not is_mc:  # the residual (data / simulation) on top of the simulation-trained calibration
                factor = factor * self._evaluate(jec, values, compound=True) / self._evaluate(cfg.jec, values, compound=True)
        flat.pt_jec, flat.mass_jec = flat.pt_raw * factor, flat.mass_raw * factor
        if is_mc and jer:
            flat.smear = self._smear(events, flat, jer)
        return flat

    def _smear(self, events: ak.Array, flat: _Flat,
               which: tuple[str, ...] = ("nominal", "up", "down")) -> dict[str, np.ndarray]:
        """JER hybrid smearing factors for the ``which`` scale factors (nominal, up, down)."""
        cfg = self.config
        values = {"JetEta": flat.eta, "JetPt": flat.pt_jec, "Rho": flat.rho}
        sigma = self._evaluate(cfg.jer_resolution, values)
        gen_pt, dr = _matched_gen(events, cfg, flat)
        matched = (dr < 0.5 * cfg.cone_size) & (np.abs(flat.pt_jec - gen_pt) < 3.0 * sigma * flat.pt_jec)
        # random numbers only for the jets smeared stochastically (the unmatched ones): each number is a
        # function of (run, lumi, event, jet index), so drawing fewer changes none of them
        stochastic_jets = np.flatnonzero(~matched)
        event_of_jet = flat.objects.event_index[stochastic_jets]
        index = stochastic_jets - flat.objects.starts[event_of_jet]  # the jet's place in its event
        z = np.zeros(len(matched))
        z[stochastic_jets] = standard_normal(np.asarray(ak.to_numpy(events.run))[event_of_jet],
                                             np.asarray(ak.to_numpy(events.luminosityBlock))[event_of_jet],
                                             np.asarray(ak.to_numpy(events.event))[event_of_jet], index,
                                             _STREAMS[self.section])
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # unphysical jets give NaN/inf here
            energy = np.hypot(flat.pt_jec * np.cosh(flat.eta), flat.mass_jec)
            rel_gen = np.where(matched, (flat.pt_jec - gen_pt) / flat.pt_jec, 0.0)
            floor = np.where(energy > 0, _MIN_JET_ENERGY / energy, 1.0)
        out = {}
        for key, name in zip(("nominal", "up", "down"), cfg.jer_values):
            if key not in which:
                continue
            sf = self._evaluate(cfg.jer_scale_factor, {**values, "systematic": name})
            scaling = 1.0 + (sf - 1.0) * rel_gen
            stochastic = 1.0 + z * sigma * np.sqrt(np.maximum(sf * sf - 1.0, 0.0))
            out[key] = np.maximum(np.where(matched, scaling, stochastic), floor)
        return out

    def _pt_mass(self, flat: _Flat, variation: str) -> tuple[np.ndarray, np.ndarray]:
        if not flat.is_mc:
            return flat.pt_jec, flat.mass_jec
        if variation in ("JER_up", "JER_down"):
            s = flat.smear[variation[4:]]
            return flat.pt_jec * s, flat.mass_jec * s
        s = flat.smear["nominal"]
        pt, mass = flat.pt_jec * s, flat.mass_jec * s
        if variation == NOMINAL:
            return pt, mass
        source, direction = variation[4:].rsplit("_", 1)
        unc = self._evaluate(self.config.uncertainty_key(source), {"JetEta": flat.eta, "JetPt": pt,
                                                                  "JetPhi": flat.phi, "Rho": flat.rho})
        scale = 1.0 + unc if direction == "up" else 1.0 - unc
        return pt * scale, mass * scale

    @staticmethod
    def _build(shared: FlatFields, pt: np.ndarray, mass: np.ndarray) -> ak.Array:
        """The jets (with the fields every variation shares) with this variation's pt and mass, sorted by
        pt (the collection's behaviour kept)."""
        out = shared.with_fields({"pt": pt, "mass": mass})
        return out[ak.argsort(out["pt"], axis=1, ascending=False)]


def _rho(events: ak.Array, name: str) -> ak.Array:
    if "Rho" in ak.fields(events) and name in ak.fields(events.Rho):
        return events.Rho[name]  # NanoAOD v12+: Rho_<name>
    if name in ak.fields(events):
        return events[name]
    raise ValueError(f"no rho branch {name!r} (looked for Rho_{name} and {name})")


def _matched_gen(events: ak.Array, cfg: JetsConfig, jet_flat: _Flat) -> tuple[np.ndarray, np.ndarray]:
    """pt of the GenJet each jet points to and their dR; (0, inf) for no or invalid index."""
    if cfg.gen_collection not in ak.fields(events):
        raise ValueError(f"simulated events without {cfg.gen_collection}: JER smearing needs generator jets")
    gen = FlatFields(events[cfg.gen_collection])
    gen_counts = gen.counts
    event_of_jet = jet_flat.objects.event_index
    idx = jet_flat.objects[cfg.gen_index].astype(np.int64)
    valid = (idx >= 0) & (idx < gen_counts[event_of_jet])  # NanoAOD can point past the stored GenJets
    where = np.where(valid, gen.starts[event_of_jet] + idx, 0)
    gen_pt, gen_eta, gen_phi = (np.asarray(gen[name], dtype=np.float64) for name in ("pt", "eta", "phi"))
    if len(gen_pt) == 0:
        return np.zeros(len(idx)), np.full(len(idx), np.inf)
    eta, phi = jet_flat.eta, jet_flat.phi
    dphi = (phi - gen_phi[where] + np.pi) % (2 * np.pi) - np.pi
    dr = np.where(valid, np.hypot(eta - gen_eta[where], dphi), np.inf)
    return np.where(valid, gen_pt[where], 0.0), dr


def _missing_section_message(era: EraConfig, section: str) -> str:
    if section == "fatjets":
        have = ""
        if era.jets is not None:
            names = files.summary(resolve_correction_file(era.jets.file)).corrections
            algos = sorted({n.rsplit("_", 1)[-1] for n in names})
            have = f"; {era.jets.file} only has {', '.join(algos)} corrections"
        return (f"era {era.name}: AK8 (FatJet) corrections are not available{have}. FatJet pt/mass stay as "
                f"in NanoAOD; add a 'fatjets' section with a JERC file that has AK8PFPuppi keys to correct them")
    return f"era {era.name}: no '{section}' section, so {section} are not corrected"
