"""SPANet workflows: training files from a run config, training, and the purity report."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from crema.models.chi2 import Chi2Masses
from crema.schema import ConfigError, to_dict
from crema.workflows.config import Config, load_config
from crema.workflows.run import RunReport, generate_inputs, run

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "spanet"
#: ``crema spanet-dataset`` without a config: generated ttH + ttbar semi-leptonic events.
DEFAULT_DATASET_CONFIG = CONFIG_DIR / "tth_sl_dataset.yaml"
#: ``crema spanet-report`` without a config: the shipped ttH model on held-out generated ttH events.
REPORT_CONFIG = CONFIG_DIR / "tth_sl_report.yaml"


def dataset_config(path: str | Path | None) -> Config:
    """The run config of a training file (the shipped ttH one when ``path`` is None)."""
    config = load_config(path or DEFAULT_DATASET_CONFIG)
    if config.processor.name != "spanet_dataset":
        raise ConfigError(f"processor.name: a SPANet training file needs the spanet_dataset processor, "
                          f"not {config.processor.name!r}")
    return config


def write_dataset(config: Config, output: str | Path, *, scale: float = 1.0, workdir: str | Path | None = None,
                  log: Callable[[str], None] | None = None) -> tuple[dict[str, Any], RunReport]:
    """Run the ``spanet_dataset`` processor of ``config`` and write its HDF5 file to ``output``.

    Datasets with a ``generate`` spec are generated first (into ``workdir``, a temporary
    folder by default). Returns the processor output and the run report.
    """
    from crema.processors.spanet_dataset import write_h5

    with tempfile.TemporaryDirectory(prefix="crema-spanet-") as tmp:
        config = generate_inputs(config, Path(workdir or tmp), scale, log)
        output_dict, report = run(config)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    write_h5(output_dict, output)
    return output_dict, report


def dataset_summary(output: dict[str, Any]) -> dict[str, Any]:
    """Events per dataset and the fraction of them with every target of a particle matched."""
    arrays, index = output["arrays"], output["dataset_index"]
    particles: dict[str, list[np.ndarray]] = {}
    for key, values in arrays.items():
        if key.startswith("TARGETS/"):
            particles.setdefault(key.split("/")[1], []).append(values >= 0)
    summary = {}
    for i, name in enumerate(output["dataset"]):
        sel = index == i
        n = int(sel.sum())
        summary[name] = {"events": n, "matched": {p: round(float(np.all(m, axis=0)[sel].mean()), 4) if n else 0.0
                                                   for p, m in particles.items()}}
    return summary


@dataclass(frozen=True)
class ReportConfig:
    """``crema spanet-report``: which model, which held-out events, the chi-square baseline's masses."""

    model: str = "tth_sl"  # shipped model name or .onnx path
    event_file: str = "tth_sl"
    dataset_config: str | None = None  # run config whose signal datasets are regenerated (default: ttH)
    events: int = 20000  # per signal dataset
    seed_offset: int = 1000  # added to the datasets' generator seeds: events never seen in training
    chi2: Chi2Masses = field(default_factory=Chi2Masses)


def spanet_report(config: ReportConfig, outdir: str | Path, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Purity of the network vs the chi-square baseline on freshly generated signal events.

    Writes ``spanet_report.json`` and ``spanet_report.txt`` into ``outdir``; returns the JSON content.
    """
    from crema.models.chi2 import chi2_tth
    from crema.models.spanet import (
        SPANet,
        assignment_purity,
        assignment_targets,
        builtin_event_file,
        network_inputs,
        shipped_model,
    )

    event = builtin_event_file(config.event_file)
    model = SPANet(shipped_model(config.model), event, threads=1)
    run_config = dataset_config(config.dataset_config)
    signal = [replace(d, generate=replace(d.generate, events=config.events, seed=d.generate.seed + config.seed_offset))
              for d in run_config.datasets if d.kind == "signal" and d.generate is not None]
    if not signal:
        raise ConfigError("dataset_config: no generated signal dataset to evaluate on")
    options = {**run_config.processor.options, "event_file": config.event_file, "max_jets": model.max_jets}
    run_config = replace(run_config, datasets=signal, processor=replace(run_config.processor, options=options))
    with tempfile.TemporaryDirectory(prefix="crema-spanet-report-") as tmp:
        output, _ = run(generate_inputs(run_config.with_executor(progress=False), tmp, log=log))
    arrays = output["arrays"]
    targets = assignment_targets(arrays, event)
    decoded, _ = model.evaluate(network_inputs(arrays, event))
    network = assignment_purity(decoded.assignments, targets, event)
    jets = {f: np.asarray(arrays[f"INPUTS/Momenta/{f}"], dtype=np.float64) for f in ("pt", "eta", "mass", "btag")}
    phi = np.arctan2(arrays["INPUTS/Momenta/sin_phi"], arrays["INPUTS/Momenta/cos_phi"])
    chi2 = chi2_tth(jets["pt"], jets["eta"], phi, jets["mass"], jets["btag"], arrays["INPUTS/Momenta/MASK"], config.chi2)
    baseline = assignment_purity({p.name: chi2[p.name] for p in event.particles}, targets, event)
    result = {
        "purity": {"network": network["event"], "chi2": baseline["event"],
                   "ratio": network["event"] / baseline["event"] if baseline["event"] else float("nan")},
        "particles": {"network": network["particles"], "chi2": baseline["particles"]},
        "matched": network["counts"],
        "events": len(output["event"]),
        "datasets": [d.name for d in signal],
        "model": str(shipped_model(config.model)),
        "chi2_masses": to_dict(config.chi2),
    }
    outdir = Path(outdir)
    save_json(result, outdir / "spanet_report.json")
    lines = [f"SPANet purity on {result['events']} held-out events ({', '.join(result['datasets'])})",
             f"{'':<12}{'network':>10}{'chi2':>10}{'matched':>10}"]
    for p in event.particles:
        lines.append(f"{p.name:<12}{network['particles'][p.name]:>10.3f}{baseline['particles'][p.name]:>10.3f}"
                     f"{network['counts'][p.name]:>10d}")
    lines.append(f"{'event':<12}{network['event']:>10.3f}{baseline['event']:>10.3f}{network['counts']['event']:>10d}")
    lines.append(f"network / chi2 (whole event): {result['purity']['ratio']:.2f}")
    (outdir / "spanet_report.txt").write_text("\n".join(lines) + "\n")
    result["table"] = lines
    return result


def save_json(data: Any, path: str | Path) -> Path:
    """Write ``data`` as indented JSON (numpy scalars converted)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=lambda x: x.item() if hasattr(x, "item") else str(x)) + "\n")
    return path


__all__ = ["DEFAULT_DATASET_CONFIG", "ReportConfig", "dataset_config", "dataset_summary", "spanet_report", "write_dataset"]
