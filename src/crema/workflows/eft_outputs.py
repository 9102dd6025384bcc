"""Files of a ``ttbar_eft`` run: EFT templates (ROOT), per-term yields, Combine scalings, feature table.

* ``eft_templates.root``: ``<channel>_<region>_<observable>/<process>_<term>`` TH1D/TH2D, terms
  ``sm``, ``lin_<wc>``, ``quad_<wc>``, ``mixed_<wc1>_<wc2>`` (yield(c) = sum_t term_t m_t(c));
  systematic variations ``<process>_<term>_<systematic>``.
* ``eft_yields.json``: dataset -> channel -> cut -> {term: yield}.
* ``scalings.json``: Combine's quadratic-scaling format (see docs/eft.md).
* ``eft_features.parquet``: the feature table for training.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import uproot

from crema.histograms.eft import EFTHist
from crema.processors.common import SampleInfo

NOMINAL = "nominal"


def process_eft_histograms(output: dict[str, Any], samples: dict[str, SampleInfo]) -> dict[str, dict[str, EFTHist]]:
    """EFT histograms summed per process label: process -> observable -> EFTHist."""
    out: dict[str, dict[str, EFTHist]] = defaultdict(dict)
    for ds, hists in sorted(output["eft_histograms"].items()):
        proc = "data_obs" if samples[ds].kind == "data" else samples[ds].process
        for obs, h in hists.items():
            out[proc][obs] = out[proc][obs] + h if obs in out[proc] else h.copy()
    return dict(out)


def _templates(h: EFTHist):
    """Yield (channel, region, systematic, term, values, edges...) of every template in ``h``."""
    view = h.term_view()  # (terms, channel, region, systematic, obs...)
    edges = [ax.edges for ax in h.axes[3:]]
    for ic, ch in enumerate(h.axes["channel"]):
        for ir, reg in enumerate(h.axes["region"]):
            for isy, syst in enumerate(h.axes["systematic"]):
                for it, term in enumerate(h.terms):
                    yield ch, reg, syst, term, view[it, ic, ir, isy], edges


def write_eft_templates(output: dict[str, Any], samples: dict[str, SampleInfo], path: str | Path) -> Path:
    """``eft_templates.root`` with one histogram per channel, region, observable, process, term (and variation)."""
    path = Path(path)
    with uproot.recreate(path) as f:
        for proc, hists in process_eft_histograms(output, samples).items():
            for obs, h in hists.items():
                for ch, reg, syst, term, values, edges in _templates(h):
                    name = f"{proc}_{term}" if syst == NOMINAL else f"{proc}_{term}_{syst}"
                    f[f"{ch}_{reg}_{obs}/{name}"] = (np.asarray(values, dtype=np.float64), *edges)
    return path


def eft_yields(output: dict[str, Any]) -> dict[str, Any]:
    """dataset -> channel -> cut -> {term: yield at the configured luminosity}."""
    terms = _terms(output)
    return {ds: {ch: {cut: dict(zip(terms, map(float, v))) for cut, v in cuts.items()} for ch, cuts in chans.items()}
            for ds, chans in output["eft_cutflow_yield"].items()}


def _terms(output: dict[str, Any]) -> list[str]:
    from crema.histograms.eft import term_names

    return term_names(output["wc_names"])


def combine_scalings(output: dict[str, Any], samples: dict[str, SampleInfo], region: str = "inclusive") -> list[dict]:
    """Per channel x observable and process: the SM-normalised quadratic form of every bin.

    ``parameters`` = ["1", wc...]; ``scaling[bin]`` is the lower triangle (row-major) of the
    symmetric matrix M with yield(c) / yield_SM = p^T M p, p = (1, c_1, ...): M_00 = 1,
    M_i0 = lin_i / (2 sm), M_ii = quad_i / sm, M_ij = mixed_ij / (2 sm).  Bins without SM
    yield get the SM scaling [1, 0, ...].
    """
    wc = list(output["wc_names"])
    n = len(wc)
    entries = []
    for proc, hists in process_eft_histograms(output, samples).items():
        for obs, h in hists.items():
            view = h.term_view()
            for ic, ch in enumerate(h.axes["channel"]):
                ir = h.axes["region"].index(region)
                isy = h.axes["systematic"].index(NOMINAL)
                t = view[:, ic, ir, isy].reshape(len(h.terms), -1)
                sm = t[0]
                safe = np.where(sm != 0, sm, 1.0)
                m = np.zeros((t.shape[1], n + 1, n + 1))
                m[:, 0, 0] = 1.0
                for i in range(n):
                    m[:, i + 1, 0] = m[:, 0, i + 1] = 0.5 * t[1 + i] / safe
                    m[:, i + 1, i + 1] = t[1 + n + i] / safe
                k = 1 + 2 * n
                for j in range(n):
                    for i in range(j):
                        m[:, j + 1, i + 1] = m[:, i + 1, j + 1] = 0.5 * t[k] / safe
                        k += 1
                m[sm == 0] = np.diag([1.0] + [0.0] * n)
                rows, cols = np.tril_indices(n + 1)
                entries.append({"channel": f"{ch}_{region}_{obs}", "process": proc, "parameters": ["1", *wc],
                                "scaling": m[:, rows, cols].tolist()})
    return entries


def write_feature_table(output: dict[str, Any], path: str | Path) -> Path | None:
    """``eft_features.parquet``: features, coef_<term>, weight (unnormalised), channel, dataset, event."""
    import pandas as pd

    frames = []
    for ds, chunks in sorted(output.get("features", {}).items()):
        for _, table in sorted(chunks, key=lambda kv: kv[0]):  # chunk order does not depend on the executor
            frame = pd.DataFrame(table)
            frame["dataset"] = ds
            frames.append(frame)
    if not frames:
        return None
    path = Path(path)
    pd.concat(frames, ignore_index=True).to_parquet(path, index=False)
    return path


def write_eft_outputs(output: dict[str, Any], samples: dict[str, SampleInfo], outdir: str | Path) -> dict[str, Path]:
    """All EFT files of a run into ``outdir``."""
    outdir = Path(outdir)
    paths = {"eft_templates": write_eft_templates(output, samples, outdir / "eft_templates.root")}
    paths["eft_yields"] = outdir / "eft_yields.json"
    paths["eft_yields"].write_text(json.dumps(eft_yields(output), indent=2))
    paths["scalings"] = outdir / "scalings.json"
    paths["scalings"].write_text(json.dumps(combine_scalings(output, samples)))
    features = write_feature_table(output, outdir / "eft_features.parquet")
    if features is not None:
        paths["eft_features"] = features
    return paths
