"""The base install (no torch) runs every command that does not train; training commands say what to install.

One child process with torch made unimportable (as in an install without the ``train`` extra)
imports every non-training module, runs the help of the commands, and starts the training commands.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"

CHILD = r"""
import contextlib, importlib, io, json, pkgutil, sys

class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _NoTorch())

import crema
result = {"modules": [], "commands": {}}
for m in pkgutil.walk_packages(crema.__path__, "crema."):
    if not m.name.endswith("_train"):
        importlib.import_module(m.name)
        result["modules"].append(m.name)
result["torch_imported"] = "torch" in sys.modules
import onnx, onnxruntime  # base dependencies
try:
    import torch
    result["blocked"] = False
except ImportError:
    result["blocked"] = True

from crema.workflows.cli import main
for argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's --help
            code = exc.code
    result["commands"][" ".join(argv)] = {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}
print(json.dumps(result))
"""

HELP = [["--help"], ["demo", "--help"], ["run", "--help"], ["spanet-report", "--help"], ["calib-report", "--help"],
        ["spanet-dataset", "--help"], ["plot", "--help"]]
TRAIN = [["spanet-train", "missing.h5", "-o", "model.onnx"], ["calib-train", "deepsets", "-o", "model"]]


@pytest.fixture(scope="module")
def child(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("notorch")
    env = {**os.environ, "PYTHONPATH": str(SRC), "MPLBACKEND": "Agg"}
    run = subprocess.run([sys.executable, "-c", CHILD, json.dumps(HELP + TRAIN)], capture_output=True, text=True,
                         env=env, cwd=cwd, timeout=300)
    assert run.returncode == 0, run.stderr
    return cwd, json.loads(run.stdout.splitlines()[-1])


def test_every_non_training_module_imports_without_torch(child):
    _, result = child
    assert result["blocked"]  # the blocker works
    assert len(result["modules"]) > 30 and "crema.workflows.cli" in result["modules"]
    assert not result["torch_imported"]


@pytest.mark.parametrize("argv", HELP, ids=" ".join)
def test_help_without_torch(child, argv):
    _, result = child
    command = result["commands"][" ".join(argv)]
    assert command["code"] == 0 and "usage: crema" in command["stdout"]


@pytest.mark.parametrize("argv", TRAIN, ids=lambda a: a[0])
def test_training_commands_ask_for_the_train_extra(child, argv):
    cwd, result = child
    command = result["commands"][" ".join(argv)]
    assert command["code"] == 2
    assert "install crema[train]" in command["stderr"] and argv[0] in command["stderr"]
    assert list(cwd.iterdir()) == []  # checked before any work: nothing written
