"""Columnar ONNX runtime: the one way every model in crema is evaluated.

:class:`OnnxModel` follows coffea's ``ml_tools`` pattern
(:class:`coffea.ml_tools.helper.numpy_call_wrapper`): a concrete model says how
to turn awkward inputs into regular arrays (``prepare_awkward``), how to
evaluate them with numpy (``numpy_call``, usually through :meth:`OnnxModel.run`)
and how to turn the numpy result back into awkward (``postprocess_awkward``).
The same object then works on eager/virtual awkward arrays, on plain numpy and
on dask-awkward collections.

The ``onnxruntime.InferenceSession`` objects are created lazily, at most once
per worker process and model configuration, and are never pickled: the wrapper
itself is small and travels to dask workers.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnxruntime as ort


def _coffea_ml_helper() -> ModuleType:
    """``coffea.ml_tools.helper``, loaded without running ``coffea/ml_tools/__init__.py``.

    Why: that ``__init__`` imports coffea's torch, xgboost, tensorflow and triton wrappers, and with
    them torch and xgboost themselves (seconds at every start of every command) although crema's
    models only need the helper. The module is registered under its own name, so a later
    ``import coffea.ml_tools`` reuses it and its classes stay the same objects.
    """
    name = "coffea.ml_tools.helper"
    if name not in sys.modules:
        package = importlib.util.find_spec("coffea.ml_tools")  # imports coffea, not coffea.ml_tools
        spec = importlib.util.spec_from_file_location(name, Path(package.origin).with_name("helper.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name]


_ML_HELPER = _coffea_ml_helper()
nonserializable_attribute, numpy_call_wrapper = _ML_HELPER.nonserializable_attribute, _ML_HELPER.numpy_call_wrapper

__all__ = ["OnnxModel", "resolve_providers", "clear_session_cache"]

#: Short names accepted for ``providers`` (e.g. from a YAML config).
PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "gpu": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}

ProviderSpec = str | tuple[str, dict[str, Any]]

_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}

# Process-wide session cache.  Why: dask may deserialise a fresh copy of a
# wrapper for every task; keying on the process id means a worker builds each
# session once, and a forked child never reuses its parent's (thread-unsafe
# after fork) session.
_SESSION_CACHE: dict[tuple, ort.InferenceSession] = {}
_SESSION_LOCK = threading.Lock()
_CACHE_PID = os.getpid()


def clear_session_cache() -> None:
    """Forget all cached ``InferenceSession`` objects of this process."""
    with _SESSION_LOCK:
        _SESSION_CACHE.clear()


def _normalise_providers(providers: str | Sequence[ProviderSpec] | None) -> tuple[ProviderSpec, ...]:
    """Turn the user's ``providers`` argument into a tuple of ORT provider specs (no availability check)."""
    if providers is None:
        return ("CPUExecutionProvider",)
    if isinstance(providers, str) or (isinstance(providers, tuple) and len(providers) == 2 and isinstance(providers[1], dict)):
        providers = [providers]
    out: list[ProviderSpec] = []
    for spec in providers:
        name, opts = (spec if isinstance(spec, tuple) else (spec, None))
        if not isinstance(name, str):
            raise TypeError(f"Execution provider must be a name or (name, options), got {spec!r}")
        name = PROVIDER_ALIASES.get(name.lower(), name)
        if not name.endswith("ExecutionProvider"):
            raise ValueError(
                f"Unknown execution provider {spec!r}; use one of {sorted(PROVIDER_ALIASES)} "
                "or a full onnxruntime provider name such as 'CUDAExecutionProvider'."
            )
        out.append((name, dict(opts)) if opts else name)
    return tuple(out)


def resolve_providers(providers: str | Sequence[ProviderSpec] | None) -> list[ProviderSpec]:
    """Execution providers to give onnxruntime on *this* machine.

    Requested providers that this onnxruntime build does not offer are dropped
    with a warning; ``CPUExecutionProvider`` is always appended as the final
    fallback.  ``None`` means CPU only.
    """
    available = set(ort.get_available_providers())
    out: list[ProviderSpec] = []
    for spec in _normalise_providers(providers):
        name = spec[0] if isinstance(spec, tuple) else spec
        if name not in available:
            warnings.warn(
                f"onnxruntime execution provider {name} requested but not available here "
                f"(available: {sorted(available)}); falling back to CPUExecutionProvider.",
                RuntimeWarning,
                stacklevel=3,
            )
            continue
        out.append(spec)
    if "CPUExecutionProvider" not in [s[0] if isinstance(s, tuple) else s for s in out]:
        out.append("CPUExecutionProvider")
    return out


def _get_session(path: str, threads: int, inter_op_threads: int, providers: tuple[ProviderSpec, ...]) -> ort.InferenceSession:
    """Return the process-wide session for this configuration, creating it on first use."""
    global _CACHE_PID
    key = (path, os.stat(path).st_mtime_ns, threads, inter_op_threads, repr(providers))
    with _SESSION_LOCK:
        if _CACHE_PID != os.getpid():
            _SESSION_CACHE.clear()
            _CACHE_PID = os.getpid()
        session = _SESSION_CACHE.get(key)
        if session is None:
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = inter_op_threads
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            # onnxruntime keeps one memory pattern (and the arena space it plans) per input shape it
            # has seen; the number of selected events differs in every chunk, channel and variation,
            # so a long run kept growing (+29 MB over 400 batch sizes on DeepHME). Off: memory is flat.
            options.enable_mem_pattern = False
            session = ort.InferenceSession(path, sess_options=options, providers=resolve_providers(providers))
            _SESSION_CACHE[key] = session
        return session


class OnnxModel(nonserializable_attribute, numpy_call_wrapper):
    """Base class for a columnar ONNX model (one or several ``.onnx`` files).

    Subclasses implement ``prepare_awkward`` (awkward -> regular arrays),
    ``numpy_call`` (numpy evaluation, normally via :meth:`run`) and optionally
    ``postprocess_awkward`` (numpy result -> awkward), exactly as for coffea's
    ``numpy_call_wrapper``; calling the object then dispatches on the input
    type (awkward, dask-awkward or numpy).

    Parameters
    ----------
    model_paths:
        One path, or a mapping ``name -> path`` for wrappers that evaluate
        several networks (e.g. the even and odd folds of a k-fold training).
        Every file must exist: a missing file raises ``FileNotFoundError`` here,
        not at the first evaluation on a worker.
    threads:
        ``intra_op_num_threads`` of each session (default 1: one core per
        worker process is the usual coffea setup).
    inter_op_threads:
        ``inter_op_num_threads`` (only matters for parallel graph execution).
    providers:
        Execution providers, e.g. ``None``/``"cpu"`` (default),
        ``"cuda"``, ``["CUDAExecutionProvider", "CPUExecutionProvider"]`` or
        ``[("CUDAExecutionProvider", {"device_id": 1})]``.  Providers not
        available where the session is created fall back to CPU with a warning.
    batch_size:
        Maximum number of rows per ``session.run`` call; larger inputs are
        evaluated in slices (bounded memory, better cache use).  ``None`` or
        ``0`` evaluates everything in one call.  Rounded down to a multiple
        of ``row_block``.
    row_block:
        Every ``session.run`` gets a multiple of this many rows (the last
        slice is zero-padded and the padding dropped).  Why: onnxruntime's CPU
        GEMM evaluates left-over rows of a batch with a different kernel whose
        rounding differs in the last bit, so without padding a row's result
        would depend on how the events happen to be chunked and batched.
        With it, results are bit-identical for any chunking with
        ``threads=1`` (verified on the CPU provider, AVX2; 48 is a multiple
        of every row-block size of those kernels).  1 disables the padding.
    """

    #: name used when ``model_paths`` is a single path
    DEFAULT_MODEL = "model"

    def __init__(
        self,
        model_paths: str | os.PathLike | Mapping[str, str | os.PathLike],
        *,
        threads: int = 1,
        inter_op_threads: int = 1,
        providers: str | Sequence[ProviderSpec] | None = None,
        batch_size: int | None = 4096,
        row_block: int = 48,
    ) -> None:
        if isinstance(model_paths, (str, os.PathLike)):
            model_paths = {self.DEFAULT_MODEL: model_paths}
        paths: dict[str, str] = {}
        for name, path in model_paths.items():
            resolved = Path(path).expanduser().resolve()
            if not resolved.is_file():
                raise FileNotFoundError(f"ONNX model file for {type(self).__name__} ({name!r}) not found: {resolved}")
            paths[name] = str(resolved)
        if int(threads) < 1 or int(inter_op_threads) < 1:
            raise ValueError("threads and inter_op_threads must be >= 1")
        if batch_size is not None and int(batch_size) < 0:
            raise ValueError("batch_size must be positive (or None/0 for no batching)")
        if int(row_block) < 1:
            raise ValueError("row_block must be >= 1")
        self.model_paths = paths
        self.threads = int(threads)
        self.inter_op_threads = int(inter_op_threads)
        self.providers = _normalise_providers(providers)  # validated now, resolved on the worker
        self.row_block = int(row_block)
        self.batch_size = max(self.row_block, int(batch_size) // self.row_block * self.row_block) if batch_size else None
        nonserializable_attribute.__init__(self, ["sessions"])
        numpy_call_wrapper.__init__(self)

    # -- sessions ---------------------------------------------------------
    def _create_sessions(self) -> dict[str, ort.InferenceSession]:
        """Called by ``nonserializable_attribute`` on first access of ``self.sessions``."""
        return {
            name: _get_session(path, self.threads, self.inter_op_threads, self.providers)
            for name, path in self.model_paths.items()
        }

    def session(self, model: str | None = None) -> ort.InferenceSession:
        """The ``InferenceSession`` of ``model`` (created on first use in this process)."""
        return self.sessions[model or self.DEFAULT_MODEL]

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        # coffea's dask path caches ``dask.delayed(self)`` on the instance; it
        # refers back to this object and must not travel with it.
        state.pop("_delayed_wrapper", None)
        return state

    # -- evaluation -------------------------------------------------------
    def output_template(self, model: str | None = None) -> dict[str, tuple[tuple[int, ...], type]]:
        """``name -> (shape without the batch axis, numpy dtype)`` of the model outputs.

        Dynamic non-batch dimensions are reported as 0.
        """
        out = {}
        for meta in self.session(model).get_outputs():
            dims = tuple(d if isinstance(d, int) else 0 for d in meta.shape[1:])
            out[meta.name] = (dims, _ORT_DTYPES.get(meta.type, np.float32))
        return out

    def run(
        self,
        inputs: Mapping[str, np.ndarray] | np.ndarray,
        model: str | None = None,
        output_names: Sequence[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """Evaluate ``model`` on numpy ``inputs`` and return ``{output name: array}``.

        A bare array is fed to the model's first input.  Inputs are cast to
        the dtype the model declares, evaluated in slices of ``batch_size``
        rows, and a zero-row input returns correctly shaped and typed empty
        outputs without calling onnxruntime.
        """
        session = self.session(model)
        in_meta = session.get_inputs()
        if not isinstance(inputs, Mapping):
            inputs = {in_meta[0].name: inputs}
        feeds = {}
        for meta in in_meta:
            if meta.name not in inputs:
                raise KeyError(f"Missing input {meta.name!r} for model {model or self.DEFAULT_MODEL!r}")
            dtype = _ORT_DTYPES.get(meta.type, np.float32)
            feeds[meta.name] = np.ascontiguousarray(inputs[meta.name], dtype=dtype)
        names = list(output_names) if output_names is not None else [o.name for o in session.get_outputs()]
        n = len(next(iter(feeds.values())))

        if n == 0:
            template = self.output_template(model)
            return {name: np.empty((0, *template[name][0]), dtype=template[name][1]) for name in names}

        step = self.batch_size or n
        parts = [self._run_block(session, names, {k: v[start : start + step] for k, v in feeds.items()}) for start in range(0, n, step)]
        if len(parts) == 1:
            return dict(zip(names, parts[0]))
        return {name: np.concatenate([p[i] for p in parts]) for i, name in enumerate(names)}

    def _run_block(self, session: ort.InferenceSession, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """One ``session.run``, zero-padded to a multiple of ``row_block`` rows (see the class docstring)."""
        n = len(next(iter(feeds.values())))
        extra = -n % self.row_block
        if extra:
            feeds = {k: np.concatenate([v, np.zeros((extra, *v.shape[1:]), dtype=v.dtype)]) for k, v in feeds.items()}
        outs = session.run(names, feeds)
        return [o[:n] for o in outs] if extra else outs

    def validate_numpy_input(self, *args: Any, **kwargs: Any) -> None:
        """Inputs are validated by the concrete model's ``numpy_call``; no generic warning."""
