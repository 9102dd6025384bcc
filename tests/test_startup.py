"""Start-up: showing help loads none of the heavy libraries; ``crema run`` does not load torch.

Each check runs in a fresh interpreter and looks at ``sys.modules`` (what was imported), not at a clock.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
# none of these is needed to parse a command line or show help; each takes a large part of a second or more
HEAVY = ["torch", "coffea", "matplotlib", "onnxruntime", "pyhf", "xgboost", "dask", "distributed", "awkward",
         "uproot", "pandas", "cabinetry", "sklearn"]

HELP_CHILD = r"""
import contextlib, io, json, sys
from crema.workflows.cli import main, parser

commands = [[]] + [[name] for name in parser()._subparsers._group_actions[0].choices]
result = {"help": {}}
for argv in commands:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main(argv + ["--help"])
        except SystemExit as exc:
            result["help"][" ".join(argv)] = [exc.code, out.getvalue()]
result["modules"] = sorted({m.split(".")[0] for m in sys.modules})
print(json.dumps(result))
"""

RUN_CHILD = r"""
import json, sys
import crema.workflows.run, crema.workflows.outputs  # what `crema run` imports before its first chunk
loaded = sorted({m.split(".")[0] for m in sys.modules})
import coffea.ml_tools, crema.models.onnx
print(json.dumps({"modules": loaded,
                  "same_wrapper": coffea.ml_tools.numpy_call_wrapper is crema.models.onnx.numpy_call_wrapper}))
"""


def _child(code: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(SRC), "MPLBACKEND": "Agg"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def help_child() -> dict:
    return _child(HELP_CHILD)


def test_help_of_every_command_works(help_child):
    shown = help_child["help"]
    assert {"", "run", "demo", "generate", "fit", "calib-report", "classifier-train"} <= set(shown)
    for command, (code, text) in shown.items():
        assert code == 0, command
        assert text.startswith(f"usage: crema {command}".rstrip()), command


@pytest.mark.parametrize("module", HEAVY)
def test_help_imports_no_heavy_library(help_child, module):
    assert module not in help_child["modules"]


def test_run_does_not_import_training_libraries():
    result = _child(RUN_CHILD)
    assert "coffea" in result["modules"] and "onnxruntime" in result["modules"]  # the child did import them
    for module in ("torch", "xgboost", "sklearn", "matplotlib", "pyhf"):
        assert module not in result["modules"]
    # coffea.ml_tools imported afterwards shares crema's wrapper base class
    assert result["same_wrapper"]


def test_python_dash_m_crema_shows_help():
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    run = subprocess.run([sys.executable, "-m", "crema", "--help"], capture_output=True, text=True, env=env, timeout=60)
    assert run.returncode == 0 and run.stdout.startswith("usage: crema")
