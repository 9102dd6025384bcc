"""Tests of the columnar ONNX runtime base (crema.models.onnx) on a tiny generated model."""

from __future__ import annotations

import pickle
import re
import sys
import warnings

import awkward as ak
import numpy as np
import onnxruntime as ort
import pytest

from crema.models import onnx as cro
from crema.models.onnx import OnnxModel

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

W = np.array([[1.0, -2.0], [0.5, 0.25], [3.0, 1.0]], dtype=np.float32)
B = np.array([0.1, -0.3], dtype=np.float32)


@pytest.fixture(scope="module")
def toy_path(tmp_path_factory):
    """y = x @ W + b and s = sum(y, axis=1); x float32 [N, 3]."""
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "B"], ["y"]),
            helper.make_node("ReduceSum", ["y", "axes"], ["s"], keepdims=0),
        ],
        "toy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2]), helper.make_tensor_value_info("s", TensorProto.FLOAT, ["n"])],
        initializer=[numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "B"), numpy_helper.from_array(np.array([1]), "axes")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("toy") / "toy.onnx"
    onnx.save(model, str(path))
    return path


class Toy(OnnxModel):
    """Concrete wrapper: records with fields a, b, c -> {y0, y1, s}."""

    def prepare_awkward(self, objs):
        return (objs.a, objs.b, objs.c), {}

    def numpy_call(self, a, b, c):
        out = self.run(np.stack([a, b, c], axis=1))
        return {"y0": out["y"][:, 0], "y1": out["y"][:, 1], "s": out["s"]}

    def postprocess_awkward(self, ret, *args, **kwargs):
        lib = self.get_awkward_lib(*args, **kwargs) or ak
        return lib.zip(ret)


def _inputs(n=1000, seed=1):
    rng = np.random.default_rng(seed)
    return ak.zip({k: rng.normal(size=n).astype(np.float32) for k in "abc"})


def _expected(objs):
    x = np.stack([ak.to_numpy(objs[k]) for k in "abc"], axis=1).astype(np.float64)
    return x @ W + B


def test_missing_file_fails_at_construction(toy_path, tmp_path):
    missing = tmp_path / "nope" / "model.onnx"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        Toy(missing)
    with pytest.raises(FileNotFoundError, match="'second'"):
        Toy({"first": toy_path, "second": missing})
    with pytest.raises(FileNotFoundError):  # a directory is not a model file
        Toy(tmp_path)


def test_eager_awkward_and_lazy_session(toy_path):
    model = Toy(toy_path)
    assert model._sessions is None  # nothing created at construction
    objs = _inputs()
    out = model(objs)
    assert isinstance(out, ak.Array) and len(out) == len(objs)
    assert out.y0.type.content.primitive == "float32"
    np.testing.assert_allclose(np.stack([ak.to_numpy(out.y0), ak.to_numpy(out.y1)], axis=1), _expected(objs), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ak.to_numpy(out.s), _expected(objs).sum(axis=1), rtol=1e-5, atol=1e-5)
    assert model._sessions is not None


def test_numpy_call_path(toy_path):
    model = Toy(toy_path)
    a, b, c = (np.arange(5, dtype=np.float64) * k for k in (1, 2, 3))
    out = model(a, b, c)  # plain numpy: no awkward conversion, float64 cast to the model's float32
    assert set(out) == {"y0", "y1", "s"} and out["y0"].dtype == np.float32


def test_zero_length_chunk(toy_path):
    model = Toy(toy_path)
    out = model(_inputs(0))
    assert len(out) == 0
    assert set(out.fields) == {"y0", "y1", "s"}
    assert all(out[f].type.content.primitive == "float32" for f in out.fields)
    raw = model.run(np.zeros((0, 3), np.float32))
    assert raw["y"].shape == (0, 2) and raw["y"].dtype == np.float32
    assert raw["s"].shape == (0,)


@pytest.mark.parametrize("batch_size,row_block", [(None, 1), (7, 1), (48, 48), (96, 48)])
def test_batching_identical(toy_path, batch_size, row_block):
    objs = _inputs(1001)
    reference = Toy(toy_path, batch_size=None, row_block=1)(objs)
    batched = Toy(toy_path, batch_size=batch_size, row_block=row_block)(objs)
    for f in ("y0", "y1", "s"):
        assert np.array_equal(ak.to_numpy(batched[f]), ak.to_numpy(reference[f]))


def test_batch_size_rounded_to_row_block(toy_path):
    assert Toy(toy_path, batch_size=100, row_block=48).batch_size == 96
    assert Toy(toy_path, batch_size=10, row_block=48).batch_size == 48
    assert Toy(toy_path, batch_size=None).batch_size is None


def test_pickle_after_run_excludes_session(toy_path):
    model = Toy(toy_path, threads=1)
    objs = _inputs(50)
    first = model(objs)
    assert model._sessions is not None
    blob = pickle.dumps(model)
    assert b"InferenceSession" not in blob
    assert len(blob) < 5000  # the wrapper, not the network
    clone = pickle.loads(blob)
    assert clone._sessions is None
    again = clone(objs)
    assert np.array_equal(ak.to_numpy(again.s), ak.to_numpy(first.s))
    # same process, same configuration: the session is built once and shared
    assert clone.session() is model.session()


def test_threads_and_session_options(toy_path):
    model = Toy(toy_path, threads=2)
    opts = model.session().get_session_options()
    assert opts.intra_op_num_threads == 2
    assert model.session().get_providers() == ["CPUExecutionProvider"]
    # one memory pattern per input shape would grow over a long run (benchmarks/bench_soak.py)
    assert not opts.enable_mem_pattern


def test_session_cache_is_per_process(toy_path, monkeypatch):
    model = Toy(toy_path)
    first = model.session()
    # pretend we are a forked child: the cached session must not be reused
    monkeypatch.setattr(cro, "_CACHE_PID", -1)
    assert Toy(toy_path).session() is not first


def test_providers():
    assert cro._normalise_providers(None) == ("CPUExecutionProvider",)
    assert cro._normalise_providers("cuda") == ("CUDAExecutionProvider",)
    assert cro._normalise_providers([("cuda", {"device_id": 1}), "cpu"]) == (
        ("CUDAExecutionProvider", {"device_id": 1}),
        "CPUExecutionProvider",
    )
    with pytest.raises(ValueError, match="Unknown execution provider"):
        cro._normalise_providers(["cdua"])


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA is available here")
def test_cuda_request_falls_back_to_cpu_with_warning(toy_path):
    model = Toy(toy_path, providers="cuda")  # accepted at construction (the worker may have a GPU)
    with pytest.warns(RuntimeWarning, match="CUDAExecutionProvider requested but not available"):
        session = model.session()
    assert session.get_providers() == ["CPUExecutionProvider"]
    out = model(_inputs(10))
    assert len(out) == 10


def test_dask_awkward_matches_eager(toy_path):
    dak = pytest.importorskip("dask_awkward", reason="dask_awkward not installed: its release needs an older dask "
                                                     "than coffea's executor (docs/troubleshooting.md)")
    import dask

    objs = _inputs(301)
    model = Toy(toy_path)
    eager = model(objs)
    lazy = model(dak.from_awkward(objs, npartitions=4))
    assert isinstance(lazy, dak.Array)
    # column optimisation off: it does not matter here and is incompatible with some dask versions
    with dask.config.set({"awkward.optimization.enabled": False}):
        computed = lazy.compute()
    for f in ("y0", "y1", "s"):
        assert np.array_equal(ak.to_numpy(computed[f]), ak.to_numpy(eager[f]))
    assert b"InferenceSession" not in pickle.dumps(model)


def test_models_package_does_not_import_processors():
    import subprocess

    code = (
        "import sys, crema.models.onnx, crema.models.deephme; "
        "bad = [m for m in sys.modules if m.startswith(('crema.processors', 'crema.workflows'))]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_no_generic_input_warning(toy_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Toy(toy_path)(_inputs(3))
