"""b-tagging: working points from the CMS BTV files, MC efficiency maps, and the fixed-WP event weight."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import awkward as ak
import correctionlib
import correctionlib.schemav2
import hist
import numpy as np

from crema.corrections import files
from crema.flat import FlatFields
from crema.schema import ConfigError


def working_point(path: str | Path, tagger: str, working_point: str) -> float:
    """Discriminator threshold of ``working_point`` (e.g. ``M``) for ``tagger`` (e.g. ``particleNet``).

    Reads the ``<tagger>_wp_values`` correction; errors name the file and list what it contains.
    """
    key = f"{tagger}_wp_values"
    info = files.summary(path).require(key, str(path))
    # the skeleton of a category node lists its keys: ("cat", input, ((key, child), ...), default)
    points = [str(k) for k, _ in info.skeleton[2]] if info.skeleton and info.skeleton[0] == "cat" else []
    if working_point not in points:
        raise ConfigError(f"{path}: {key} has no working point {working_point!r} (it has: {', '.join(points)})")
    return float(correctionlib.CorrectionSet.from_file(str(path))[key].evaluate(working_point))


# --------------------------------------------------------------------------- efficiency maps
# The fixed-working-point method needs, per jet flavour, the MC probability that a jet is tagged.
# The maps are made from the analysis' own simulation (hist counts of all and tagged jets in
# pt x |eta| x hadronFlavour) and stored as a correctionlib JSON that EventWeights reads.
DEFAULT_PT_EDGES: tuple[float, ...] = (20.0, 30.0, 50.0, 70.0, 100.0, 140.0, 200.0, 300.0, 600.0, 1000.0)
DEFAULT_ABSETA_EDGES: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5)
FLAVOURS: tuple[int, ...] = (0, 4, 5)  # hadronFlavour: light, c, b
EFFICIENCY_FLOOR = 1e-3  # efficiencies are kept in [floor, 1 - floor] so P(MC) never vanishes


def efficiency_histogram(pt_edges: Sequence[float] = DEFAULT_PT_EDGES,
                         abseta_edges: Sequence[float] = DEFAULT_ABSETA_EDGES) -> hist.Hist:
    """An empty (weighted) count of jets in pt x |eta| x flavour x tagged, to fill with :func:`fill_efficiency`.

    Histograms of several chunks add up (coffea accumulates them like any other output).
    """
    return hist.Hist(
        hist.axis.Variable(list(pt_edges), name="pt", label="jet pt [GeV]"),
        hist.axis.Variable(list(abseta_edges), name="abseta", label="jet |eta|"),
        hist.axis.IntCategory(list(FLAVOURS), name="flavor", label="hadronFlavour"),
        hist.axis.Boolean(name="tagged"),
        storage=hist.storage.Weight(),
    )


def fill_efficiency(h: hist.Hist, jets: ak.Array, score: str, threshold: float,
                    weight: np.ndarray | None = None) -> hist.Hist:
    """Fill ``h`` with ``jets`` (pt, eta, hadronFlavour, ``score``); tagged means ``score > threshold``.

    ``weight`` is one number per event (e.g. the sign of genWeight), broadcast to its jets.
    Jets outside the pt/|eta| range go to the histogram's flow bins and are clamped on reading.
    """
    f = FlatFields(jets)
    w = None if weight is None else np.repeat(np.asarray(weight, dtype=np.float64), f.counts)
    h.fill(pt=f["pt"], abseta=np.abs(f["eta"]), flavor=f["hadronFlavour"].astype(int),
           tagged=f[score] > threshold, weight=w)
    return h


def efficiency_correction(h: hist.Hist, name: str = "btag_efficiency", description: str = "") -> correctionlib.schemav2.Correction:
    """The tagging efficiency tagged/all per (flavour, |eta|, pt) bin of ``h`` as a correctionlib correction.

    Inputs ``flavor`` (int: 0, 4, 5), ``abseta``, ``pt``; out-of-range values are clamped to the edge
    bins. A bin without jets takes its flavour's inclusive efficiency; all values are kept in
    ``[EFFICIENCY_FLOOR, 1 - EFFICIENCY_FLOOR]``.
    """
    cs = correctionlib.schemav2
    pt_edges = [float(e) for e in h.axes["pt"].edges]
    eta_edges = [float(e) for e in h.axes["abseta"].edges]
    # fold flow bins into the edge bins, matching the "clamp" flow of the correction
    counts = _fold_flow(_fold_flow(h.view(flow=True).value, 0), 1)  # (pt, abseta, flavour, tagged)
    flavour_axis = h.axes["flavor"]
    items = []
    for flavour in FLAVOURS:
        f = flavour_axis.index(flavour)
        tagged, total = counts[:, :, f, 1], counts[:, :, f].sum(axis=-1)
        inclusive = tagged.sum() / total.sum() if total.sum() > 0 else 0.5
        with np.errstate(divide="ignore", invalid="ignore"):
            eff = np.where(total > 0, tagged / total, inclusive)
        eff = np.clip(eff, EFFICIENCY_FLOOR, 1.0 - EFFICIENCY_FLOOR)
        # MultiBinning content is C-ordered with the first input (abseta) varying slowest
        items.append(cs.CategoryItem(key=flavour, value=cs.MultiBinning(
            nodetype="multibinning", inputs=["abseta", "pt"], edges=[eta_edges, pt_edges],
            content=[float(x) for x in eff.T.ravel()], flow="clamp")))
    return cs.Correction(
        name=name, version=1,
        description=description or "b-tagging efficiency in simulation (tagged / all), by hadronFlavour",
        inputs=[cs.Variable(name="flavor", type="int", description="hadronFlavour: 0, 4 or 5"),
                cs.Variable(name="abseta", type="real", description="|eta| of the jet"),
                cs.Variable(name="pt", type="real", description="pt of the jet [GeV]")],
        output=cs.Variable(name="efficiency", type="real"),
        data=cs.Category(nodetype="category", input="flavor", content=items),
    )


def _fold_flow(a: np.ndarray, axis: int) -> np.ndarray:
    # (under, b0, ..., bn, over) -> (under + b0, ..., bn + over)
    a = np.moveaxis(a, axis, 0)
    folded = a[1:-1].copy()
    folded[0] += a[0]
    folded[-1] += a[-1]
    return np.moveaxis(folded, 0, axis)


def write_efficiency_map(h: hist.Hist, path: str | Path, name: str = "btag_efficiency", description: str = "") -> Path:
    """Write :func:`efficiency_correction` of ``h`` to ``path`` (``.json`` or ``.json.gz``); returns the path."""
    import gzip

    path = Path(path)
    cset = correctionlib.schemav2.CorrectionSet(schema_version=2, corrections=[efficiency_correction(h, name, description)])
    text = cset.model_dump_json(exclude_unset=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wt") as stream:
            stream.write(text)
    else:
        path.write_text(text)
    return path


def fixed_wp_jet_factor(tagged: np.ndarray, efficiency: np.ndarray, sf: np.ndarray) -> np.ndarray:
    """Each jet's factor in the fixed-working-point weight: SF if tagged, else (1 - SF eff) / (1 - eff).

    The event weight P(data) / P(MC), with P(MC) = prod_tagged eff * prod_untagged (1 - eff) and
    P(data) = prod_tagged SF eff * prod_untagged (1 - SF eff), is the product of these factors; the
    untagged factor is floored at 0 when SF eff > 1.
    """
    eff = np.clip(np.asarray(efficiency, dtype=np.float64), EFFICIENCY_FLOOR, 1.0 - EFFICIENCY_FLOOR)
    sf = np.asarray(sf, dtype=np.float64)
    return np.where(tagged, sf, np.maximum(1.0 - sf * eff, 0.0) / (1.0 - eff))


def fixed_wp_weight(tagged: ak.Array, efficiency: ak.Array, sf: ak.Array) -> np.ndarray:
    """Per-event fixed-working-point weight P(data) / P(MC) from jagged per-jet inputs."""
    counts = ak.to_numpy(ak.num(tagged, axis=1))
    flat = lambda a: ak.to_numpy(ak.flatten(a, axis=1))  # noqa: E731
    factor = fixed_wp_jet_factor(flat(tagged), flat(efficiency), flat(sf))
    return np.asarray(ak.to_numpy(ak.prod(ak.unflatten(factor, counts), axis=1)), dtype=np.float64)
