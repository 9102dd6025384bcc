"""report.html: one self-contained page per run, for reading in a browser or attaching to a mail.

Built only from what a run directory already holds: report.json (status, events, lost events, bad
files and chunks, non-finite and undefined counts, timings), cutflow.json, config.yaml, run.json with
histograms.npz (yields with their MC statistical uncertainty, the systematic variations) and the
images under ``plots/`` (embedded as base64 data URIs). The page loads nothing from outside (no
scripts, fonts, style sheets or links to other files); every text from the run (dataset names,
paths, error messages, the config) is HTML-escaped.
"""

from __future__ import annotations

import base64
import datetime
import json
import re
from collections import defaultdict
from collections.abc import Iterable
from html import escape
from pathlib import Path
from typing import Any

import yaml

from crema.schema import ConfigError

REPORT_NAME = "report.html"
IMAGE_TYPES = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
NOMINAL = "nominal"  # the nominal entry of the systematic axis (crema.workflows.outputs.NOMINAL)

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0 auto;
       max-width: 1400px; padding: 0 1.5em 3em; color: #1d1d1f; line-height: 1.4; }
h1 { margin: 0.8em 0 0.2em; } h2 { margin-top: 1.8em; border-bottom: 2px solid #ddd; padding-bottom: 0.2em; }
h3 { margin: 1.2em 0 0.4em; }
nav a { margin-right: 1em; } .muted { color: #666; }
.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.status { display: inline-block; padding: 0.1em 0.6em; border-radius: 0.3em; color: white; font-weight: bold; }
.status.complete { background: #2e7d32; } .status.failed { background: #c62828; }
.status.interrupted { background: #ef6c00; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 0.4em 0 1em; font-size: 0.92em; }
th, td { border: 1px solid #d0d0d0; padding: 0.2em 0.55em; vertical-align: top; }
th { background: #f3f3f3; text-align: left; } tbody tr:nth-child(even) { background: #fafafa; }
td small { color: #666; display: block; }
dl.summary { display: grid; grid-template-columns: max-content auto; gap: 0.15em 1.2em; }
dl.summary dt { font-weight: bold; } dl.summary dd { margin: 0; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(380px, 1fr)); gap: 1em; }
figure { margin: 0; border: 1px solid #e0e0e0; padding: 0.4em; background: white; }
figure img { width: 100%; height: auto; display: block; }
figcaption { font-size: 0.85em; color: #444; word-break: break-all; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
.problem { color: #b71c1c; } .ok { color: #2e7d32; }
"""


def write_html_report(run_dir: str | Path, path: str | Path | None = None, plots_since: float | None = None) -> Path:
    """Write ``run_dir/report.html`` (or ``path``) from the run directory's files; returns its path.

    ``plots_since``: embed only images modified at or after this time (``os.stat`` seconds), so that
    plots an earlier run left in the folder are not shown as this run's."""
    run_dir = Path(run_dir)
    target = Path(path) if path is not None else run_dir / REPORT_NAME
    text = build_html(run_dir, plots_since)
    tmp = target.with_name(f".{target.name}.tmp")  # never half a page, even when interrupted
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(target)
    return target


def build_html(run_dir: str | Path, plots_since: float | None = None) -> str:
    """The report page of ``run_dir`` as one HTML string (needs report.json; the rest where present).

    For a run that did not complete, the cutflow, histograms and plots in the folder are an earlier
    run's (a failed or interrupted run writes none): they are left out."""
    run_dir = Path(run_dir)
    report_path = run_dir / "report.json"
    if not report_path.is_file():
        raise ConfigError(f"{run_dir}: no report.json (written by crema run and crema demo)")
    try:
        report = json.loads(report_path.read_text())
    except ValueError as err:
        raise ConfigError(f"{report_path}: not valid JSON ({err})") from None
    config_text = _read(run_dir / "config.yaml")
    config = (yaml.safe_load(config_text) if config_text else None) or {}
    complete = report.get("status") == "complete"
    cutflow = json.loads(_read(run_dir / "cutflow.json") or "{}") if complete else {}
    run_meta = json.loads(_read(run_dir / "run.json") or "{}") if complete else {}
    histograms = _histograms(run_dir) if complete else None
    plots = _plots(run_dir / "plots", plots_since) if complete else []

    sections = [
        ("summary", "Summary", _summary(report, config, run_meta, run_dir)),
        ("datasets", "Datasets", _datasets(report, config, run_meta)),
        ("cutflow", "Cutflow", _cutflow(cutflow, run_meta)),
        ("yields", "Yields", _yields(histograms, run_meta)),
        ("plots", "Plots", _plot_section(plots, histograms)),
        ("systematics", "Systematics", _systematics(histograms, config)),
        ("problems", "Problems", _problems(report, cutflow)),
        ("config", "Configuration", _config(config_text)),
    ]
    nav = " ".join(f'<a href="#{key}">{title}</a>' for key, title, _ in sections)
    body = "\n".join(f'<section id="{key}">\n<h2>{title}</h2>\n{content}\n</section>' for key, title, content in sections)
    title = f"crema run report: {run_dir.resolve().name}"
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            f"<h1>{escape(title)}</h1>\n<p class=\"muted\">{escape(str(run_dir.resolve()))}</p>\n"
            f"<nav>{nav}</nav>\n{body}\n</body>\n</html>\n")


# ------------------------------------------------------------------------------------------- inputs
def _read(path: Path) -> str | None:
    return path.read_text() if path.is_file() else None


def _histograms(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(output with ``histograms``, samples) from histograms.npz and run.json; None if not written."""
    if not (run_dir / "histograms.npz").is_file() or not (run_dir / "run.json").is_file():
        return None
    from crema.workflows.outputs import read_histograms

    return read_histograms(run_dir)


def _plots(directory: Path, since: float | None = None) -> list[tuple[str, str]]:
    """(name relative to ``directory``, data URI) of every image under it (modified at or after
    ``since``, if given), sorted by name."""
    if not directory.is_dir():
        return []
    out = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_TYPES
                       and (since is None or p.stat().st_mtime >= since)):
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        out.append((path.relative_to(directory).as_posix(), f"data:{IMAGE_TYPES[path.suffix.lower()]};base64,{data}"))
    return out


# ------------------------------------------------------------------------------------------- html bits
def _e(value: Any) -> str:
    return escape(str(value), quote=True)


def _table(header: Iterable[str], rows: Iterable[Iterable[str]], attrs: str = "") -> str:
    """A table from already-escaped cells; a cell starting with ``<td`` or ``<th`` is taken as it is."""
    def cell(c: str, tag: str) -> str:
        return c if c.startswith(("<td", "<th")) else f"<{tag}>{c}</{tag}>"

    head = "".join(cell(h, "th") for h in header)
    body = "\n".join("<tr>" + "".join(cell(c, "td") for c in row) + "</tr>" for row in rows)
    return f'<div class="scroll"><table{attrs}>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody></table></div>'


def _num(value: float | int | None, digits: int = 4) -> str:
    """``digits`` significant digits, but every digit before the decimal point (with thousands separators)."""
    if value is None:
        return ""
    if float(value).is_integer() and abs(value) < 1e15:
        return f"{int(value):,}"
    if abs(value) >= 10 ** (digits - 1):
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def _seconds(s: float) -> str:
    return f"{s:.1f} s" if s < 600 else f"{s / 60:.1f} min"


# ------------------------------------------------------------------------------------------- sections
def _summary(report: dict[str, Any], config: dict[str, Any], run_meta: dict[str, Any], run_dir: Path) -> str:
    from crema import __version__

    status = str(report.get("status", "unknown"))
    executor = config.get("executor") or {}
    ex = [str(executor.get("name", "?"))]
    if executor.get("name") in ("futures", "dask"):
        ex.append(f"{executor.get('workers')} workers")
    if executor.get("scheduler"):
        ex.append(f"scheduler {executor['scheduler']}")
    ex.append(f"chunks of {executor.get('chunksize')} events")
    lumi = run_meta.get("luminosity_fb", config.get("luminosity_fb"))
    processed = report.get("processed_events", 0)
    lost = report.get("lost_events_total", 0)
    chunks = f"{report.get('processed_chunks', 0)} of {report.get('total_chunks', 0)}"
    if report.get("resumed_chunks"):
        chunks += f" ({report['resumed_chunks']} from the checkpoint of an earlier run)"
    items = [
        ("status", f'<span class="status {_e(status)}">{_e(status)}</span>'),
        ("processed events", _num(processed)),
        ("lost events", f'<span class="{"problem" if lost else "ok"}">{_num(lost)}</span>'),
        ("chunks", _e(chunks)),
        ("processor", _e((config.get("processor") or {}).get("name", "?"))),
        ("era", _e(config.get("era", "?"))),
        ("luminosity", f"{_e(lumi)} fb<sup>-1</sup>" if lumi is not None else "?"),
        ("executor", _e(", ".join(ex))),
        ("crema", _e(__version__)),
        ("report written", _e(datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))),
    ]
    if report.get("error"):
        items.insert(1, ("error", f'<span class="problem">{_e(report["error"])}</span>'))
    out = '<dl class="summary">' + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"
    timings = report.get("timings_s") or {}
    if timings:
        out += "<h3>Time per stage</h3>" + _table(
            ["stage", "wall-clock time"],
            [[_e(stage), f'<td class="num">{_e(_seconds(s))}</td>'] for stage, s in timings.items()],
            ' id="timings"')
        out += ('<p class="muted">processing: chunks through the processor; merge: chunk outputs added up; '
                "outputs: ROOT, npz and coffea files; plots: drawn at the same time as the outputs are written.</p>")
    return out


def _datasets(report: dict[str, Any], config: dict[str, Any], run_meta: dict[str, Any]) -> str:
    per_ds = report.get("datasets") or {}
    samples = run_meta.get("samples") or {d["name"]: d for d in config.get("datasets", []) if "name" in d}
    norm = report.get("normalisation") or {}
    names = list(samples) + [d for d in per_ds if d not in samples]
    if not names:
        return '<p class="muted">no datasets recorded</p>'
    rows = []
    for name in names:
        s, r, n = samples.get(name, {}), per_ds.get(name, {}), norm.get(name, {})
        lost = r.get("lost_events", 0)
        rows.append([_e(name), _e(s.get("kind", "")), _e(s.get("process", "")),
                     f'<td class="num">{_num(s.get("xsec_pb"))}</td>',
                     f'<td class="num">{_num(r.get("processed_events"))}</td>',
                     f'<td class="num{" problem" if lost else ""}">{_num(lost)}</td>',
                     f'<td class="num">{_num(r.get("bad_files"))}</td>',
                     f'<td class="num">{_num(n.get("sumw"))}</td>', _e(n.get("method", ""))])
    return _table(["dataset", "kind", "process", "cross section [pb]", "processed events", "lost events",
                   "bad files", "sum of generator weights", "normalised with"], rows, ' id="dataset-table"')


def _cutflow(cutflow: dict[str, Any], run_meta: dict[str, Any]) -> str:
    """One table per channel: cuts as rows, datasets as columns, events and normalised yield per cell."""
    if not cutflow:
        return '<p class="muted">no cutflow: the run did not complete</p>'
    per_channel: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for ds, chans in cutflow.items():
        for ch, cuts in chans.items():
            per_channel[ch][ds] = cuts
    lumi = run_meta.get("luminosity_fb")
    out = [f'<p class="muted">events passing each cut (unweighted), and below them the yield normalised to '
           f"{_e(lumi)} fb<sup>-1</sup> with, in brackets, the fraction of the events passing the cut above.</p>"]
    for ch, datasets in per_channel.items():
        cuts = list(next(iter(datasets.values())))
        header = ["cut"] + [f'<th data-dataset="{_e(ds)}">{_e(ds)}</th>' for ds in datasets]
        rows = []
        for i, cut in enumerate(cuts):
            row = [f'<th data-cut="{_e(cut)}">{_e(cut)}</th>']
            for ds, d in datasets.items():
                v = d.get(cut, {})
                prev = d.get(cuts[i - 1], {}).get("events") if i else None
                eff = f" ({100 * v['events'] / prev:.1f}%)" if prev else ""
                row.append(f'<td class="num" data-events="{_e(v.get("events"))}" data-yield="{_e(v.get("yield"))}">'
                           f'{_num(v.get("events"))}<small>{_num(v.get("yield"))}{_e(eff)}</small></td>')
            rows.append(row)
        out.append(f"<h3>{_e(ch.upper())} channel</h3>")
        out.append(_table(header, rows, f' class="cutflow" data-channel="{_e(ch)}"'))
    return "\n".join(out)


def _simulated_total(h, samples: dict[str, Any], c: int, r: int) -> float:
    """Nominal simulated sum of weights (flow bins included) of histogram ``h`` in channel ``c``, region ``r``."""
    view = h.view(flow=True)["value"]
    s = list(h.axes["systematic"]).index(NOMINAL)
    mc = [i for i, ds in enumerate(h.axes["dataset"]) if samples[ds].kind != "data"]
    return float(view[mc, c, r, s].sum())


def _yields(histograms, run_meta: dict[str, Any]) -> str:
    """Per process, channel and region: sum of weights with its MC statistical uncertainty.

    Events with no value of an observable are not filled into its histogram, so each (channel,
    region) takes the observable filled with the most simulated events; under- and overflow count."""
    if histograms is None:
        return '<p class="muted">no histograms: the run did not complete</p>'
    from crema.workflows.outputs import process_histograms

    output, samples = histograms
    hists = output["histograms"]
    if not hists:
        return '<p class="muted">the run filled no histograms</p>'
    first = next(iter(hists.values()))
    channels, regions = list(first.axes["channel"]), list(first.axes["region"])
    columns, chosen = [], {}
    for c, ch in enumerate(channels):
        for r, reg in enumerate(regions):
            totals = {name: _simulated_total(h, samples, c, r) for name, h in hists.items()}
            chosen[(ch, reg)] = max(totals, key=totals.get)  # first of equals: config order
            columns.append((ch, reg))
    by_key: dict[tuple[str, str, str], Any] = {}
    for observable in dict.fromkeys(chosen.values()):
        for (ch, reg, syst, process), one in process_histograms(hists[observable], samples, [NOMINAL]).items():
            if chosen[(ch, reg)] == observable:
                by_key[(ch, reg, process)] = one.sum(flow=True)
    kinds = {("data_obs" if s.kind == "data" else s.process): s.kind for s in samples.values()}
    order = ([p for p, k in kinds.items() if k == "background"] + ["total background"]
             + [p for p, k in kinds.items() if k == "signal"] + [p for p, k in kinds.items() if k == "data"])
    if not any(k == "background" for k in kinds.values()):
        order.remove("total background")

    def value(process: str, ch: str, reg: str) -> tuple[float, float]:
        if process == "total background":
            parts = [value(p, ch, reg) for p, k in kinds.items() if k == "background"]
            return sum(v for v, _ in parts), sum(var for _, var in parts)
        one = by_key.get((ch, reg, process))
        return (one.value, one.variance) if one is not None else (0.0, 0.0)

    header = ["process"] + [f'<th data-channel="{_e(ch)}" data-region="{_e(reg)}">{_e(ch.upper())}<br>{_e(reg)}</th>'
                            for ch, reg in columns]
    rows = []
    for process in order:
        label = "data" if process == "data_obs" else process
        row = [f"<th>{_e(label)}</th>" if process != "total background" else "<th><i>total background</i></th>"]
        for ch, reg in columns:
            v, var = value(process, ch, reg)
            shown = f"{_num(v)} &plusmn; {_num(var ** 0.5, 2)}" if v or var else "0"
            row.append(f'<td class="num" data-process="{_e(label)}" data-channel="{_e(ch)}" data-region="{_e(reg)}" '
                       f'data-yield="{v!r}" data-stat="{var ** 0.5!r}">{shown}</td>')
        rows.append(row)
    used = sorted(set(chosen.values()))
    note = (f'<p class="muted">sum of weights at {_e(run_meta.get("luminosity_fb"))} fb<sup>-1</sup> &plusmn; MC '
            f"statistical uncertainty (square root of the sum of squared weights), from the histogram of "
            f"{_e(', '.join(used))} (the observable filled for the most simulated events), flow bins included.</p>")
    return note + _table(header, rows, ' id="yield-table"')


def _group(name: str, pairs: list[tuple[str, str]]) -> tuple[str, str] | None:
    """The (channel, region) a plot file name belongs to: the longest ``channel_region`` in it, as whole words."""
    flat = "_" + re.sub(r"[/\\.\s]", "_", name) + "_"
    found = [(ch, reg) for ch, reg in pairs if f"_{ch}_{reg}_" in flat]
    return max(found, key=lambda p: len(p[0]) + len(p[1])) if found else None


def _plot_section(plots: list[tuple[str, str]], histograms) -> str:
    if not plots:
        return '<p class="muted">no plots in this run directory (crema plot draws them)</p>'
    pairs: list[tuple[str, str]] = []
    if histograms is not None and histograms[0]["histograms"]:
        first = next(iter(histograms[0]["histograms"].values()))
        pairs = [(ch, reg) for ch in first.axes["channel"] for reg in first.axes["region"]]
    groups: dict[tuple[str, str] | None, list[tuple[str, str]]] = defaultdict(list)
    for name, uri in plots:
        groups[_group(name, pairs)].append((name, uri))
    out = [f'<p class="muted">{len(plots)} images from plots/</p>']
    for key in [p for p in pairs if p in groups] + ([None] if None in groups else []):
        heading = f"{key[0].upper()} channel, {key[1]}" if key else "other plots"
        figures = "\n".join(f'<figure><img src="{uri}" alt="{_e(name)}" loading="eager">'
                            f"<figcaption>{_e(name)}</figcaption></figure>" for name, uri in groups[key])
        out.append(f"<h3>{_e(heading)}</h3>\n<div class=\"plots\">\n{figures}\n</div>")
    return "\n".join(out)


def _systematics(histograms, config: dict[str, Any]) -> str:
    out = []
    if histograms is not None and histograms[0]["histograms"]:
        names = list(next(iter(histograms[0]["histograms"].values())).axes["systematic"])
        stems, other = [], []
        for n in names:
            if n.endswith("Up") and f"{n[:-2]}Down" in names:
                stems.append(n[:-2])
            elif n != NOMINAL and not (n.endswith("Down") and f"{n[:-4]}Up" in names):
                other.append(n)
        if stems or other:
            out.append(f"<p>{len(stems)} up/down variations in the histograms:</p>")
            out.append("<ul>" + "".join(f"<li><code>{_e(s)}</code></li>" for s in stems)
                       + "".join(f"<li><code>{_e(s)}</code> (one-sided)</li>" for s in other) + "</ul>")
        else:
            out.append("<p>no systematic variations in the histograms (nominal only)</p>")
    norms = ((config.get("fit") or {}).get("norm_uncertainties")) or {}
    if norms:
        out.append("<p>normalisation uncertainties of <code>crema fit</code> (log-normal):</p>")
        out.append(_table(["process", "relative uncertainty"],
                          [[_e(p), f'<td class="num">{100 * float(v):.1f}%</td>'] for p, v in norms.items()]))
    lumi = _lumi_uncertainty(config.get("era"))
    if lumi:
        out.append(f"<p>integrated luminosity ({_e(config.get('era'))}): {100 * lumi:.1f}%</p>")
    return "\n".join(out) or '<p class="muted">no histograms: the run did not complete</p>'


def _lumi_uncertainty(era: str | None) -> float | None:
    if not era:
        return None
    from crema.corrections.era import load_era

    try:
        return load_era(era).lumi_uncertainty
    except ConfigError:  # an era file that no longer loads: the rest of the report still matters
        return None


def _problems(report: dict[str, Any], cutflow: dict[str, Any]) -> str:
    from crema.workflows.outputs import undefined_fractions

    out = []
    bad_files = report.get("bad_files") or []
    if bad_files:
        out.append(f'<h3 class="problem">{len(bad_files)} bad file(s), skipped</h3>')
        out.append(_table(["file", "events lost", "reason"],
                          [[f"<code>{_e(b.get('file'))}</code>", f'<td class="num">{_e(b.get("events_lost") or "all")}</td>',
                            _e(b.get("reason"))] for b in bad_files], ' id="bad-files"'))
    bad_chunks = report.get("bad_chunks") or []
    if bad_chunks:
        out.append(f'<h3 class="problem">{len(bad_chunks)} bad chunk(s), skipped</h3>')
        out.append(_table(["dataset", "file", "entries", "branch", "error"],
                          [[_e(c.get("dataset", "")), f"<code>{_e(c.get('file'))}</code>",
                            _e(f"{c.get('entry_start')}-{c.get('entry_stop')}"), _e(c.get("branch") or ""),
                            _e(c.get("error"))] for c in bad_chunks], ' id="bad-chunks"'))
    if not bad_files and not bad_chunks:
        out.append('<p class="ok">no bad files or chunks: every scheduled event was read</p>')
    nonfinite = report.get("nonfinite")
    if nonfinite is not None:
        bad = {b: n for b, n in nonfinite.items() if n}
        if bad:
            out.append(f'<h3 class="problem">non-finite or unphysical values in {len(bad)} of {len(nonfinite)} '
                       "branches read</h3>")
            out.append(_table(["branch", "values"], [[f"<code>{_e(b)}</code>", f'<td class="num">{_num(n)}</td>']
                                                     for b, n in sorted(bad.items(), key=lambda kv: -kv[1])],
                              ' id="nonfinite"'))
        else:
            out.append(f'<p class="ok">all values finite and physical in the {len(nonfinite)} branches read</p>')
    undefined = report.get("undefined") or {}
    fractions = undefined_fractions(report, cutflow)
    if any(fractions.values()):
        out.append("<h3>Selected events without a value of an observable (not filled into its histogram)</h3>")
        datasets = list(undefined)
        rows = []
        for ch, obs_f in fractions.items():
            for obs, f in obs_f.items():
                rows.append([_e(ch.upper()), f"<code>{_e(obs)}</code>", f'<td class="num">{100 * f:.1f}%</td>',
                             *(f'<td class="num">{_num(undefined[ds].get(ch, {}).get(obs, 0))}</td>' for ds in datasets)])
        out.append(_table(["channel", "observable", "fraction of selected"] + [_e(d) for d in datasets], rows,
                          ' id="undefined"'))
    return "\n".join(out)


def _config(config_text: str | None) -> str:
    if config_text is None:
        return '<p class="muted">no config.yaml</p>'
    return f"<pre>{_e(config_text)}</pre>"
