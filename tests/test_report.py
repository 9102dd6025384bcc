"""What a run shows a person: the cutflow in an 80-column terminal, the status and problems lines,
and report.html (self-contained, escaped, equal to the run's JSON, every plot shown by a real browser)."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from crema.generate import write_nanoaod
from crema.workflows.cli import main as cli
from crema.workflows.html_report import build_html
from crema.workflows.outputs import compact, fold, print_cutflow

pytestmark = pytest.mark.filterwarnings("ignore:Missing cross-reference")

BAD_NAME = "bad<i>&.root"  # a path that must be escaped in the page


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """``crema run`` with two signals whose names differ only at the end, a background and a bad
    file skipped; stdout and stderr captured together (in the order a terminal shows them) at COLUMNS=80."""
    tmp = tmp_path_factory.mktemp("report")
    datasets = []
    for name, process, kind, n in [("XHH_800_SL", "hh_sl", "signal", 120), ("XHH_800_DL", "hh_dl", "signal", 120),
                                   ("TTto2L", "tt_dl", "background", 150)]:
        path = write_nanoaod(tmp / f"{name}.root", process, n, seed=len(datasets) + 1)
        datasets.append({"name": name, "kind": kind, "process": "XHH_800" if kind == "signal" else "ttbar",
                         "xsec_pb": 1.0, "files": [str(path)]})
    bad = tmp / BAD_NAME
    bad.write_text("not a ROOT file")
    datasets[-1]["files"].append(str(bad))
    config = {"luminosity_fb": 7.98, "datasets": datasets,
              "executor": {"name": "iterative", "chunksize": 1000, "progress": False, "skip_bad_files": True},
              "plots": {"regions": ["inclusive"], "observables": ["n_jets", "m_bb"]},
              "fit": {"norm_uncertainties": {"ttbar": 0.05}}}
    (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    out = tmp / "out"
    buf = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COLUMNS", "80")
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            assert cli(["run", str(tmp / "config.yaml"), "-o", str(out)]) == 0
    return out, buf.getvalue()


# ------------------------------------------------------------------------------------------ terminal
def test_terminal_output_fits_80_columns(run):
    _, text = run
    assert "Cutflow, SL channel" in text and "Cutflow, DL channel" in text
    long = [line for line in text.splitlines() if len(line) > 80]
    assert not long, long
    assert "XHH_800_SL" in text and "XHH_800_DL" in text  # the two signals told apart
    assert "…" not in text and "..." not in text  # nothing cut short


def test_status_lines_then_summary_then_problems_last(run):
    _, text = run
    last_table = text.rindex("Cutflow, ")
    writing = text.index("writing histograms.root")
    drawing, html = text.index("drawing plots"), text.index("writing report.html")
    summary, problems = text.index("processed "), text.index("problems")
    assert last_table < writing < drawing < html < summary < problems
    last = " ".join(re.sub("[│╭╮╰╯─]", " ", text[problems:]).split())  # the panel's lines unwrapped
    assert f"skipped bad file {run[0].parent / BAD_NAME}: not a ROOT file" in last
    # the SL channel has no second lepton: said once, in the notes at the very end
    assert "selected events without a value (not filled): SL: lep2_pt 100%" in last


def test_cutflow_layout_for_many_and_long_dataset_names():
    names = ["XHH_800_SL", "XHH_800_DL", "TTto1L", "TTto2L", "DYto2L", "WtoLNu", "TTH_Hbb_1L",
             "TTto2L2Nu_TuneCP5_13p6TeV_powheg-pythia8"]
    cuts = ["all events", "met_filters", "trigger", "opposite charge", "jets"]
    output = {"luminosity_fb": 7.98,
              "cutflow": {n: {"sl": {c: 123456 // (i + 1) for i, c in enumerate(cuts)}} for n in names},
              "cutflow_yield": {n: {"sl": {c: 2.241e6 * (k + 1) / (i + 1) for i, c in enumerate(cuts)}}
                                for k, n in enumerate(names)}}
    for width in (80, 60):
        buf = io.StringIO()
        print_cutflow(output, Console(file=buf, width=width), order=names)
        text = buf.getvalue()
        assert max(len(line) for line in text.splitlines()) <= width
        for name in names[:-1]:
            assert name in text
        for piece in fold(names[-1], 13).split("\n"):  # the long name folded onto header lines, not cut
            assert piece in text
        assert "123k / 2.24M" in text and "2.24M" in text and "1.79" in text
        assert text.count("Cutflow, SL channel [") >= 2  # split over several tables
    assert "".join(fold(names[-1], 13).split("\n")) == names[-1]
    assert all(len(line) <= 6 for line in fold("averyveryverylongname", 6).split("\n"))


@pytest.mark.parametrize("value, exact_below, text", [
    (0, 0, "0"), (999.4, 0, "999"), (999.6, 0, "1k"), (7980.4, 0, "7.98k"), (2_241_000, 0, "2.24M"),
    (0.0146, 0, "0.0146"), (9999, 10_000, "9999"), (12345, 10_000, "12.3k"), (3.5e9, 0, "3.5G")])
def test_compact_numbers(value, exact_below, text):
    assert compact(value, exact_below) == text


# ------------------------------------------------------------------------------------------ report.html
class Page(HTMLParser):
    """Tags with their attributes, and the cutflow / dataset tables of a report page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.cutflow: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
        self.datasets: list[list[str]] = []
        self._channel = self._cut = self._table = None
        self._datasets: list[str] = []
        self._cell: list[str] | None = None
        self._col = 0

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        self.tags.append((tag, a))
        if tag == "table":
            self._table = a.get("id") or a.get("class")
            if a.get("class") == "cutflow":
                self._channel, self._datasets = a["data-channel"], []
                self.cutflow[self._channel] = {}
        elif tag == "th" and "data-dataset" in a:
            self._datasets.append(a["data-dataset"])
        elif tag == "th" and "data-cut" in a:
            self._cut, self._col = a["data-cut"], 0
        elif tag == "td" and self._table == "cutflow" and "data-events" in a:
            ds = self._datasets[self._col]
            self.cutflow[self._channel].setdefault(ds, {})[self._cut] = {
                "events": int(a["data-events"]), "yield": float(a["data-yield"])}
            self._col += 1
        elif tag == "tr" and self._table == "dataset-table":
            self.datasets.append([])
        elif tag in ("td", "th") and self._table == "dataset-table":
            self._cell = []

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.datasets[-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None


def parse(text: str) -> Page:
    page = Page()
    page.feed(text)
    return page


def test_html_is_self_contained(run):
    out, _ = run
    text = (out / "report.html").read_text()
    page = parse(text)
    urls = [(tag, k, v) for tag, a in page.tags for k, v in a.items() if k in ("src", "href", "srcset", "action", "poster")]
    assert urls
    for tag, key, value in urls:
        assert value.startswith("data:image/") if key == "src" else value.startswith("#"), (tag, key, value[:80])
    assert not any(tag in ("script", "link", "iframe", "object", "embed") for tag, _ in page.tags)
    assert "@import" not in text and not re.search(r"url\(\s*['\"]?(?!data:)", text)
    assert not re.search(r"https?://", text)


def test_html_tables_equal_the_run_json(run):
    out, _ = run
    page = parse((out / "report.html").read_text())
    cutflow = json.loads((out / "cutflow.json").read_text())
    per_channel: dict = {}
    for ds, chans in cutflow.items():
        for ch, cuts in chans.items():
            per_channel.setdefault(ch, {})[ds] = cuts
    assert page.cutflow == per_channel
    report = json.loads((out / "report.json").read_text())
    rows = {r[0]: r for r in page.datasets[1:]}
    assert list(rows) == ["XHH_800_SL", "XHH_800_DL", "TTto2L"]
    for ds, d in report["datasets"].items():
        assert rows[ds][4].replace(",", "") == str(d["processed_events"])
        assert rows[ds][6] == str(d["bad_files"])
    assert set(report["timings_s"]) == {"preflight", "processing", "merge", "outputs", "plots"}


def test_html_yields_equal_the_cutflow(run):
    """Every selected event is in the inclusive region: the yield table there is the cutflow's last cut."""
    out, _ = run
    text = (out / "report.html").read_text()
    cells = re.findall(r'data-process="([^"]*)" data-channel="([^"]*)" data-region="([^"]*)" data-yield="([^"]*)" '
                       r'data-stat="([^"]*)"', text)
    table = {(p, ch, reg): (float(v), float(s)) for p, ch, reg, v, s in cells}
    cutflow = json.loads((out / "cutflow.json").read_text())
    processes = {"XHH_800": ["XHH_800_SL", "XHH_800_DL"], "ttbar": ["TTto2L"]}
    for ch in ("sl", "dl"):
        for process, datasets in processes.items():
            expected = sum(list(cutflow[ds][ch].values())[-1]["yield"] for ds in datasets)
            value, stat = table[(process, ch, "inclusive")]
            assert value == pytest.approx(expected, rel=1e-9)
            assert 0 < stat < value  # a few tens of events of similar weight
        assert table[("total background", ch, "inclusive")] == table[("ttbar", ch, "inclusive")]


def test_html_shows_problems_yields_systematics_and_escapes(run):
    out, _ = run
    text = (out / "report.html").read_text()
    assert "bad&lt;i&gt;&amp;.root" in text and BAD_NAME not in text
    assert 'id="bad-files"' in text and "not a ROOT file" in text
    assert 'id="yield-table"' in text and "total background" in text and "&plusmn;" in text
    assert "norm_uncertainties" in text and "5.0%" in text  # config shown, fit normalisation listed
    assert 'id="timings"' in text and "lep2_pt" in text  # undefined observables listed


def test_html_of_a_run_that_did_not_complete(run, tmp_path):
    out, _ = run
    shutil.copytree(out, tmp_path / "run")
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    report.update(status="failed", error="reading <b>chunk</b> failed")
    (tmp_path / "run" / "report.json").write_text(json.dumps(report))
    text = build_html(tmp_path / "run")
    assert "reading &lt;b&gt;chunk&lt;/b&gt; failed" in text
    # what is in the folder is an earlier run's: not shown as this one's
    assert "<img" not in text and 'class="cutflow"' not in text and "the run did not complete" in text


def test_report_command_rewrites_the_page(run, tmp_path):
    out, _ = run
    (out / "report.html").unlink()
    assert cli(["report", str(out)]) == 0
    assert (out / "report.html").is_file()
    assert cli(["report", str(out), "-o", str(tmp_path / "copy.html")]) == 0
    assert (tmp_path / "copy.html").read_text().count("<img") == (out / "report.html").read_text().count("<img")
    assert cli(["report", str(tmp_path)]) == 2  # no report.json there: a clear error, exit 2


# ------------------------------------------------------------------------------------------ a real browser
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
# records each image's decoded width in the DOM once the page (and so every image) has loaded
PROBE = """<script>
window.addEventListener("load", () => {
  for (const img of document.images) img.setAttribute("data-natural-width", img.naturalWidth);
  document.body.setAttribute("data-probe", "loaded");
});
window.addEventListener("error", (e) => document.body.setAttribute("data-js-error", String(e.message)));
</script>"""
BROKEN = '<img id="broken-control" src="data:image/png;base64,AAAA" alt="not an image">'


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (Debian package chromium; .ci/run installs it)")
def test_every_plot_shows_in_headless_chromium(run, tmp_path):
    out, _ = run
    plots = sorted((out / "plots").rglob("*.png"))
    assert len(plots) >= 4
    text = (out / "report.html").read_text()
    # the probe and one broken image (the control: the check must see it fail) go into a copy only
    (tmp_path / "page.html").write_text(text.replace("</body>", f"{BROKEN}\n{PROBE}\n</body>"))
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
           "--virtual-time-budget=10000", "--dump-dom", (tmp_path / "page.html").as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    page = parse(done.stdout)
    body = next(a for tag, a in page.tags if tag == "body")
    assert body.get("data-probe") == "loaded" and "data-js-error" not in body
    images = {a.get("alt"): int(a["data-natural-width"]) for tag, a in page.tags if tag == "img"}
    assert images.pop("not an image") == 0  # the control
    assert sorted(images) == [p.relative_to(out / "plots").as_posix() for p in plots]
    assert all(width > 0 for width in images.values()), images
    console_errors = [line for line in done.stderr.splitlines()
                      if "CONSOLE" in line or "Failed to load resource" in line or "Uncaught" in line]
    assert not console_errors, console_errors
