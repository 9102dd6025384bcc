"""Event-level selection shared by every processor: golden JSON, MET filters, triggers, jet veto map.

The era chooses the paths, filters and files (``triggers``, ``met_filters``, ``golden_json``,
``jet_veto``, ``primary_datasets``); :class:`EventSelection` turns them into the first cutflow steps
of each channel, in this order::

    golden_json (data only) -> met_filters -> trigger -> jet_veto -> the channel's own cuts

Triggers depend on the channel and the flavour of the selected leptons: a single-lepton event needs a
single-lepton path of its lepton's flavour; a double-lepton event any path valid for its flavour pair
(the double-lepton paths of the pair and the single-lepton paths of either lepton). In collision data
an event of primary dataset P is kept only if it fired an accepted path of P and none of a primary
dataset listed before P (the era's precedence), so an event stored in two primary datasets counts once.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

import awkward as ak
import numpy as np
from coffea.analysis_tools import PackedSelection

from crema.schema import ConfigError

if TYPE_CHECKING:
    from crema.corrections.era import EraConfig


class SampleInfo(Protocol):
    """What the event-level steps need to know of a dataset (crema.processors.common.SampleInfo)."""

    name: str
    is_mc: bool
    primary_dataset: str | None

LUMI_DIR = Path(__file__).resolve().parent.parent / "data" / "lumi"
STEPS = ("golden_json", "met_filters", "trigger", "jet_veto")
# which trigger groups a lepton flavour (SL) or flavour pair (DL) accepts
SL_GROUPS = {11: ("single_electron",), 13: ("single_muon",)}
DL_GROUPS = {
    (11, 11): ("double_electron", "single_electron"),
    (13, 13): ("double_muon", "single_muon"),
    (11, 13): ("muon_electron", "single_muon", "single_electron"),
}


@dataclass(frozen=True)
class TriggerConfig:
    """HLT paths (NanoAOD branch names) per lepton flavour and multiplicity.

    ``missing``: what a path absent from a file means; ``error`` (default) stops at start-up naming
    it, ``not_fired`` counts it as not fired (for eras whose menu changed during the year).
    """

    single_muon: list[str] = field(default_factory=list)
    single_electron: list[str] = field(default_factory=list)
    double_muon: list[str] = field(default_factory=list)
    double_electron: list[str] = field(default_factory=list)
    muon_electron: list[str] = field(default_factory=list)
    missing: Literal["error", "not_fired"] = "error"

    GROUPS = ("single_muon", "single_electron", "double_muon", "double_electron", "muon_electron")

    def validate(self) -> None:
        for group in self.GROUPS:
            for i, path in enumerate(getattr(self, group)):
                if not path.startswith("HLT_"):
                    raise ConfigError(f"{group}[{i}]: {path!r} is not an HLT branch (HLT_...)")

    def paths(self) -> list[str]:
        """Every path, each once, in configuration order."""
        return list(dict.fromkeys(p for g in self.GROUPS for p in getattr(self, g)))


@dataclass(frozen=True)
class PrimaryDataset:
    """A primary dataset and the analysis paths it is built from."""

    name: str
    paths: list[str]


def resolve_lumi_file(name: str | Path) -> Path:
    """An absolute path as given, else a file shipped in ``crema/data/lumi``."""
    path = Path(name)
    return path if path.is_absolute() else LUMI_DIR / path


def check_event_config(era: EraConfig) -> None:
    """Validate the era's event-level section (called from the era's ``validate``)."""
    for i, flag in enumerate(era.met_filters):
        if not flag.startswith("Flag_"):
            raise ConfigError(f"met_filters[{i}]: {flag!r} is not a MET filter branch (Flag_...)")
    if era.golden_json is not None:
        path = resolve_lumi_file(era.golden_json)
        try:
            runs = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise ConfigError(f"golden_json: cannot read {path} ({err})") from None
        if not isinstance(runs, dict) or not all(k.isdigit() for k in runs):
            raise ConfigError(f"golden_json: {path} is not a CMS lumi JSON ({{run: [[first, last], ...]}})")
    names = [pd.name for pd in era.primary_datasets]
    if len(set(names)) != len(names):
        raise ConfigError("primary_datasets: a primary dataset is listed twice")
    if era.primary_datasets and era.triggers is not None:
        covered = {p for pd in era.primary_datasets for p in pd.paths}
        orphans = [p for p in era.triggers.paths() if p not in covered]
        if orphans:
            raise ConfigError(f"primary_datasets: trigger path {orphans[0]!r} belongs to no primary dataset")


@functools.lru_cache(maxsize=4)
def _lumi_mask(path: str):
    from coffea.lumi_tools import LumiMask

    return LumiMask(path)


def _branch(events: ak.Array, name: str) -> ak.Array | None:
    """An event-level NanoAOD branch (``HLT_X`` -> ``events.HLT.X``), None where the file has none."""
    prefix, _, rest = name.partition("_")
    if prefix not in ak.fields(events) or rest not in ak.fields(events[prefix]):
        return None
    return events[prefix][rest]


def _np(mask) -> np.ndarray:
    return np.asarray(ak.to_numpy(ak.fill_none(mask, False)), dtype=bool)


class EventSelection:
    """The era's event-level steps for a set of samples (validated against them at start-up).

    ``enabled=False`` applies none of them (for skims that dropped the HLT and Flag branches).
    """

    def __init__(self, era: EraConfig, samples: dict[str, SampleInfo], enabled: bool = True) -> None:
        self.era_name = era.name
        self.triggers = era.triggers if enabled else None
        self.met_filters = list(era.met_filters) if enabled else []
        self.golden_json = era.golden_json if enabled else None
        self.precedence = [pd.name for pd in era.primary_datasets]
        self.pd_paths = {pd.name: set(pd.paths) for pd in era.primary_datasets}
        self.jet_veto = None
        if era.jet_veto is not None and enabled:
            from crema.corrections.jetveto import JetVeto

            self.jet_veto = JetVeto(era.jet_veto)
        data = [s for s in samples.values() if not s.is_mc]
        for s in samples.values():
            pd = s.primary_dataset
            if pd is not None and s.is_mc:
                raise ConfigError(f"datasets.{s.name}.primary_dataset: only collision data has a primary dataset")
            if pd is not None and pd not in self.pd_paths:
                raise ConfigError(f"datasets.{s.name}.primary_dataset: {pd!r} is not a primary dataset of era "
                                  f"{self.era_name} (it has: {', '.join(self.precedence) or 'none'})")
        if len(data) > 1 and self.triggers is not None and any(s.primary_dataset is None for s in data):
            missing = next(s for s in data if s.primary_dataset is None)
            raise ConfigError(f"datasets.{missing.name}.primary_dataset: with several data datasets each needs its "
                              "primary dataset, or events in two of them would count twice")

    def required_branches(self, sample: SampleInfo) -> dict[str, str]:
        """Branches the event-level steps read for ``sample``, each mapped to what needs it."""
        needs = {}
        if not sample.is_mc and self.golden_json is not None:
            needs["run"] = needs["luminosityBlock"] = f"golden JSON (era {self.era_name} golden_json)"
        needs.update({f: f"MET filters (era {self.era_name} met_filters)" for f in self.met_filters})
        if self.triggers is not None and self.triggers.missing == "error":
            for group in TriggerConfig.GROUPS:
                for path in getattr(self.triggers, group):
                    needs.setdefault(path, f"trigger (era {self.era_name} triggers.{group})")
        if self.jet_veto is not None:
            needs.update({b: f"jet veto map (era {self.era_name} jet_veto)" for b in self.jet_veto.BRANCHES})
        return needs

    def steps(self, events: ak.Array, sample: SampleInfo) -> EventSteps:
        """The channel-independent masks of a chunk (computed once) and its HLT bits."""
        masks = {}
        if not sample.is_mc and self.golden_json is not None:
            mask = _lumi_mask(str(resolve_lumi_file(self.golden_json)))
            masks["golden_json"] = np.asarray(mask(ak.to_numpy(events.run), ak.to_numpy(events.luminosityBlock)), bool)
        if self.met_filters:
            met = np.ones(len(events), dtype=bool)
            for flag in self.met_filters:
                met &= _np(self._read(events, flag, "MET filter"))
            masks["met_filters"] = met
        if self.jet_veto is not None:
            masks["jet_veto"] = self.jet_veto.passes(events.Jet, events.Muon)
        fired = {}
        if self.triggers is not None:
            for path in self.triggers.paths():
                bits = _branch(events, path)
                if bits is None and self.triggers.missing == "error":
                    self._read(events, path, "trigger")  # raises, naming the path
                fired[path] = np.zeros(len(events), bool) if bits is None else _np(bits)
        return EventSteps(self, sample, masks, fired)

    @staticmethod
    def _read(events: ak.Array, name: str, what: str) -> ak.Array:
        bits = _branch(events, name)
        if bits is None:
            source = events.metadata.get("filename", "the input") if hasattr(events, "metadata") else "the input"
            raise KeyError(f"{source}: branch {name!r} ({what}) is missing")
        return bits


@dataclass
class EventSteps:
    """One chunk's event-level masks; :meth:`prepend` puts them in front of a channel's cuts."""

    owner: EventSelection
    sample: SampleInfo
    masks: dict[str, np.ndarray]
    fired: dict[str, np.ndarray]
    # channel -> (leptons, decision): jet variations share the leptons, so the decision is made once
    _decided: dict[str, tuple[ak.Array, np.ndarray]] = field(default_factory=dict, repr=False)

    def trigger(self, leptons: ak.Array, channel: str) -> np.ndarray:
        """Trigger decision of ``channel`` (``sl``/``dl``) for the flavour(s) of the selected leptons."""
        known = self._decided.get(channel)
        if known is not None and known[0] is leptons:
            return known[1]
        decision = self._trigger(leptons, channel)
        self._decided[channel] = (leptons, decision)
        return decision

    def _trigger(self, leptons: ak.Array, channel: str) -> np.ndarray:
        n = len(leptons)
        if self.owner.triggers is None:
            return np.ones(n, dtype=bool)
        flav = np.ma.filled(ak.to_numpy(abs(ak.pad_none(leptons.pdgId, 2, axis=1, clip=True))).astype(np.int64), 0)
        if channel == "sl":
            keys, table = flav[:, 0], SL_GROUPS
        else:
            pair = np.sort(flav, axis=1)
            keys, table = pair[:, 0] * 100 + pair[:, 1], {a * 100 + b: v for (a, b), v in DL_GROUPS.items()}
        pd = self.sample.primary_dataset
        own = self.owner.pd_paths.get(pd)
        higher = set()
        if pd is not None:
            for name in self.owner.precedence[: self.owner.precedence.index(pd)]:
                higher |= self.owner.pd_paths[name]
        passed = np.zeros(n, dtype=bool)
        for key, groups in table.items():
            accepted = [p for g in groups for p in getattr(self.owner.triggers, g)]
            fires = self._any([p for p in accepted if own is None or p in own], n)
            if pd is not None:  # an event a higher-precedence primary dataset holds is counted there
                fires &= ~self._any([p for p in accepted if p in higher], n)
            passed |= (keys == key) & fires
        return passed

    def _any(self, paths: list[str], n: int) -> np.ndarray:
        out = np.zeros(n, dtype=bool)
        for p in paths:
            out |= self.fired[p]
        return out

    def prepend(self, selection: PackedSelection, cuts: list[str], leptons: ak.Array, channel: str) -> list[str]:
        """Add the event-level steps to ``selection``; returns them followed by ``cuts`` (cutflow order)."""
        masks = {**self.masks, "trigger": self.trigger(leptons, channel)}
        names = [s for s in STEPS if s in masks and (s != "trigger" or self.owner.triggers is not None)]
        for name in names:
            selection.add(name, masks[name])
        return names + list(cuts)

    def processed_lumis(self, events: ak.Array):
        """The chunk's (run, lumi) sections that pass the golden JSON, as a set (None for simulation).

        A plain set of int pairs: coffea's accumulate takes the union over chunks, and crema's
        checkpoint store keeps it without pickle.
        """
        if self.sample.is_mc:
            return None
        keep = self.masks.get("golden_json", np.ones(len(events), dtype=bool))
        pairs = np.unique(np.stack([ak.to_numpy(events.run)[keep], ak.to_numpy(events.luminosityBlock)[keep]], axis=1)
                          .astype(np.int64), axis=0)
        return {(int(r), int(ls)) for r, ls in pairs}


def lumi_json(lumis) -> dict[str, list[list[int]]]:
    """A set of (run, lumi) pairs, a ``LumiList`` or an (N, 2) run/lumi array as compact CMS lumi JSON
    ``{run: [[first, last], ...]}``."""
    array = sorted(lumis) if isinstance(lumis, (set, frozenset)) else getattr(lumis, "array", lumis)
    if len(array) == 0:
        return {}
    pairs = np.unique(np.asarray(array, dtype=np.int64).reshape(-1, 2), axis=0)
    out: dict[str, list[list[int]]] = {}
    for run in np.unique(pairs[:, 0]):
        ls = pairs[pairs[:, 0] == run, 1]
        breaks = np.flatnonzero(np.diff(ls) != 1)
        starts = np.r_[ls[0], ls[breaks + 1]]
        stops = np.r_[ls[breaks], ls[-1]]
        out[str(int(run))] = [[int(a), int(b)] for a, b in zip(starts, stops)]
    return out


__all__ = ["STEPS", "EventSelection", "EventSteps", "PrimaryDataset", "TriggerConfig", "check_event_config",
           "lumi_json", "resolve_lumi_file"]
