"""Era configuration: which correction files, correction keys and working points a data-taking period uses.

Every section is validated when the era is loaded (at start-up): each named file is read once and
each correction key, category value (year, working point, systematic names) and input is checked, with
errors that name the offending key and list what the file does contain.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from crema.corrections import files
from crema.corrections.jetveto import JetVetoConfig
from crema.schema import ConfigError, load
from crema.selections.event import PrimaryDataset, TriggerConfig, check_event_config

_PACKAGE = Path(__file__).resolve().parent.parent
ERA_DIR = _PACKAGE / "configs" / "eras"
CORRECTIONS_DIR = _PACKAGE / "data" / "corrections"

# Inputs the correctors know how to fill, by correctionlib input name (see jets.py / weights.py).
JET_INPUTS = {"JetA", "JetEta", "JetPt", "JetPhi", "JetMass", "Rho", "run"}
JER_SF_INPUTS = {"JetEta", "JetPt", "Rho", "systematic"}
LEPTON_INPUTS = {"year", "abseta", "eta", "pt", "ValType", "scale_factors", "WorkingPoint", "working_point"}
PILEUP_INPUTS = {"NumTrueInteractions", "weights"}
BTAG_INPUTS = {"systematic", "working_point", "flavor", "abseta", "pt"}
# correctionlib input names that carry the nominal/up/down choice
VALUE_INPUTS = ("ValType", "scale_factors", "systematic", "weights")


@dataclass(frozen=True)
class Values:
    """The names a correction's systematic input uses for nominal, up and down."""

    nominal: str
    up: str
    down: str

    def __iter__(self):
        return iter((self.nominal, self.up, self.down))


def _value_input(info: files.CorrectionInfo) -> str | None:
    return next((n for n in info.input_names if n in VALUE_INPUTS), None)


def _check_values(info: files.CorrectionInfo, values: Values, key: str, fixed: dict[str, str]) -> None:
    name = _value_input(info)
    if name is None:
        raise ConfigError(f"{key}: {info.name} has no nominal/up/down input (its inputs: {', '.join(info.input_names)})")
    for which, value in zip(("nominal", "up", "down"), values):
        files.require_category(info, name, value, f"{key}.{which}", fixed)


@dataclass(frozen=True)
class JetsConfig:
    """Jet energy corrections, resolution smearing and uncertainties for one jet collection.

    ``uncertainty`` is the key pattern of the JES uncertainty sources, with ``{source}`` standing for
    the source name; ``uncertainty_sources`` lists the sources to vary (``None``: every source the
    pattern matches in the file, except ``Total``).
    """

    file: str
    jec: str
    jer_resolution: str
    jer_scale_factor: str
    uncertainty: str
    jec_data: str | None = None
    jer_values: Values = field(default_factory=lambda: Values("nom", "up", "down"))
    uncertainty_sources: list[str] | None = None
    rho: str = "fixedGridRhoFastjetAll"
    collection: str = "Jet"
    gen_collection: str = "GenJet"
    gen_index: str = "genJetIdx"
    cone_size: float = 0.4
    met_jet_pt_min: float = 15.0

    def validate(self) -> None:
        if "{source}" not in self.uncertainty:
            raise ConfigError(f"uncertainty: must contain '{{source}}', got {self.uncertainty!r}")
        if self.cone_size <= 0:
            raise ConfigError("cone_size: must be positive")
        s = files.summary(resolve_correction_file(self.file))
        for key in ("jec", "jec_data"):
            name = getattr(self, key)
            if name is not None:
                files.require_inputs(s.require(name, key, compound=True), JET_INPUTS, key)
        files.require_inputs(s.require(self.jer_resolution, "jer_resolution"), JET_INPUTS, "jer_resolution")
        sf = s.require(self.jer_scale_factor, "jer_scale_factor")
        files.require_inputs(sf, JER_SF_INPUTS, "jer_scale_factor")
        _check_values(sf, self.jer_values, "jer_values", {})
        for i, source in enumerate(self.sources()):
            info = s.require(self.uncertainty_key(source), f"uncertainty_sources[{i}]")
            files.require_inputs(info, JET_INPUTS, f"uncertainty_sources[{i}]")

    def uncertainty_key(self, source: str) -> str:
        return self.uncertainty.format(source=source)

    def sources(self) -> list[str]:
        """The JES uncertainty sources to vary, resolved against the file when not listed."""
        if self.uncertainty_sources is not None:
            return list(self.uncertainty_sources)
        prefix, _, suffix = self.uncertainty.partition("{source}")
        pattern = re.compile(re.escape(prefix) + r"(.+)" + re.escape(suffix) + "$")
        names = files.summary(resolve_correction_file(self.file)).plain_names
        found = [m.group(1) for m in map(pattern.match, names) if m]
        return [s for s in found if s != "Total"]


@dataclass(frozen=True)
class MuonConfig:
    """Muon scale factors: one correction per named component (``id``, ``iso``, ...)."""

    file: str
    corrections: dict[str, str]
    year: str | None = None
    values: Values = field(default_factory=lambda: Values("sf", "systup", "systdown"))

    def validate(self) -> None:
        if not self.corrections:
            raise ConfigError("corrections: name at least one muon correction (e.g. id, iso)")
        s = files.summary(resolve_correction_file(self.file))
        for part, name in self.corrections.items():
            key = f"corrections.{part}"
            info = s.require(name, key)
            files.require_inputs(info, LEPTON_INPUTS, key)
            fixed = _check_year(info, self.year, "year")
            _check_values(info, self.values, "values", fixed)


@dataclass(frozen=True)
class ElectronConfig:
    """Electron ID scale factor at one working point. ``supercluster_eta``: use eta + deltaEtaSC."""

    file: str
    correction: str
    working_point: str
    year: str | None = None
    values: Values = field(default_factory=lambda: Values("sf", "sfup", "sfdown"))
    supercluster_eta: bool = True

    def validate(self) -> None:
        info = files.summary(resolve_correction_file(self.file)).require(self.correction, "correction")
        files.require_inputs(info, LEPTON_INPUTS, "correction")
        fixed = _check_year(info, self.year, "year")
        wp_input = next((n for n in ("WorkingPoint", "working_point") if n in info.input_names), None)
        if wp_input is not None:
            files.require_category(info, wp_input, self.working_point, "working_point", fixed)
            fixed[wp_input] = self.working_point
        _check_values(info, self.values, "values", fixed)


@dataclass(frozen=True)
class PileupConfig:
    """Pileup reweighting in the true number of interactions."""

    file: str
    correction: str
    values: Values = field(default_factory=lambda: Values("nominal", "up", "down"))

    def validate(self) -> None:
        info = files.summary(resolve_correction_file(self.file)).require(self.correction, "correction")
        files.require_inputs(info, PILEUP_INPUTS, "correction")
        _check_values(info, self.values, "values", {})


@dataclass(frozen=True)
class BTagSFConfig:
    """Fixed-working-point b-tagging scale factors and the MC efficiency map they need.

    ``heavy`` (b and c jets) and ``light`` are keys in ``file`` with the BTV inputs
    (systematic, working_point, flavor, abseta, pt); ``efficiency`` is a key in ``efficiency_file``
    as written by :func:`crema.corrections.btag.write_efficiency_map`.
    """

    file: str
    heavy: str
    light: str
    efficiency_file: str
    efficiency: str = "btag_efficiency"
    values: Values = field(default_factory=lambda: Values("central", "up", "down"))

    def validate(self) -> None:
        s = files.summary(resolve_correction_file(self.file))
        for key in ("heavy", "light"):
            info = s.require(getattr(self, key), key)
            files.require_inputs(info, BTAG_INPUTS, key)
            _check_values(info, self.values, "values", {})
        eff = files.summary(resolve_correction_file(self.efficiency_file), "efficiency_file").require(self.efficiency, "efficiency")
        files.require_inputs(eff, {"flavor", "abseta", "pt"}, "efficiency")


def _check_year(info: files.CorrectionInfo, year: str | None, key: str) -> dict[str, str]:
    if "year" not in info.input_names:
        return {}
    if year is None:
        years = files.category_keys(info, "year")
        raise ConfigError(f"{key}: {info.name} needs a year (it has: {', '.join(years)})")
    files.require_category(info, "year", year, key)
    return {"year": year}


@dataclass(frozen=True)
class EraConfig:
    """Correction files of one era. Relative file names resolve inside crema's shipped corrections.

    Sections left out (``None``) switch that correction off: e.g. ``btag_sf`` is absent for 2022
    because no Run 3 b-tag SF file is shipped, and ``fatjets`` because the JERC file has no AK8.
    """

    name: str
    btag_file: str
    jets: JetsConfig | None = None
    fatjets: JetsConfig | None = None
    muon: MuonConfig | None = None
    electron: ElectronConfig | None = None
    pileup: PileupConfig | None = None
    btag_sf: BTagSFConfig | None = None
    lumi_uncertainty: float | None = None  # relative integrated-luminosity uncertainty (crema fit)
    # event-level selection (crema.selections.event): HLT paths, MET filters, certified lumi
    # sections (collision data), jet veto map, primary datasets in precedence order
    triggers: TriggerConfig | None = None
    met_filters: list[str] = field(default_factory=list)
    golden_json: str | None = None
    jet_veto: JetVetoConfig | None = None
    primary_datasets: list[PrimaryDataset] = field(default_factory=list)

    def validate(self) -> None:
        if self.lumi_uncertainty is not None and not 0.0 < self.lumi_uncertainty < 1.0:
            raise ConfigError(f"lumi_uncertainty: expected a relative uncertainty in (0, 1), got {self.lumi_uncertainty}")
        path = resolve_correction_file(self.btag_file)
        if not path.exists():
            raise ConfigError(f"btag_file: {path} does not exist")
        check_event_config(self)

    def path(self, name: str) -> Path:
        """Absolute path of the file held in field ``name``."""
        return resolve_correction_file(getattr(self, name))


def resolve_correction_file(name: str | Path) -> Path:
    """An absolute path as given, else a file shipped in ``crema/data/corrections``."""
    path = Path(name)
    return path if path.is_absolute() else CORRECTIONS_DIR / path


def load_era(name_or_path: str | Path) -> EraConfig:
    """Load an era by builtin name (``2022``) or by YAML path, validating every correction it names."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = ERA_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            known = sorted(p.stem for p in ERA_DIR.glob("*.yaml"))
            raise ConfigError(f"era {name_or_path!r}: no such builtin era (known: {', '.join(known)})")
    return load(EraConfig, path)
