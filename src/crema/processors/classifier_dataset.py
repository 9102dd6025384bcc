"""Per-event classifier features of the HH->bbWW selection: one row per selected event."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from coffea import processor

from crema.corrections.era import EraConfig
from crema.observables import Expression, parse
from crema.processors.common import SampleInfo, correct_events, normalisation
from crema.processors.hhbbww import NOMINAL, HHbbWWOptions, HHbbWWProcessor, MODEL_OUTPUTS, observables
from crema.schema import ConfigError, load_yaml
from crema.selections import hhbbww as sel

FEATURE_DIR = Path(__file__).resolve().parent.parent / "configs" / "classifier"


@dataclass(frozen=True)
class ClassifierDatasetConfig:
    """The run config's ``classifier`` block.

    ``features``: a builtin set (``hhbbww_sl``), a YAML path (``features: {name: expr}``), a list of
    expressions (each column named by its expression) or a mapping name -> expression.
    ``channels``: the channels whose selected events become rows.
    """

    features: str | list[str] | dict[str, str] = "hhbbww_sl"
    channels: list[str] = field(default_factory=lambda: ["sl"])

    def validate(self) -> None:
        for ch in self.channels:
            if ch not in sel.CHANNELS:
                raise ConfigError(f"channels: unknown channel {ch!r} (known: {', '.join(sel.CHANNELS)})")

    def definitions(self, where: str = "classifier.features") -> tuple[dict[str, str], bool]:
        """(name -> expression, whether it is a builtin/file set whose model outputs may be dropped)."""
        if isinstance(self.features, list):
            return {text: text for text in self.features}, False
        if isinstance(self.features, dict):
            return dict(self.features), False
        path = Path(self.features)
        if path.suffix not in (".yaml", ".yml"):
            path = FEATURE_DIR / f"{self.features}.yaml"
            if not path.is_file():
                known = ", ".join(p.stem for p in FEATURE_DIR.glob("*.yaml"))
                raise ConfigError(f"{where}: unknown builtin feature set {self.features!r} (builtin: {known})")
        data = load_yaml(path)
        if not isinstance(data, dict) or not isinstance(data.get("features"), dict):
            raise ConfigError(f"{path}: features: expected a mapping of name -> expression")
        return {str(k): str(v) for k, v in data["features"].items()}, True


class ClassifierDataset(HHbbWWProcessor):
    """The HH->bbWW selection (nominal objects, its models) writing features instead of histograms.

    Chunk outputs are lists of column tables, merged by concatenation on any executor;
    ``postprocess`` scales ``weight`` to the yield at the run's luminosity
    (xsec x lumi / sum genWeight x event weight) and returns ``out["table"]``, a DataFrame sorted
    by (dataset, channel, event) so every executor gives the same rows in the same order.
    """

    def __init__(self, options: HHbbWWOptions, samples: dict[str, SampleInfo], era: EraConfig, luminosity_fb: float,
                 config: ClassifierDatasetConfig) -> None:
        super().__init__(replace(options, channels=list(config.channels)), samples, era, luminosity_fb)
        definitions, droppable = config.definitions()
        outputs = self.model_outputs()
        if droppable:  # a builtin/file set keeps the model outputs of the models this run has
            definitions = {k: v for k, v in definitions.items()
                           if not (v.split(".")[0] in MODEL_OUTPUTS and v.split(".")[0] not in outputs)}
        self.features: dict[str, Expression] = {
            name: parse(text, f"classifier.features.{name}", outputs=outputs) for name, text in definitions.items()
        }

    def required_branches(self, sample: SampleInfo) -> dict[str, str]:
        return {**super().required_branches(sample), "event": "classifier dataset (event number: folds)"}

    def empty_output(self) -> dict[str, Any]:
        return {"rows": {}, "sumw": {}, "nevents": {}, "processed": {}}

    def process(self, events) -> dict[str, Any]:
        dataset = events.metadata["dataset"]
        sample = self.samples[dataset]
        out = self.empty_output()
        out["nevents"][dataset] = len(events)
        out["processed"][events.metadata["filename"]] = len(events)
        if not sample.is_mc:
            return out
        corrected = correct_events(self.jet_corrector, events, [], self.options.met)[NOMINAL]
        nominal = self.select(corrected)
        weights = self.weights(corrected, sample, nominal)
        out["sumw"][dataset] = float(np.sum(weights.partial_weight(include=["genWeight"])))
        for channel in self.channels:
            selection, cuts = sel.channel_selection(nominal, channel, self.selection.channels[channel])
            mask = selection.all(*cuts)
            chosen = nominal[mask]
            inferred = self.infer(channel, corrected[mask], chosen)
            columns = observables(chosen, inferred, self.selection.btag.score).table(self.features)
            table = {"event": np.asarray(corrected.event)[mask].astype(np.int64), "weight": weights.weight()[mask],
                     **{name: values.astype(np.float32) for name, values in columns.items()}}
            out["rows"].setdefault(dataset, {})[channel] = [table]  # a list: chunks concatenate when merged
        return out

    def postprocess(self, accumulator: dict[str, Any]) -> dict[str, Any]:
        out = processor.accumulate([self.empty_output(), accumulator or {}])
        frames = []
        for dataset, channels in out["rows"].items():
            sample = self.samples[dataset]
            scale = normalisation(sample, out["sumw"].get(dataset, 0.0), self.luminosity_fb)
            for channel, chunks in channels.items():
                columns = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
                frame = pd.DataFrame({"label": np.int8(sample.kind == "signal"), "dataset": dataset,
                                      "process": sample.process, "channel": channel, **columns})
                frame["weight"] = frame["weight"] * scale
                frames.append(frame)
        columns = ["label", "weight", "dataset", "process", "channel", "event", *self.features]
        table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
        out["table"] = table[columns].sort_values(["dataset", "channel", "event"], kind="stable", ignore_index=True)
        out["luminosity_fb"] = self.luminosity_fb
        return out
