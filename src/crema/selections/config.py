"""Typed selection thresholds; values come from YAML (``crema/configs/selection/*.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from crema.schema import ConfigError, load

SELECTION_DIR = Path(__file__).resolve().parent.parent / "configs" / "selection"


@dataclass(frozen=True)
class ElectronCuts:
    """Electron preselection; ``id`` and ``tight_id`` name boolean NanoAOD branches."""

    pt_min: float
    abs_eta_max: float
    abs_dz_max: float
    abs_dxy_max: float
    sip3d_max: float
    mini_iso_max: float
    id: str
    tight_id: str


@dataclass(frozen=True)
class MuonCuts:
    """Muon preselection; ``id``/``tight_id`` name boolean branches, ``pf_iso_id_min`` is Muon_pfIsoId."""

    pt_min: float
    abs_eta_max: float
    abs_dz_max: float
    abs_dxy_max: float
    sip3d_max: float
    pf_iso_id_min: int
    id: str
    tight_id: str


@dataclass(frozen=True)
class JetCuts:
    """AK4 or AK8 jet selection. ``jet_id_mask``: bits of Jet_jetId that must all be set (2 = tight)."""

    pt_min: float
    abs_eta_max: float
    jet_id_mask: int
    lepton_dr_min: float
    forward_abs_eta_max: float | None = None


@dataclass(frozen=True)
class BTag:
    """b-tagging: the score branch and the working point looked up in the era's b-tag file."""

    tagger: str
    score: str
    working_point: str


@dataclass(frozen=True)
class ChannelCuts:
    """Event requirements of one channel (``sl`` or ``dl``).

    Jets: ``min_central_jets`` AK4 jets (and ``min_jets_with_forward`` counting forward jets too),
    or at least ``min_fatjets`` AK8 jets.
    """

    n_leptons: int
    leading_lepton_pt_min: float
    subleading_lepton_pt_min: float = 0.0
    opposite_charge: bool = False
    tight_leptons: bool = True
    min_central_jets: int = 2
    min_jets_with_forward: int = 0
    min_fatjets: int = 1


@dataclass(frozen=True)
class Region:
    """An analysis region inside a channel, by b-tagged (central) jet and fat-jet multiplicity."""

    min_bjets: int = 0
    max_bjets: int | None = None
    min_fatjets: int = 0
    max_fatjets: int | None = None


@dataclass(frozen=True)
class SelectionConfig:
    """All selection thresholds of the HH->bbWW analysis."""

    electron: ElectronCuts
    muon: MuonCuts
    jet: JetCuts
    fatjet: JetCuts
    btag: BTag
    channels: dict[str, ChannelCuts]
    regions: dict[str, Region] = field(default_factory=lambda: {"inclusive": Region()})

    def validate(self) -> None:
        unknown = sorted(set(self.channels) - {"sl", "dl"})
        if unknown:
            raise ConfigError(f"channels.{unknown[0]}: unknown channel (allowed: sl, dl)")
        for name, ch in self.channels.items():
            expected = {"sl": 1, "dl": 2}[name]
            if ch.n_leptons != expected:
                raise ConfigError(f"channels.{name}.n_leptons: the {name} channel has {expected} lepton(s)")
        if self.jet.forward_abs_eta_max is not None and self.jet.forward_abs_eta_max < self.jet.abs_eta_max:
            raise ConfigError("jet.forward_abs_eta_max: must be >= jet.abs_eta_max")


def load_selection(name_or_path: str | Path) -> SelectionConfig:
    """Load a selection by builtin name (e.g. ``hhbbww_run3``) or YAML path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = SELECTION_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            known = sorted(p.stem for p in SELECTION_DIR.glob("*.yaml"))
            raise ConfigError(f"selection {name_or_path!r}: no such builtin selection (known: {', '.join(known)})")
    return load(SelectionConfig, path)
