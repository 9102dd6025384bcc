"""DeepHME: the X->HH->bbWW mass estimator, as a columnar crema model.

The networks (and their ``params_*.yaml``) are read from the installed
``DeepHME`` package; nothing is copied into crema.  :class:`DeepHME` is the
wrapper a processor calls on awkward (or dask-awkward) collections;
:func:`predict` is a stateless drop-in replacement for ``DeepHME.predict`` of
DeepHME 1.2.0 with its keyword interface and output shapes.

Each model comes as two folds: ``<name>_even.onnx`` was trained on events with
an even event number and is applied to odd events, ``<name>_odd.onnx`` the
other way round (as in DeepHME 1.2.0).  See ``docs/deephme.md`` for the
conventions, the differences to 1.2.0 and the validation numbers.
"""

from __future__ import annotations

import importlib.util
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import awkward as ak
import numpy as np
import yaml

from crema.models.onnx import OnnxModel, ProviderSpec

__all__ = [
    "DeepHME",
    "predict",
    "available_models",
    "models_dir",
    "cvnotb_from_v12",
    "propagate_mass_error",
    "DEFAULT_MODELS",
    "TARGET_OUTPUTS",
    "JET_FIELDS",
    "FATJET_FIELDS",
]

#: Model used when ``model_name`` is not given.
DEFAULT_MODELS = {"DL": "predict_quantiles3D_DL_v8", "SL": "predict_quantiles3D_SL_v3"}

#: Higgs mass used by the networks' energy layer and by the error propagation.
HIGGS_MASS = 125.0

KINEMATICS = ("pt", "eta", "phi", "mass")
#: Jet fields read by the wrapper besides pt/eta/phi/mass (``btagPNetCvNotB`` is optional, see :func:`cvnotb_from_v12`).
JET_FIELDS = (
    "btagPNetB",
    "btagPNetCvB",
    "btagPNetCvL",
    "btagPNetCvNotB",
    "btagPNetQvG",
    "PNetRegPtRawCorr",
    "PNetRegPtRawCorrNeutrino",
    "PNetRegPtRawRes",
)
#: Fat-jet fields read by the wrapper besides pt/eta/phi/mass.
FATJET_FIELDS = (
    "particleNet_QCD",
    "particleNet_XbbVsQCD",
    "particleNetWithMass_QCD",
    "particleNetWithMass_HbbvsQCD",
    "particleNet_massCorr",
)
_P4 = ("px", "py", "pz", "E")
_TARGETS = tuple(f"genH{h}_{c}" for h in ("VV", "bb") for c in _P4)
#: Network outputs read by the wrapper ([n, 3] each: the 0.16/0.5/0.84 quantiles, standardised units).
TARGET_OUTPUTS = _TARGETS
_OBJECT_PREFIX = {"centralJet": "jet", "SelectedFatJet": "fatjet"}

Standardisation = Literal["fold", "reference"]


# ---------------------------------------------------------------------------
# model files
# ---------------------------------------------------------------------------
def models_dir() -> Path:
    """Directory holding the networks shipped with the installed ``DeepHME`` package.

    Located through the import system without importing ``DeepHME`` itself
    (its ``__init__`` pulls in pandas and builds nothing we need).
    """
    spec = importlib.util.find_spec("DeepHME")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("The DeepHME package is not installed (pip install DeepHME).")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def available_models() -> list[str]:
    """Names of the models shipped with the installed DeepHME package."""
    root = models_dir()
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))) if root.is_dir() else []


def _load_params(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"DeepHME parameter file not found: {path}")
    with open(path) as f:
        return yaml.safe_load(f)


@dataclass(frozen=True)
class _Fold:
    """How the events of one parity are evaluated."""

    model: str  # key of the ONNX file in ``model_paths`` ("even"/"odd" = training parity)
    parity: int  # event_id % 2 of the events this model is applied to
    in_mean: np.ndarray
    in_scale: np.ndarray
    tgt_mean: np.ndarray  # (8,)
    tgt_scale: np.ndarray  # (8,)
    corr: np.ndarray  # (6, 6): px,py,pz of H->VV then H->bb


def _parse_input_name(name: str) -> tuple[str, int, str]:
    """``centralJet_3_px`` -> (``jet``, 2, ``px``); ``lep2_E`` -> (``lep``, 1, ``E``); ``met_px`` -> (``met``, 0, ``px``)."""
    m = re.fullmatch(r"(centralJet|SelectedFatJet)_(\d+)_(\w+)", name)
    if m:
        return _OBJECT_PREFIX[m[1]], int(m[2]) - 1, m[3]
    m = re.fullmatch(r"lep(\d)_(\w+)", name)
    if m:
        return "lep", int(m[1]) - 1, m[2]
    m = re.fullmatch(r"met_(\w+)", name)
    if m:
        return "met", 0, m[1]
    raise ValueError(f"Unrecognised DeepHME input feature {name!r}")


# ---------------------------------------------------------------------------
# numpy helpers (shared by the wrapper and the drop-in predict)
# ---------------------------------------------------------------------------
def _where(cond, a, b):
    return ak.where(cond, a, b) if isinstance(cond, ak.Array) else np.where(cond, a, b)


def cvnotb_from_v12(btagPNetB, btagPNetCvL, btagPNetTauVJet=None):
    """Substitute for ``Jet_btagPNetCvNotB``, which NanoAODv12 does not store.

    NanoAOD defines ``CvNotB = p_c / (1 - p_b)``, ``B = p_b / J``,
    ``CvL = p_c / (J - p_b)`` and ``TauVJet = T / (J + T)`` with
    ``J = p_b + p_c + p_uds + p_g`` and ``T`` the summed tau probabilities.
    Neglecting the electron/muon classes (``J + T = 1``) this gives exactly::

        CvNotB = CvL * (1 - B) * J / (1 - B * J),   J = 1 - TauVJet

    i.e. ``CvNotB = CvL`` when the tau probability is zero (also used when
    ``btagPNetTauVJet`` is not given).  NanoAOD's -1 sentinels are kept:
    ``B < 0`` (p_b = 0) gives -1, ``CvL < 0`` (p_c = 0) gives 0.
    Works on numpy or awkward arrays.
    """
    if btagPNetTauVJet is None:
        J = 1.0
    else:
        J = _where(btagPNetTauVJet >= 0, 1.0 - btagPNetTauVJet, 1.0)
    den = 1.0 - btagPNetB * J
    ratio = _where(den > 1e-9, (1.0 - btagPNetB) * J / _where(den > 1e-9, den, 1.0), 1.0)
    value = btagPNetCvL * ratio
    value = _where(value > 1.0, 1.0, value)  # (np.clip does not dispatch to awkward)
    return _where(btagPNetB < 0, -1.0, _where(btagPNetCvL < 0, 0.0, value))


def _pad(
    counts: np.ndarray,
    flat: Mapping[str, np.ndarray],
    slots: int,
    fill: float,
    order: np.ndarray | None = None,
    row_pos: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Jagged (``counts`` + flat contents) -> ``[n_events, slots]`` float32 arrays.

    ``order`` holds, for every element, the local index (within its event) of
    the element to put at this position (i.e. a flattened per-event argsort);
    ``None`` keeps the given order.  ``row_pos[i]`` is the output row of event
    ``i`` (default: ``i``).  Missing slots get ``fill``.
    """
    counts = np.asarray(counts, dtype=np.int64)
    n = len(counts)
    starts = np.cumsum(counts) - counts
    event_start = np.repeat(starts, counts)
    local = np.arange(len(event_start)) - event_start
    keep = local < slots
    rows = np.arange(n) if row_pos is None else row_pos
    dest = (np.repeat(rows * slots, counts) + local)[keep]
    src = (event_start + np.asarray(order, dtype=np.int64))[keep] if order is not None else np.flatnonzero(keep)
    out = {}
    for name, values in flat.items():
        arr = np.full(n * slots, fill, dtype=np.float32)
        arr[dest] = np.asarray(values)[src]
        out[name] = arr.reshape(n, slots)
    return out


def _cartesian(pt, eta, phi, mass=None) -> dict[str, np.ndarray]:
    """px, py, pz, E (float32, like the NanoAOD inputs) from pt, eta, phi, mass; zero-filled slots stay zero."""
    pt = np.asarray(pt, dtype=np.float32)
    phi = np.asarray(phi, dtype=np.float32)
    out = {"px": pt * np.cos(phi), "py": pt * np.sin(phi)}
    if eta is not None:
        pz = pt * np.sinh(np.asarray(eta, dtype=np.float32))
        mass = np.asarray(mass, dtype=np.float32)
        out["pz"] = pz
        out["E"] = np.sqrt(pt * pt + pz * pz + mass * mass)
    return out


def propagate_mass_error(hvv_p3: np.ndarray, hbb_p3: np.ndarray, widths: np.ndarray, corr: np.ndarray) -> np.ndarray:
    """Linear propagation of the momentum uncertainties to m_X = m(H->VV + H->bb).

    ``hvv_p3``/``hbb_p3``: ``[n, 3]`` central momenta; ``widths``: ``[n, 6]``
    uncertainties of (px, py, pz) of H->VV then H->bb; ``corr``: their 6x6
    correlation matrix (same order).  Energies follow the networks' constraint
    ``E = sqrt(m_H^2 + p^2)``.  Returns ``sqrt(J C J^T)`` per event, with
    ``J_i = dm_X/dp_i = (E_X p_i / E_i - P_X) / m_X``.
    """
    e_vv = np.sqrt(HIGGS_MASS**2 + np.sum(hvv_p3**2, axis=1))
    e_bb = np.sqrt(HIGGS_MASS**2 + np.sum(hbb_p3**2, axis=1))
    e_x = e_vv + e_bb
    p_x = hvv_p3 + hbb_p3
    with np.errstate(invalid="ignore", divide="ignore"):
        m_x = np.sqrt(e_x**2 - np.sum(p_x**2, axis=1))
        jac = np.concatenate(
            [(e_x / e_vv)[:, None] * hvv_p3 - p_x, (e_x / e_bb)[:, None] * hbb_p3 - p_x], axis=1
        ) / m_x[:, None]
    u = jac * widths
    var = np.sum((u @ corr) * u, axis=1)  # u C u^T per event
    return np.sqrt(np.maximum(var, 0.0))


def _energy_error(p3: np.ndarray, widths: np.ndarray, corr: np.ndarray) -> np.ndarray:
    """Uncertainty of E = sqrt(m_H^2 + p^2) from the (correlated) p3 uncertainties."""
    energy = np.sqrt(HIGGS_MASS**2 + np.sum(p3**2, axis=1))
    u = p3 / energy[:, None] * widths
    return np.sqrt(np.maximum(np.sum((u @ corr) * u, axis=1), 0.0))


def _to_numpy(x, dtype=np.float64) -> np.ndarray:
    """Flat awkward/numpy/list -> numpy; missing values become NaN."""
    if isinstance(x, ak.Array):
        x = ak.to_numpy(ak.fill_none(x, np.nan) if x.layout.is_option else x)
    return np.asarray(x, dtype=dtype)


# ---------------------------------------------------------------------------
# the wrapper
# ---------------------------------------------------------------------------
class DeepHME(OnnxModel):
    """Columnar DeepHME mass estimator for X->HH->bbWW (SL and DL channels).

    Call it as ``hme(event_id, leptons, jets, fatjets, met)`` with awkward or
    dask-awkward arrays (NanoEvents collections work as they are):

    * ``event_id`` -- per-event integers (NanoAOD ``event``); the parity picks
      the fold: odd events go to the network trained on even events and vice versa.
    * ``leptons`` -- jagged records with ``pt, eta, phi, mass``, sorted by pt
      (DL uses the first two, SL the first one; events with fewer leptons get NaN).
    * ``jets`` -- jagged records: the selected central AK4 jets in any order
      (sorted here by ``btagPNetB``, highest first; up to 10 used) with
      ``pt, eta, phi, mass`` and :data:`JET_FIELDS`.  Without
      ``btagPNetCvNotB`` (NanoAODv12) the substitute :func:`cvnotb_from_v12`
      is used, from ``btagPNetTauVJet`` when present.
    * ``fatjets`` -- jagged records: the selected AK8 jets (sorted here by pt;
      up to 3 used) with ``pt, eta, phi, mass`` and :data:`FATJET_FIELDS`.
    * ``met`` -- records with ``pt, phi`` (PuppiMET or MET, the caller's choice).

    Returns one record per input event (float64 fields)::

        mass, mass_error,
        hvv {px, py, pz, E}, hbb {px, py, pz, E},              # median (q50) prediction
        hvv_error {px, py, pz, E}, hbb_error {px, py, pz, E}

    ``*_error`` are widths of the central 68% interval (q84 - q16) as in
    DeepHME 1.2.0 (about 2 sigma for a Gaussian); the energy and mass errors
    are propagated from the momentum widths with the fold's correlation matrix.
    Events with missing leptons or non-finite inputs get NaN everywhere.

    Parameters
    ----------
    channel: ``"DL"`` or ``"SL"``.
    model_name: a model directory of the DeepHME package; default :data:`DEFAULT_MODELS` [channel].
    standardisation: ``"fold"`` (default): every fold uses its own training
        means and scales for inputs and targets, as embedded in its graph;
        ``"reference"``: DeepHME 1.2.0's mixture (kept for comparisons only).
    threads, providers, batch_size: see :class:`crema.models.onnx.OnnxModel`.
    """

    def __init__(
        self,
        channel: Literal["DL", "SL"] = "DL",
        model_name: str | None = None,
        standardisation: Standardisation = "fold",
        threads: int = 1,
        providers: str | Sequence[ProviderSpec] | None = None,
        batch_size: int | None = 2048,
    ) -> None:
        if channel not in DEFAULT_MODELS:
            raise ValueError(f"DeepHME channel must be one of {sorted(DEFAULT_MODELS)}, got {channel!r}")
        if standardisation not in ("fold", "reference"):
            raise ValueError(f"standardisation must be 'fold' or 'reference', got {standardisation!r}")
        model_name = model_name or DEFAULT_MODELS[channel]
        available = available_models()
        if model_name not in available:
            raise ValueError(f"DeepHME model {model_name!r} not found in {models_dir()}; available models: {available}")
        model_dir = models_dir() / model_name
        super().__init__(
            {p: model_dir / f"{model_name}_{p}.onnx" for p in ("even", "odd")},
            threads=threads,
            providers=providers,
            batch_size=batch_size,
        )
        self.channel = channel
        self.model_name = model_name
        self.standardisation = standardisation
        params = {p: _load_params(model_dir / f"params_{model_name}_{p}.yaml") for p in ("even", "odd")}
        self._check_params(params)
        self.input_names: list[str] = list(params["even"]["input_names"])
        self._plan, self._slots = self._column_plan(self.input_names)
        self._plan_by_object: dict[str, list] = {}
        for (obj, feat), where in self._plan.items():
            self._plan_by_object.setdefault(obj, []).append((feat, where))
        self._folds = self._make_folds(params, standardisation)

    # -- configuration ----------------------------------------------------
    def _check_params(self, params: dict[str, dict]) -> None:
        even, odd = params["even"], params["odd"]
        for key in ("input_names", "target_names", "quantiles", "use_energy_layer", "standardize"):
            if even.get(key) != odd.get(key):
                raise ValueError(f"DeepHME model {self.model_name}: even/odd parameter files disagree on {key!r}")
        if tuple(even["target_names"]) != _TARGETS or list(even["quantiles"]) != [0.16, 0.5, 0.84]:
            raise ValueError(f"DeepHME model {self.model_name}: unsupported targets/quantiles {even['target_names']}, {even['quantiles']}")
        has_lep2 = any(n.startswith("lep2_") for n in even["input_names"])
        if has_lep2 != (self.channel == "DL"):
            raise ValueError(f"DeepHME model {self.model_name} is not a {self.channel} model")

    @staticmethod
    def _column_plan(names: Sequence[str]) -> tuple[dict[tuple[str, str], tuple[Any, Any]], dict[str, int]]:
        """Where each input column comes from.

        Returns ``(object, feature) -> (destination columns, source slots)``
        (runs of consecutive indices become slices, so the matrix is filled
        block-wise) and the number of slots per object (10 jets, 3 fat jets, ...).
        """
        groups: dict[tuple[str, str], tuple[list[int], list[int]]] = {}
        for col, name in enumerate(names):
            obj, slot, feat = _parse_input_name(name)
            cols, slots = groups.setdefault((obj, feat), ([], []))
            cols.append(col)
            slots.append(slot)

        def compact(idx: list[int]):
            return slice(idx[0], idx[-1] + 1) if idx == list(range(idx[0], idx[0] + len(idx))) else np.array(idx)

        plan = {key: (compact(cols), compact(slots)) for key, (cols, slots) in groups.items()}
        n_slots: dict[str, int] = {}
        for (obj, _), (_, slots) in groups.items():
            n_slots[obj] = max(n_slots.get(obj, 0), max(slots) + 1)
        return plan, n_slots

    @staticmethod
    def _make_folds(params: dict[str, dict], standardisation: str) -> tuple[_Fold, ...]:
        def arr(p, key):
            return np.asarray(params[p][key], dtype=np.float64)

        corr = {p: arr(p, "global_corr_mtrx") for p in ("even", "odd")}
        if standardisation == "fold":
            # each network with the statistics of its own training (the same
            # target statistics are embedded in its energy layer)
            stats = {p: (arr(p, "input_train_means"), arr(p, "input_train_scales"), arr(p, "target_train_means"), arr(p, "target_train_scales")) for p in ("even", "odd")}
        else:
            # DeepHME 1.2.0: odd events (even network) use the odd file's statistics;
            # even events (odd network) use odd input means, even input scales and even targets
            stats = {
                "even": (arr("odd", "input_train_means"), arr("odd", "input_train_scales"), arr("odd", "target_train_means"), arr("odd", "target_train_scales")),
                "odd": (arr("odd", "input_train_means"), arr("even", "input_train_scales"), arr("even", "target_train_means"), arr("even", "target_train_scales")),
            }
        # the network trained on even events is applied to odd events and vice versa
        # inputs are standardised in float32 (the networks' precision), targets in float64
        return tuple(
            _Fold(p, 1 if p == "even" else 0, stats[p][0].astype(np.float32), stats[p][1].astype(np.float32), stats[p][2], stats[p][3], corr[p])
            for p in ("even", "odd")
        )

    # -- numpy core ---------------------------------------------------------
    def _fold_order(self, event_id: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Event indices grouped by fold (``self._folds`` order) and the group boundaries."""
        parity = (np.asarray(event_id) % 2).astype(np.int8)
        groups = [np.flatnonzero(parity == fold.parity) for fold in self._folds]
        return np.concatenate(groups), np.cumsum([0] + [len(g) for g in groups])

    def _input_matrix(self, objects: Mapping[str, Mapping[str, np.ndarray]], start: int, stop: int) -> np.ndarray:
        """Unstandardised float32 model inputs ``[stop - start, n_inputs]`` for rows ``start:stop``."""
        x = np.empty((stop - start, len(self.input_names)), dtype=np.float32)
        for obj, fields in objects.items():
            block = {k: v[start:stop] for k, v in fields.items()}
            if obj == "met":
                feats = {k: v[:, None] for k, v in _cartesian(block["pt"], None, block["phi"]).items()}
            else:
                feats = block | _cartesian(block["pt"], block["eta"], block["phi"], block["mass"])
            for feat, (cols, slots) in self._plan_by_object.get(obj, ()):
                x[:, cols] = feats[feat][:, slots]
        return x

    def evaluate(self, event_id: np.ndarray, objects: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """Evaluate on padded numpy inputs; the core behind :func:`predict`.

        ``objects`` maps ``"jet"``, ``"fatjet"``, ``"lep"`` to
        ``{field: [n, slots] array}`` (pt, eta, phi, mass and the tagger
        fields, already ordered and zero-padded; lepton gaps NaN) and
        ``"met"`` to ``{"pt": [n], "phi": [n]}``.  Returns flat float64
        arrays: ``mass``, ``mass_error``, ``{hvv,hbb}_{px,py,pz,E}``,
        ``{hvv,hbb}_error_{px,py,pz,E}``.
        """
        order, bounds = self._fold_order(event_id)
        grouped = {obj: {k: np.asarray(v)[order] for k, v in fields.items()} for obj, fields in objects.items()}
        return self._evaluate_grouped(grouped, bounds, order)

    def _evaluate_grouped(
        self, objects: Mapping[str, Mapping[str, np.ndarray]], bounds: np.ndarray, order: np.ndarray
    ) -> dict[str, np.ndarray]:
        """Evaluate inputs grouped by fold: input rows ``bounds[i]:bounds[i+1]`` belong to
        ``self._folds[i]``, input row ``k`` to event ``order[k]``; outputs are in event order."""
        missing = [f"{obj}.{feat}" for obj, feat in self._plan if obj != "met" and feat not in _P4 and feat not in objects.get(obj, {})]
        if missing:
            raise KeyError(f"DeepHME inputs missing: {missing}")
        n = int(bounds[-1])
        spans = [(fold, int(a), int(b)) for fold, a, b in zip(self._folds, bounds[:-1], bounds[1:])]

        quantiles = np.full((n, len(_TARGETS), 3), np.nan)
        step = self.batch_size or max(n, 1)
        for fold, first, last in spans:
            # Why batch here and not only in run(): building, standardising and
            # evaluating one batch at a time keeps the input matrix in cache.
            for start in range(first, last, step):
                stop = min(start + step, last)
                x = self._input_matrix(objects, start, stop)
                with np.errstate(invalid="ignore", over="ignore"):
                    ok = np.isfinite(x.sum(axis=1))  # NaN/inf anywhere in the row (cheaper than isfinite(x).all)
                x -= fold.in_mean
                x /= fold.in_scale
                if not ok.all():
                    x[~ok] = 0.0  # evaluated harmlessly, reported as NaN below
                outs = self.run(x, model=fold.model, output_names=_TARGETS)
                y = np.stack([outs[t] for t in _TARGETS], axis=1).astype(np.float64)
                y = y * fold.tgt_scale[:, None] + fold.tgt_mean[:, None]
                y[~ok] = np.nan
                quantiles[order[start:stop]] = y

        central = quantiles[:, :, 1]
        width = quantiles[:, :, 2] - quantiles[:, :, 0]
        p_vv, p_bb = central[:, 0:3], central[:, 4:7]
        e_x = central[:, 3] + central[:, 7]
        with np.errstate(invalid="ignore"):
            m2 = e_x**2 - np.sum((p_vv + p_bb) ** 2, axis=1)
            mass = np.where(m2 > 0, np.sqrt(np.abs(m2)), np.nan)

        w3 = np.concatenate([width[:, 0:3], width[:, 4:7]], axis=1)
        mass_error = np.full(n, np.nan)
        err_e = {"hvv": np.full(n, np.nan), "hbb": np.full(n, np.nan)}
        for fold, a, b in spans:
            rows = order[a:b]
            vv, bb, w = p_vv[rows], p_bb[rows], w3[rows]
            mass_error[rows] = propagate_mass_error(vv, bb, w, fold.corr)
            err_e["hvv"][rows] = _energy_error(vv, w[:, 0:3], fold.corr[0:3, 0:3])
            err_e["hbb"][rows] = _energy_error(bb, w[:, 3:6], fold.corr[3:6, 3:6])

        out = {"mass": mass, "mass_error": mass_error}
        for h, offset in (("hvv", 0), ("hbb", 4)):
            for i, c in enumerate(_P4):
                out[f"{h}_{c}"] = central[:, offset + i]
        for h, offset in (("hvv", 0), ("hbb", 4)):
            for i, c in enumerate(_P4[:3]):
                out[f"{h}_error_{c}"] = width[:, offset + i]
            out[f"{h}_error_E"] = err_e[h]
        return out

    # -- coffea ml_tools interface -------------------------------------------
    def __call__(self, event_id, leptons, jets, fatjets, met):
        """Evaluate on awkward or dask-awkward collections (see the class docstring)."""
        return super().__call__(event_id, leptons, jets, fatjets, met)

    def prepare_awkward(self, event_id, leptons, jets, fatjets, met) -> tuple[tuple, dict]:
        """Awkward collections -> flat (numpy-convertible) arrays; padding happens in numpy."""
        lib = self.get_awkward_lib(event_id, leptons, jets, fatjets, met) or ak
        jet_fields = list(KINEMATICS) + [f for f in JET_FIELDS if f != "btagPNetCvNotB"]
        if "btagPNetCvNotB" in jets.fields:
            jet_fields.append("btagPNetCvNotB")
        else:
            warnings.warn(
                "jets have no btagPNetCvNotB (NanoAODv12): DeepHME uses the substitute "
                "crema.models.deephme.cvnotb_from_v12(btagPNetB, btagPNetCvL, btagPNetTauVJet)",
                stacklevel=3,
            )
            if "btagPNetTauVJet" in jets.fields:
                jet_fields.append("btagPNetTauVJet")
        kw: dict[str, Any] = {"event_id": event_id, "met_pt": met.pt, "met_phi": met.phi}
        for prefix, coll, fields, key in (
            ("lep", leptons, KINEMATICS, None),
            ("jet", jets, jet_fields, "btagPNetB"),
            ("fatjet", fatjets, list(KINEMATICS) + list(FATJET_FIELDS), "pt"),
        ):
            missing = [f for f in fields if f not in coll.fields]
            if missing:
                raise KeyError(f"DeepHME: {prefix} collection lacks fields {missing}")
            kw[f"{prefix}_counts"] = lib.num(coll[fields[0]], axis=1)
            if key is not None:
                kw[f"{prefix}_order"] = lib.flatten(lib.argsort(coll[key], axis=1, ascending=False, stable=True), axis=1)
            for f in fields:
                kw[f"{prefix}_{f}"] = lib.flatten(coll[f], axis=1)
        return (), kw

    def numpy_call(self, event_id: np.ndarray, **kw: np.ndarray) -> dict[str, np.ndarray]:
        """Flat numpy arrays from :meth:`prepare_awkward` -> flat float64 outputs (one per event)."""
        event_id = np.asarray(event_id)
        order, bounds = self._fold_order(event_id)
        row_pos = np.empty(len(order), dtype=np.int64)
        row_pos[order] = np.arange(len(order))  # padding writes each event straight to its fold-grouped row
        objects: dict[str, dict[str, np.ndarray]] = {}
        for prefix, fill in (("lep", np.nan), ("jet", 0.0), ("fatjet", 0.0)):
            skip = (f"{prefix}_counts", f"{prefix}_order")
            flat = {k[len(prefix) + 1 :]: v for k, v in kw.items() if k.startswith(prefix + "_") and k not in skip}
            objects[prefix] = _pad(kw[f"{prefix}_counts"], flat, self._slots[prefix], fill, kw.get(f"{prefix}_order"), row_pos)
        jet = objects["jet"]
        if "btagPNetCvNotB" not in jet:
            tau = jet.pop("btagPNetTauVJet", None)
            jet["btagPNetCvNotB"] = np.where(jet["pt"] == 0, np.float32(0), cvnotb_from_v12(jet["btagPNetB"], jet["btagPNetCvL"], tau))
        objects["met"] = {"pt": np.asarray(kw["met_pt"])[order], "phi": np.asarray(kw["met_phi"])[order]}
        return self._evaluate_grouped(objects, bounds, order)

    def postprocess_awkward(self, return_array, *args, **kwargs):
        """Flat outputs -> one record per event with nested p4 records."""
        lib = self.get_awkward_lib(*args, **kwargs) or ak

        def p4(prefix):
            return lib.zip({c: return_array[f"{prefix}_{c}"] for c in _P4})

        return lib.zip(
            {
                "mass": return_array["mass"],
                "mass_error": return_array["mass_error"],
                "hvv": p4("hvv"),
                "hbb": p4("hbb"),
                "hvv_error": p4("hvv_error"),
                "hbb_error": p4("hbb_error"),
            },
            depth_limit=1,
        )

    def __repr__(self) -> str:
        return f"DeepHME(channel={self.channel!r}, model_name={self.model_name!r}, standardisation={self.standardisation!r}, threads={self.threads}, providers={list(self.providers)})"


# ---------------------------------------------------------------------------
# drop-in replacement for DeepHME 1.2.0's predict
# ---------------------------------------------------------------------------
_PREDICTORS: dict[tuple, DeepHME] = {}


def _padded(x, slots: int, fill: float) -> np.ndarray:
    """Jagged awkward (or 2D numpy) per-object array -> [n, slots] float32, in the given order."""
    if isinstance(x, ak.Array) and x.ndim == 2:
        counts = ak.to_numpy(ak.num(x, axis=1))
        flat = ak.to_numpy(ak.fill_none(ak.flatten(x, axis=1), fill))
        return _pad(counts, {"x": flat}, slots, fill)["x"]
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[:, None]
    out = np.full((len(arr), slots), fill, dtype=np.float32)
    out[:, : min(slots, arr.shape[1])] = arr[:, :slots]
    return out


def predict(
    event_id=None,
    lep1_pt=None, lep1_eta=None, lep1_phi=None, lep1_mass=None,
    lep2_pt=None, lep2_eta=None, lep2_phi=None, lep2_mass=None,
    met_pt=None, met_phi=None,
    jet_pt=None, jet_eta=None, jet_phi=None, jet_mass=None,
    jet_btagPNetB=None, jet_btagPNetCvB=None, jet_btagPNetCvL=None, jet_btagPNetCvNotB=None, jet_btagPNetQvG=None,
    jet_PNetRegPtRawCorr=None, jet_PNetRegPtRawCorrNeutrino=None, jet_PNetRegPtRawRes=None,
    fatjet_pt=None, fatjet_eta=None, fatjet_phi=None, fatjet_mass=None,
    fatjet_particleNet_QCD=None, fatjet_particleNet_XbbVsQCD=None, fatjet_particleNetWithMass_QCD=None,
    fatjet_particleNetWithMass_HbbvsQCD=None, fatjet_particleNet_massCorr=None,
    output_format: Literal["mass", "p4"] = "mass",
    *,
    channel: Literal["DL", "SL"] = "DL",
    return_errors: bool = False,
    model_name: str | None = None,
    reference: bool = False,
    jet_btagPNetTauVJet=None,
    threads: int = 1,
    providers: str | Sequence[ProviderSpec] | None = None,
):  # fmt: skip
    """Stateless drop-in for ``DeepHME(model_name, return_errors, channel).predict(...)`` (1.2.0).

    Same keyword arguments (flat lepton/MET arrays, jagged jet and fat-jet
    arrays, used in the order given: 1.2.0 does not sort them), plus the
    constructor's ``channel``, ``return_errors`` and ``model_name``.  Any
    number of calls, any chunk size (including zero events or fewer than 10
    jets / 3 fat jets).  ``reference=True`` reproduces 1.2.0's input/target
    standardisation (for comparisons; the error propagation is always the
    corrected one).  ``jet_btagPNetCvNotB`` may be omitted (NanoAODv12): the
    substitute :func:`cvnotb_from_v12` is then used, with the optional extra
    ``jet_btagPNetTauVJet``.

    Returns, as float64 numpy arrays:

    * ``output_format="mass"``: ``mass`` ``(n,)``, or ``(mass, mass_error)``;
    * ``output_format="p4"``: ``p4`` ``(n, 8)`` = px, py, pz, E of H->VV then
      H->bb, or ``(p4, p4_errors)`` with ``p4_errors`` also ``(n, 8)``
      (the E errors propagated from the momentum errors).
    """
    if output_format not in ("mass", "p4"):
        raise RuntimeError(f"Illegal output format: `{output_format}`. Only `mass` or `p4` are supported.")
    args = dict(locals())
    required = [k for k in args if k.startswith(("event_id", "lep1_", "met_", "jet_", "fatjet_")) or (channel == "DL" and k.startswith("lep2_"))]
    missing = [k for k in required if args[k] is None and k not in ("jet_btagPNetCvNotB", "jet_btagPNetTauVJet")]
    if missing:
        raise ValueError(f"predict: missing arguments {missing}")

    key = (channel, model_name, "reference" if reference else "fold", threads, repr(providers))
    hme = _PREDICTORS.get(key)
    if hme is None:
        hme = _PREDICTORS[key] = DeepHME(channel, model_name, "reference" if reference else "fold", threads=threads, providers=providers)

    nj, nf = hme._slots["jet"], hme._slots["fatjet"]
    jet = {f: _padded(args[f"jet_{f}"], nj, 0.0) for f in KINEMATICS + JET_FIELDS if args[f"jet_{f}"] is not None}
    if "btagPNetCvNotB" not in jet:
        tau = None if jet_btagPNetTauVJet is None else _padded(jet_btagPNetTauVJet, nj, 0.0)
        jet["btagPNetCvNotB"] = np.where(jet["pt"] == 0, np.float32(0), cvnotb_from_v12(jet["btagPNetB"], jet["btagPNetCvL"], tau))
    fatjet = {f: _padded(args[f"fatjet_{f}"], nf, 0.0) for f in KINEMATICS + FATJET_FIELDS}
    leps = ("lep1", "lep2") if channel == "DL" else ("lep1",)
    lep = {f: np.stack([_to_numpy(args[f"{lp}_{f}"], np.float32) for lp in leps], axis=1) for f in KINEMATICS}
    met = {"pt": _to_numpy(met_pt, np.float32), "phi": _to_numpy(met_phi, np.float32)}
    out = hme.evaluate(_to_numpy(event_id, dtype=None), {"lep": lep, "jet": jet, "fatjet": fatjet, "met": met})

    if output_format == "mass":
        return (out["mass"], out["mass_error"]) if return_errors else out["mass"]
    p4 = np.stack([out[f"{h}_{c}"] for h in ("hvv", "hbb") for c in _P4], axis=1)
    if return_errors:
        return p4, np.stack([out[f"{h}_error_{c}"] for h in ("hvv", "hbb") for c in _P4], axis=1)
    return p4
