"""Signal-vs-background classifiers: ``classifier-dataset``, ``classifier-train``, ``classifier-report``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from rich.console import Console
from rich.table import Table

from crema.schema import ConfigError

if TYPE_CHECKING:  # imported where used: the commands are registered on every `crema` start-up
    import pandas as pd

console = Console(stderr=True)
REPORT_KEYS = ("accuracy", "auc", "asimov_significance", "max_significance", "r50", "r99")


# ---------------------------------------------------------------------- dataset
def make_dataset(config_path: str | Path, outdir: str | Path, executor: dict | None = None) -> pd.DataFrame:
    """Run the HH->bbWW selection of ``config_path`` and write ``features.parquet`` and ``features.yaml``.

    The config's ``classifier`` block chooses features and channels (default: the builtin
    ``hhbbww_sl`` set, SL channel); its ``processor`` must be ``hhbbww`` (its options, models
    and corrections are used as they are).
    """
    from crema.corrections.era import load_era
    from crema.processors.classifier_dataset import ClassifierDataset, ClassifierDatasetConfig
    from crema.processors.hhbbww import HHbbWWOptions
    from crema.schema import from_dict
    from crema.workflows.config import load_config
    from crema.workflows.run import generate_inputs, run

    config = load_config(config_path)
    # datasets given as a generator spec (no files) are generated next to the outputs
    config = generate_inputs(config, Path(outdir) / "samples", log=console.print, only_missing=True)
    if executor:
        config = config.with_executor(**executor)
    if config.processor.name != "hhbbww":
        raise ConfigError(f"{config_path}: processor.name: classifier datasets come from the hhbbww processor "
                          f"(got {config.processor.name!r})")
    options = from_dict(HHbbWWOptions, config.processor.options, "processor.options")
    spec = config.classifier or ClassifierDatasetConfig()
    proc = ClassifierDataset(options, config.samples, load_era(config.era), config.luminosity_fb, spec)
    output, report = run(config, proc)
    for line in report.lines():
        console.print(f"[yellow]warning:[/] {line}")
    table = output["table"]
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    table.to_parquet(outdir / "features.parquet", index=False)
    datasets = {}
    for d in config.datasets:
        rows = table[table["dataset"] == d.name]
        datasets[d.name] = {"kind": d.kind, "process": d.process, "xsec_pb": d.xsec_pb, "rows": int(len(rows)),
                            "yield": float(rows["weight"].sum())}
    definitions = {
        "features": {name: e.text for name, e in proc.features.items()},
        "channels": list(proc.channels),
        "luminosity_fb": config.luminosity_fb,
        "weight": "yield at luminosity_fb: xsec x lumi / sum genWeight x event weight",
        "label": "1 signal, 0 background",
        "config": str(Path(config_path).resolve()),
        "datasets": datasets,
    }
    (outdir / "features.yaml").write_text(yaml.safe_dump(definitions, sort_keys=False))
    return table


# ---------------------------------------------------------------------- training
def train(data_dir: str | Path, outdir: str | Path, methods: list[str], folds: int = 2, seed: int = 0,
          threads: int = 1, balance: str = "process") -> pd.DataFrame:
    """k-fold training of ``methods`` on ``data_dir/features.parquet`` (see :func:`crema.models.classifier.folds.train_folds`)."""
    import pandas as pd

    from crema.models.classifier.folds import train_folds
    from crema.models.classifier.inference import read_features

    data_dir = Path(data_dir)
    parquet, definitions = data_dir / "features.parquet", data_dir / "features.yaml"
    for path in (parquet, definitions):
        if not path.is_file():
            raise ConfigError(f"{path}: not found (write it with crema classifier-dataset)")
    table = pd.read_parquet(parquet)
    features = list(read_features(definitions))
    missing = [f for f in features if f not in table.columns]
    if missing:
        raise ConfigError(f"{parquet}: no column {missing[0]!r} of features.yaml")
    for label, what in ((1, "signal"), (0, "background")):
        if not (table["label"] == label).any():
            raise ConfigError(f"{parquet}: no {what} events")
    return train_folds(table, features, methods, outdir, k=folds, seed=seed, threads=threads,
                       features_file=definitions, balance=balance, log=console.print)


# ---------------------------------------------------------------------- report
def method_threshold(method: str) -> float:
    """The method's own working point on its score: all cuts passed for ``cut``, 0.5 for probabilities."""
    return 1.0 - 1e-6 if method == "cut" else 0.5


def report(model_dir: str | Path, outdir: str | Path, min_background: float = 1.0, min_background_events: int = 10,
           plots: bool = True) -> dict:
    """Metrics of every trained method on its out-of-fold scores; writes ``classifier_report.json`` and plots."""
    import pandas as pd

    from crema.models.classifier import metrics

    model_dir = Path(model_dir)
    path = model_dir / "scores.parquet"
    if not path.is_file():
        raise ConfigError(f"{path}: not found (write it with crema classifier-train)")
    scores = pd.read_parquet(path)
    methods = [c.removeprefix("score_") for c in scores.columns if c.startswith("score_")]
    y, w = scores["label"].to_numpy(), scores["weight"].to_numpy()
    result = {"methods": {}, "events": int(len(scores)), "signal_yield": float(w[y == 1].sum()),
              "background_yield": float(w[y == 0].sum()), "min_background": min_background,
              "min_background_events": min_background_events,
              "definitions": {
                  "asimov_significance": "Z_A of the events past the method's own working point (0.5; cut: all cuts)",
                  "max_significance": f"best Z_A over score thresholds keeping >= {min_background} weighted and "
                                      f">= {min_background_events} simulated background events",
                  "r50": "1/FPR at 50% signal efficiency", "r99": "1/FPR at 99% signal efficiency"}}
    for m in methods:
        s = metrics.summary(y, scores[f"score_{m}"].to_numpy(), w, min_background, method_threshold(m),
                            min_background_events)
        result["methods"][m] = s
    if "cut" in result["methods"]:
        base = result["methods"]["cut"]["max_significance"]
        for m, s in result["methods"].items():
            s["max_significance_over_cut"] = s["max_significance"] / base if base > 0 else float("nan")
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / "classifier_report.json").write_text(json.dumps(result, indent=1))
    print_table(result)
    if plots:
        draw(scores, methods, outdir, result, plot_style(model_dir, scores))
    return result


def print_table(result: dict, console_out: Console | None = None) -> None:
    """The comparison table: one row per method (HEP ML Lab's acc / max_sig / r50 shape, plus AUC, Z_A, R99)."""
    table = Table(title="classifier comparison (weighted, out of fold)")
    for col in ("method", "acc", "auc", "Z_A (wp)", "max_sig", "r50", "r99"):
        table.add_column(col, justify="right")
    for m, s in result["methods"].items():
        table.add_row(m, *(f"{s[k]:.4g}" for k in ("accuracy", "auc", "asimov_significance", "max_significance",
                                                    "r50", "r99")))
    (console_out or Console(width=200)).print(table)


def plot_style(model_dir: str | Path, scores: pd.DataFrame):
    """The plot style of the classifier's run: processes (config order) from ``features.yaml``, colours
    and labels from its config where it still exists, stack order and signal scale from the yields."""
    from dataclasses import replace

    from crema.processors.common import SampleInfo
    from crema.workflows.config import load_config
    from crema.workflows.plots import run_style

    path = Path(model_dir) / "features.yaml"
    definitions = yaml.safe_load(path.read_text()) if path.is_file() else {}
    datasets = definitions.get("datasets") or {
        ds: {"kind": "signal" if label == 1 else "background", "process": proc}
        for ds, proc, label in scores[["dataset", _process_column(scores), "label"]].drop_duplicates().itertuples(index=False)}
    samples = {name: SampleInfo(name, d["kind"], d["process"], d.get("xsec_pb")) for name, d in datasets.items()}
    config = None
    if definitions.get("config") and Path(definitions["config"]).is_file():
        try:
            config = load_config(definitions["config"])
        except ConfigError:
            config = None  # the config changed since: default colours
    process = scores[_process_column(scores)]
    totals = scores.groupby(process)["weight"].sum().to_dict()
    style = run_style(None, samples, config, totals={str(k): float(v) for k, v in totals.items()})
    return replace(style, luminosity_fb=definitions.get("luminosity_fb", style.luminosity_fb), logy=True)


def _process_column(scores: pd.DataFrame) -> str:
    return "process" if "process" in scores else "dataset"


def draw(scores: pd.DataFrame, methods: list[str], outdir: Path, result: dict, style) -> list[Path]:
    """ROC curves (background rejection vs signal efficiency) and weighted score distributions
    (stacked backgrounds with the MC statistical band, signals as lines), in the run's ``style``."""
    import numpy as np

    from crema.models.classifier import metrics
    from crema.plotting import Panel, draw_panel, experiment_label, pyplot, save

    plt = pyplot()
    y, w = scores["label"].to_numpy(), scores["weight"].to_numpy()
    written = []
    fig, ax = plt.subplots(figsize=(8, 7))
    for m in methods:
        fpr, tpr, *_ = metrics.roc_curve(y, scores[f"score_{m}"].to_numpy(), w)
        with np.errstate(divide="ignore"):
            ax.plot(tpr[1:], 1 / np.where(fpr[1:] > 0, fpr[1:], np.nan),
                    label=f"{m} (AUC {result['methods'][m]['auc']:.3f})", linewidth=2)
    ax.set_yscale("log")
    ax.set_xlabel("Signal efficiency")
    ax.set_ylabel("Background rejection 1/FPR")
    ax.legend(fontsize=14)
    experiment_label(ax, style, data=False)
    written.append(save(fig, outdir / "roc.png"))
    process = scores[_process_column(scores)].astype(str).to_numpy()
    present = set(process)
    for m in methods:
        col = scores[f"score_{m}"].to_numpy()
        bins = np.linspace(min(0.0, col.min()), max(1.0, col.max()), 26)

        def hist(mask):
            return (np.histogram(col[mask], bins, weights=w[mask])[0],
                    np.histogram(col[mask], bins, weights=w[mask] ** 2)[0])

        backgrounds = [p for p in style.stack if p in present] + sorted(
            {p for p in process[y == 0] if p not in style.stack})
        signals = [p for p in style.processes if style.kind(p) == "signal" and p in present] + sorted(
            {p for p in process[y == 1] if style.kind(p) != "signal"})
        panel = Panel(edges=bins, x_label=f"{m} score (out of fold)",
                      backgrounds={p: hist((y == 0) & (process == p)) for p in backgrounds},
                      signals={p: hist((y == 1) & (process == p))[0] for p in signals})
        written.append(draw_panel(panel, style, outdir / f"score_{m}.png"))
    return written


# ---------------------------------------------------------------------- command line
def _cmd_dataset(args: argparse.Namespace) -> None:
    from crema.workflows.cli import _executor_overrides

    table = make_dataset(args.config, args.output, _executor_overrides(args))
    n_sig = int((table["label"] == 1).sum())
    console.print(f"{len(table)} events ({n_sig} signal) x {len(table.columns)} columns -> {args.output}/features.parquet")


def _cmd_train(args: argparse.Namespace) -> None:
    methods = ["cut", "bdt", "mlp"] if args.method == "all" else [args.method]
    train(args.data, args.output, methods, folds=args.folds, seed=args.seed, threads=args.threads, balance=args.balance)
    console.print(f"models and out-of-fold scores in {args.output}")


def _cmd_report(args: argparse.Namespace) -> None:
    report(args.model_dir, args.output, args.min_background, args.min_background_events, plots=not args.no_plots)
    console.print(f"report in {args.output}/classifier_report.json")


def add_commands(sub) -> None:
    """Register the classifier commands on the ``crema`` sub-command parser."""
    from crema.workflows.cli import _add_executor_options

    d = sub.add_parser("classifier-dataset", help="per-event classifier features of a run config (features.parquet)")
    d.add_argument("config", help="run configuration (YAML; its classifier block chooses the features)")
    d.add_argument("-o", "--output", required=True, help="output directory")
    _add_executor_options(d)
    d.set_defaults(func=_cmd_dataset)

    t = sub.add_parser("classifier-train", help="k-fold training (by event number) of cut-and-count, BDT, MLP")
    t.add_argument("data", help="directory of crema classifier-dataset")
    t.add_argument("-o", "--output", required=True, help="model directory")
    t.add_argument("--method", choices=["cut", "bdt", "mlp", "all"], default="all",
                   help="cut-and-count, BDT (xgboost), MLP (torch) or all three (default: all)")
    t.add_argument("--folds", type=int, default=2, help="folds by event number (default: 2, even/odd)")
    t.add_argument("--seed", type=int, default=0, help="seed of the training (default: 0)")
    t.add_argument("--threads", type=int, default=1, help="threads for xgboost/torch (default: 1)")
    t.add_argument("--balance", choices=["process", "class"], default="process",
                   help="BDT/MLP training weights: every background process with the same total (process) or yields "
                        "(class) (default: process)")
    t.set_defaults(func=_cmd_train)

    r = sub.add_parser("classifier-report", help="weighted metrics, ROC curves and score plots of trained methods")
    r.add_argument("model_dir", help="model directory of crema classifier-train")
    r.add_argument("-o", "--output", required=True, help="output directory")
    r.add_argument("--min-background", type=float, default=1.0,
                   help="background events (weighted) a threshold must keep for max_significance (default: 1)")
    r.add_argument("--min-background-events", type=int, default=10,
                   help="simulated background events a threshold must keep for max_significance (default: 10)")
    r.add_argument("--no-plots", action="store_true", help="write no plots")
    r.set_defaults(func=_cmd_report)
