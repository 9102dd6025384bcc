"""Fault drills: corrupt baskets, Ctrl-C/SIGTERM and --resume, checkpoint mismatch, the pickle drill,
clear errors for bad options, and dataset order independent of scheduling."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import hist
import numpy as np
import pytest
import uproot
import yaml
from coffea import processor
from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

from crema.generate import write_nanoaod
from crema.histograms import io as store
from crema.schema import ConfigError
from crema.workflows.cli import main as cli
from crema.workflows.config import load_config
from crema.workflows.run import InputError, build_processor, run


BASKET = 100  # events per basket = events per chunk, so a corrupt basket is exactly one chunk


def write_config(path: Path, files: dict[str, Path], **executor) -> Path:
    kinds = {"TT": ("background", "tt_dl"), "HH": ("signal", "hh_dl")}
    config = {
        "luminosity_fb": 10.0,
        "processor": {"name": "hhbbww"},
        "executor": {"name": "iterative", "chunksize": BASKET, "progress": False, **executor},
        # not in alphabetical order: outputs must follow this order, whatever finishes first
        "datasets": [{"name": n, "kind": kinds[n][0], "process": kinds[n][1], "xsec_pb": 1.0, "files": [str(f)]}
                     for n, f in files.items()],
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("samples")
    return {"TT": write_nanoaod(tmp / "TT.root", "tt_dl", 200, seed=3, basket_size=BASKET),
            "HH": write_nanoaod(tmp / "HH.root", "hh_dl", 100, seed=2, basket_size=BASKET)}


@pytest.fixture(scope="module")
def reference(samples, tmp_path_factory):
    """An uninterrupted ``crema run`` (iterative)."""
    tmp = tmp_path_factory.mktemp("reference")
    cfg = write_config(tmp / "config.yaml", samples)
    assert cli(["run", str(cfg), "-o", str(tmp / "out"), "--no-plots"]) == 0
    return tmp / "out"


def views(outdir: Path) -> dict[str, np.ndarray]:
    hists = store.load(outdir / "histograms.npz")["histograms"]
    return {k: h.view(flow=True) for k, h in hists.items()}


def assert_identical(a: Path, b: Path) -> None:
    va, vb = views(a), views(b)
    assert list(va) == list(vb)
    for name in va:
        assert np.array_equal(va[name], vb[name]), name  # bit-identical, not approximately equal
    assert (a / "cutflow.json").read_text() == (b / "cutflow.json").read_text()
    ra, rb = json.loads((a / "report.json").read_text()), json.loads((b / "report.json").read_text())
    for key in ("resumed_chunks", "timings_s"):  # how the run went, not what it produced
        ra.pop(key), rb.pop(key)
    assert ra == rb


# ------------------------------------------------------------------------------------------ storage
AXES = [
    hist.axis.Regular(5, 0, 10, name="reg", label="Regular [GeV]"),
    hist.axis.Regular(4, 1, 100, name="log", transform=hist.axis.transform.log),
    hist.axis.Regular(2, 0, 1, name="noflow", underflow=False),
    hist.axis.Regular(6, 0, 6.3, name="phi", circular=True),
    hist.axis.Regular(3, 0, 3, name="grow", growth=True),
    hist.axis.Variable([0, 1, 5, 20], name="var", overflow=False),
    hist.axis.Integer(-1, 3, name="int", flow=False),
    hist.axis.Integer(0, 2, name="igrow", growth=True),
    hist.axis.StrCategory(["a", "b"], name="str", growth=True),
    hist.axis.StrCategory(["x"], name="strfix"),
    hist.axis.IntCategory([1, 7], name="icat", growth=True),
    hist.axis.Boolean(name="flag"),
]
STORAGES = [hist.storage.Double(), hist.storage.Int64(), hist.storage.Weight(), hist.storage.Mean(),
            hist.storage.WeightedMean(), hist.storage.Unlimited(), hist.storage.AtomicInt64()]


@pytest.mark.parametrize("storage", STORAGES, ids=lambda s: type(s).__name__)
def test_histogram_round_trip_every_axis_and_storage(tmp_path, storage):
    rng = np.random.default_rng(1)
    for i in range(0, len(AXES), 3):  # three axes per histogram keeps them small
        axes = AXES[i:i + 3]
        h = hist.Hist(*axes, storage=storage, name=f"h{i}", label="a histogram")
        n = 50
        values = {}
        for ax in axes:
            if isinstance(ax, hist.axis.StrCategory):
                values[ax.name] = rng.choice(["a", "b", "c"] if ax.traits.growth else ["x", "y"], n)
            elif isinstance(ax, hist.axis.IntCategory):
                values[ax.name] = rng.choice([1, 7, 9], n)
            elif isinstance(ax, hist.axis.Integer):
                values[ax.name] = rng.integers(-2, 5, n)
            elif isinstance(ax, hist.axis.Boolean):
                values[ax.name] = rng.random(n) < 0.5
            else:
                values[ax.name] = rng.uniform(-2, 25, n)
        kwargs = {}
        if isinstance(storage, (hist.storage.Mean, hist.storage.WeightedMean)):
            kwargs["sample"] = rng.normal(size=n)
        if not isinstance(storage, (hist.storage.Int64, hist.storage.AtomicInt64)):
            kwargs["weight"] = rng.uniform(0.5, 1.5, n)
        h.fill(**values, **kwargs)
        back = store.load(store.save({"h": h}, tmp_path / f"h{i}.npz"))["h"]
        assert back == h
        assert type(back) is hist.Hist and back.storage_type is h.storage_type and back.name == h.name
        assert [a.name for a in back.axes] == [a.name for a in h.axes]
        assert [a.label for a in back.axes] == [a.label for a in h.axes]
        assert np.array_equal(np.asarray(back.view(flow=True)), np.asarray(h.view(flow=True)))


def test_histograms_of_one_layout_load_independent(tmp_path):
    """Loads sharing ``layouts`` (a run's chunk outputs) build each histogram layout once and copy it:
    each load is its own histogram, and a layout differing only in a referenced array (Variable edges)
    or a label is another layout."""
    def booked(edges, label="x"):
        return hist.Hist(hist.axis.StrCategory([], name="dataset", growth=True),
                         hist.axis.Variable(edges, name="x", label=label), storage=hist.storage.Weight())

    a = booked([0, 1, 5, 20])
    a.fill(dataset="TT", x=[0.5, 2, 7], weight=[1, 2, 3])
    b = booked([0, 2, 5, 30])  # the same stored structure (edge array a0 of the same shape), other edges
    b.fill(dataset="TT", x=[0.5, 2, 7], weight=[1, 2, 3])
    c = booked([0, 1, 5, 20], label="y")
    files = [store.save({"h": h}, tmp_path / f"{i}.npz") for i, h in enumerate((a, b, c))]
    layouts: dict = {}
    first, again = store.load(files[0], layouts)["h"], store.load(files[0], layouts)["h"]
    assert len(layouts) == 1 and first == a and again == a and first is not again
    first.fill(dataset="TT", x=[1.5], weight=[10])
    assert again == a and store.load(files[0], layouts)["h"] == a  # filling one copy leaves the others alone
    assert again.axes[1].label == "x"
    other = store.load(files[1], layouts)["h"]
    assert list(other.axes[1].edges) == [0, 2, 5, 30] and other == b
    relabelled = store.load(files[2], layouts)["h"]
    assert relabelled.axes[1].label == "y" and relabelled == c and len(layouts) == 3


def _identical(a, b) -> bool:
    """Same types, key order and bits, histograms and arrays included."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_identical(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_identical(x, y) for x, y in zip(a, b))
    if isinstance(a, hist.Hist):
        return (a.storage_type is b.storage_type and a.axes == b.axes
                and np.asarray(a.view(flow=True)).tobytes() == np.asarray(b.view(flow=True)).tobytes())
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.tobytes() == b.tobytes()
    return a == b


@pytest.mark.parametrize("storage", STORAGES, ids=lambda s: type(s).__name__)
def test_load_into_adds_as_accumulate_does(tmp_path, storage):
    """Chunk outputs added into a total as they are read (load_into, histograms of a known layout cell by
    cell) give what coffea's accumulate gives, bit for bit: growing categories, keys that appear later,
    counters of every kind and arrays included."""
    from coffea.processor import accumulate

    rng = np.random.default_rng(7)
    outputs = []
    for i, datasets in enumerate((["TT"], ["TT"], ["TT", "WJ"], ["WJ"], ["TT"])):
        h = hist.Hist(hist.axis.StrCategory([], name="dataset", growth=True), hist.axis.Regular(4, 0, 1, name="x"),
                      hist.axis.Variable([0, 1, 3], name="y"), storage=storage)
        for d in datasets:
            kwargs = {"sample": rng.normal(size=20)} if isinstance(storage, (hist.storage.Mean,
                                                                              hist.storage.WeightedMean)) else {}
            if not isinstance(storage, (hist.storage.Int64, hist.storage.AtomicInt64)):
                kwargs["weight"] = rng.uniform(0.1, 2.0, 20)
            h.fill(dataset=d, x=rng.uniform(-0.2, 1.2, 20), y=rng.uniform(-1, 4, 20), **kwargs)
        out = {"histograms": {"h": h}, "cutflow": {"TT": {"all": 20 + i, "sel": np.int64(i)}},
               "sumw": {"TT": 0.1 * (i + 1)}, "flags": {"ok": i % 2 == 0}, "files": {f"f{i}.root"},
               "arrays": np.arange(3, dtype=np.float32) * (i + 0.1), "names": [f"c{i}"]}
        if i >= 2:  # a key seen only from the third output on, in the middle of the others
            out["cutflow"]["WJ"] = {"all": 3 * i}
        outputs.append(out)
    files = [store.save(o, tmp_path / f"{i}.npz") for i, o in enumerate(outputs)]
    expected = accumulate(store.load(f) for f in files)
    layouts: dict = {}
    total = store.load(files[0], layouts)
    for f in files[1:]:
        total = store.load_into(total, f, layouts)
    assert _identical(total, expected)
    assert list(total["histograms"]["h"].axes[0]) == ["TT", "WJ"] and total["cutflow"]["WJ"] == {"all": 6 + 9 + 12}
    # a layout the total does not have (other binning) is refused as accumulate refuses it
    other = dict(outputs[0], histograms={"h": hist.Hist(hist.axis.StrCategory(["TT"], name="dataset", growth=True),
                                                        hist.axis.Regular(5, 0, 1, name="x"),
                                                        hist.axis.Variable([0, 1, 3], name="y"), storage=storage)})
    with pytest.raises(ValueError):
        store.load_into(total, store.save(other, tmp_path / "other.npz"), layouts)


def test_tree_round_trip_keeps_types(tmp_path):
    import awkward as ak

    tree = {"cutflow": {"TT": {"all": np.int64(5), "jets": 2}}, "sumw": {"TT": 0.1 + 0.2},
            "records": [{"file": "f.root", "start": 0, "arrays": {"x": np.arange(3, dtype=np.float32)}}],
            "files": {"a", "b"}, 3: (None, True, "s"), "jagged": ak.Array([[1.5], [], [2.0, 3.0]])}
    back = store.load(store.save(tree, tmp_path / "t.npz"))
    assert type(back["cutflow"]["TT"]["all"]) is np.int64 and back["sumw"]["TT"] == 0.1 + 0.2
    assert back["records"][0]["arrays"]["x"].dtype == np.float32 and back["files"] == {"a", "b"}
    assert back[3] == (None, True, "s") and list(back) == list(tree)
    assert back["jagged"].tolist() == [[1.5], [], [2.0, 3.0]]
    with pytest.raises(TypeError, match="object dtype"):
        store.save({"x": np.array([object()])}, tmp_path / "o.npz")
    with pytest.raises(TypeError, match="cannot store"):
        store.save({"x": object()}, tmp_path / "o.npz")


def test_registered_types_use_their_own_state(tmp_path):
    @store.register("test_weights")
    class Weights:
        def __init__(self, w, names):
            self.w, self.names = w, names

        def _crema_state(self):
            return {"w": self.w}, {"names": self.names}

        @classmethod
        def _crema_from_state(cls, arrays, meta):
            return cls(arrays["w"], meta["names"])

    back = store.load(store.save([Weights(np.eye(2), ["sm", "ctG"])], tmp_path / "w.npz"))[0]
    assert isinstance(back, Weights) and np.array_equal(back.w, np.eye(2)) and back.names == ["sm", "ctG"]
    meta, arrays = store.encode(Weights(np.ones(1), []))
    meta["tree"]["$object"] = "not_registered"
    with pytest.raises(ValueError, match="not_registered"):
        store.decode(meta, arrays)


def test_pickled_arrays_are_refused(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, __tree__=np.frombuffer(b'{"format":"crema-tree","version":1,"tree":{"$array":"a0"}}', np.uint8),
             a0=np.array([{"x": 1}], dtype=object))
    with pytest.raises(ValueError, match="evil.npz"):
        store.load(path)


# ------------------------------------------------------------------------------------------ corrupt baskets
def corrupt(dst: Path, compression, basket: int) -> tuple[str, int, int]:
    """Write 300 ttbar events with ``compression`` and overwrite bytes in the middle of basket ``basket``
    of a compressed branch the processor reads; returns (branch, entry_start, entry_stop)."""
    write_nanoaod(dst, "tt_dl", 3 * BASKET, seed=3, basket_size=BASKET, compression=compression)
    t = uproot.open(dst)["Events"]
    for name in ("Jet_pt", "Jet_jetId", "Muon_pt", "Electron_pt"):
        b = t[name]
        if b.basket_compressed_bytes(basket) < b.basket_uncompressed_bytes(basket):
            break
    seek, size = int(b.member("fBasketSeek")[basket]), b.basket_compressed_bytes(basket)
    key_len = int(b.basket_key(basket).fKeylen)
    start, stop = (int(x) for x in b.basket_entry_start_stop(basket))
    data = bytearray(dst.read_bytes())
    middle = seek + key_len + size // 2
    data[middle:middle + 24] = b"\x5a" * 24
    dst.write_bytes(bytes(data))
    return name, start, stop


def good_chunk_output(config_path: Path, skip: tuple[str, int]) -> dict:
    """The processor's output over every chunk but ``skip`` (file, entry start), merged in config order."""
    from crema.workflows.normalisation import processed_sums, runs_tree_sums

    config = load_config(config_path)
    proc = build_processor(config)
    parts, entries, processed = [], {}, {}
    for d in config.datasets:
        path = d.files[0]
        n = entries[path] = processed[path] = uproot.open(path)["Events"].num_entries
        for start in range(0, n, BASKET):
            if (path, start) == skip:
                processed[path] -= min(start + BASKET, n) - start
                continue
            events = NanoEventsFactory.from_root({path: "Events"}, schemaclass=NanoAODSchema, entry_start=start,
                                                 entry_stop=min(start + BASKET, n), mode="virtual",
                                                 metadata={"dataset": d.name, "filename": path}).events()
            parts.append(proc.process(events))
    # as run() does: the Runs tree normalises simulation, each file with the share of its entries processed
    proc.generator_sumw = processed_sums(runs_tree_sums(config), entries, processed)
    return proc.postprocess(processor.accumulate(parts))


@pytest.mark.parametrize("compression", [uproot.LZ4(1), uproot.LZMA(1)], ids=["lz4", "lzma"])
def test_corrupt_basket_is_one_chunk(tmp_path, compression, capsys):
    bad = tmp_path / "TT_bad.root"
    branch, start, stop = corrupt(bad, compression, basket=1)  # the middle one of three
    files = {"TT": bad}

    # without --skip-bad-files: exit 2 naming file, entries and branch; report and checkpoints kept
    cfg = write_config(tmp_path / "config.yaml", files)
    out = tmp_path / "out"
    assert cli(["run", str(cfg), "-o", str(out), "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and f"entries {start}-{stop}" in err and repr(branch) in err, err
    assert "Traceback" not in err
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "failed" and report["bad_chunks"][0]["branch"] == branch
    assert '<span class="status failed">failed</span>' in (out / "report.html").read_text()
    kept = list((out / "checkpoint").glob("*/chunks/*.npz"))
    assert len(kept) == report["total_chunks"] - 1 == 2

    # --resume --skip-bad-files reuses every finished chunk and skips the bad one
    assert cli(["run", str(cfg), "-o", str(out), "--no-plots", "--resume", "--skip-bad-files"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "complete" and report["resumed_chunks"] == 2 and report["processed_chunks"] == 2
    [chunk] = report["bad_chunks"]
    assert (chunk["file"], chunk["entry_start"], chunk["entry_stop"], chunk["branch"]) == (str(bad), start, stop, branch)
    assert chunk["error"]
    assert report["lost_events_total"] == stop - start == BASKET
    assert report["processed_events"] + report["lost_events_total"] == 300
    assert report["datasets"]["TT"] == {"processed_events": 200, "lost_events": 100, "bad_files": 0}
    assert not (out / "checkpoint").exists()  # removed after a complete run

    # the histograms are those of a run over the remaining chunks, bit for bit
    expected = good_chunk_output(cfg, (str(bad), start))
    got = views(out)
    for name, h in expected["histograms"].items():
        assert np.array_equal(got[name], h.view(flow=True)), name


# the processor fails on purpose; coffea's Runner retries such a chunk and warns once per attempt
@pytest.mark.filterwarnings("ignore:Performed attempt:UserWarning")
def test_processor_errors_still_propagate(samples, tmp_path):
    class Broken(processor.ProcessorABC):
        def process(self, events):
            raise ZeroDivisionError("a bug in the analysis")

        def postprocess(self, accumulator):
            return accumulator

    cfg = load_config(write_config(tmp_path / "c.yaml", {"HH": samples["HH"]}, skip_bad_files=True, maxchunks=1))
    with pytest.raises(Exception, match="a bug in the analysis") as excinfo:
        run(cfg, Broken())
    report = excinfo.value.crema_report  # not taken for a read error: no bad chunk, the run failed
    assert report.status == "failed" and not report.bad_chunks and "ZeroDivisionError" in report.error


def test_processor_counters_reach_the_report(samples, tmp_path):
    cfg = load_config(write_config(tmp_path / "c.yaml", {"TT": samples["TT"]}))  # two chunks
    proc = build_processor(cfg)

    class Counting(type(proc)):
        def process(self, events):
            out = super().process(events)
            out["nonfinite"] = {"Jet_pt": np.int64(1)}
            out["undefined"] = {"TT": {"dl": {"hme_mass": 3}}}
            return out

    proc.__class__ = Counting
    _, report = run(cfg, proc)
    d = report.to_dict()
    assert d["nonfinite"] == {"Jet_pt": 2} and d["undefined"] == {"TT": {"dl": {"hme_mass": 6}}}
    json.dumps(d)  # numpy counters became plain numbers


# ------------------------------------------------------------------------------------------ interrupt / resume
def crema(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    return subprocess.Popen([sys.executable, "-m", "crema.workflows.cli", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, **kw)


@pytest.mark.parametrize("executor, sig", [("iterative", signal.SIGINT), ("futures", signal.SIGTERM),
                                           pytest.param("dask", signal.SIGINT, marks=pytest.mark.slow)],
                         ids=["iterative-SIGINT", "futures-SIGTERM", "dask-SIGINT"])
def test_interrupt_then_resume_is_bit_identical(samples, reference, tmp_path, executor, sig):
    cfg = write_config(tmp_path / "config.yaml", samples, name=executor, workers=2)
    out = tmp_path / "out"
    p = crema("run", str(cfg), "-o", str(out), "--no-plots", "--no-progress")
    deadline = time.monotonic() + 120
    while not list(out.glob("checkpoint/*/chunks/*.npz")):
        assert p.poll() is None and time.monotonic() < deadline, p.communicate()
        time.sleep(0.02)
    if sig == signal.SIGINT:
        os.killpg(p.pid, sig)  # Ctrl-C in a terminal signals the whole process group
    else:
        p.send_signal(sig)  # a batch system's kill
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 130, stderr
    assert "Traceback" not in stderr
    m = re.fullmatch(r"interrupted: (\d+) of (\d+) chunks done; rerun with --resume", stderr.strip().splitlines()[-1])
    assert m, stderr
    done, total = int(m[1]), int(m[2])
    # two dask workers may finish the other chunks between the first checkpoint and the signal: then the
    # resumed run takes every chunk from the checkpoint
    assert 1 <= done <= total == 3 and (done < total or executor == "dask")
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "interrupted" and report["processed_chunks"] == done
    for path in out.glob("checkpoint/*/chunks/*.npz"):  # a killed run leaves no half-written checkpoint
        assert store.load(path)["cutflow"]
    assert cli(["run", str(cfg), "-o", str(out), "--no-plots", "--no-progress", "--resume"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["resumed_chunks"] >= done and report["processed_chunks"] == total
    assert_identical(reference, out)


def test_checkpoint_of_another_config_is_refused(samples, tmp_path):
    path = write_config(tmp_path / "config.yaml", samples, maxchunks=2)
    ckpt = tmp_path / "ckpt"
    first, _ = run(load_config(path), checkpoint=ckpt)
    again, report = run(load_config(path), checkpoint=ckpt, resume=True)
    assert report.resumed_chunks == report.total_chunks == 3 and report.processed_chunks == 3
    for name, h in first["histograms"].items():
        assert np.array_equal(h.view(flow=True), again["histograms"][name].view(flow=True))
    config = yaml.safe_load(path.read_text())
    for change, message in [
        (lambda c: c.update(luminosity_fb=20.0), "luminosity_fb"),
        (lambda c: c["processor"].update(options={"channels": ["dl"]}), "processor.options"),
        (lambda c: c["datasets"][0].update(xsec_pb=2.0), "datasets.TT.xsec_pb"),
    ]:
        changed = yaml.safe_load(yaml.safe_dump(config))
        change(changed)
        (tmp_path / "changed.yaml").write_text(yaml.safe_dump(changed))
        with pytest.raises(ConfigError, match=rf"different {re.escape(message)}"):
            run(load_config(tmp_path / "changed.yaml"), checkpoint=ckpt, resume=True)
    copy = tmp_path / "TT_copy.root"  # the same events in a rewritten file: input files changed
    shutil.copy(samples["TT"], copy)
    (tmp_path / "moved.yaml").write_text(path.read_text().replace(str(samples["TT"]), str(copy)))
    with pytest.raises(ConfigError, match=r"datasets.TT.files \(input files changed\)"):
        run(load_config(tmp_path / "moved.yaml"), checkpoint=ckpt, resume=True)


# ------------------------------------------------------------------------------------------ pickle drill
class _Marker:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_plot_never_unpickles_output_coffea(reference, tmp_path):
    from coffea.util import load, save

    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    marker = tmp_path / "marker"
    save({"histograms": _Marker(str(marker))}, run_dir / "output.coffea")
    assert cli(["plot", str(run_dir), "--observable", "n_jets", "-o", str(tmp_path / "plots")]) == 0
    assert not marker.exists()
    assert list((tmp_path / "plots").glob("*n_jets.png"))
    load(run_dir / "output.coffea")  # the drill is live: unpickling it does run code
    assert marker.exists()


# ------------------------------------------------------------------------------------------ clear errors
def test_unknown_observable_lists_the_known_ones(reference, capsys):
    assert cli(["plot", str(reference), "--observable", "nope"]) == 2
    err = capsys.readouterr().err
    assert "no observable 'nope'" in err and "n_jets" in err and "m_bb" in err


def test_unreachable_scheduler_is_one_line(samples, tmp_path, capsys, monkeypatch):
    import crema.workflows.run as run_module

    monkeypatch.setattr(run_module, "SCHEDULER_TIMEOUT_S", 2)
    cfg = write_config(tmp_path / "config.yaml", samples)
    start = time.monotonic()
    assert cli(["run", str(cfg), "-o", str(tmp_path / "o"), "--scheduler", "tcp://127.0.0.1:9", "--no-plots"]) == 2
    assert time.monotonic() - start < 60
    err = capsys.readouterr().err
    assert "cannot reach the dask scheduler at tcp://127.0.0.1:9 within 2 s" in err and "Traceback" not in err


def test_empty_selections_are_errors(samples, tmp_path, capsys):
    cfg = write_config(tmp_path / "config.yaml", samples)
    assert cli(["run", str(cfg), "-o", str(tmp_path / "o"), "--maxchunks", "0"]) == 2
    assert "maxchunks: must be >= 1" in capsys.readouterr().err
    text = tmp_path / "notes.root"
    text.write_text("these are my notes, not events\n" * 20)
    with pytest.raises(InputError, match=r"notes.root: .*not a ROOT file"):
        run(load_config(write_config(tmp_path / "c.yaml", {"TT": text})))
    # every file bad: an error (and report.json status failed), not a silent empty run
    out = tmp_path / "bad"
    assert cli(["run", str(write_config(tmp_path / "c.yaml", {"TT": text})), "-o", str(out), "--skip-bad-files"]) == 2
    assert "no input left" in capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "failed"
    assert report["bad_files"] == [{"file": str(text), "events_lost": None, "reason": "not a ROOT file"}]


def test_outputs_follow_config_order(reference):
    # TT is listed first in the config although HH sorts first
    assert list(json.loads((reference / "cutflow.json").read_text())) == ["TT", "HH"]
    report = json.loads((reference / "report.json").read_text())
    assert list(report["datasets"]) == ["TT", "HH"]
    assert report["processed_events"] == 300 and report["lost_events_total"] == 0
    assert report["status"] == "complete" and report["processed_chunks"] == report["total_chunks"] == 3
