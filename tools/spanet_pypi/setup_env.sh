#!/usr/bin/env bash
# An isolated environment for the PyPI `spanet` package (2.1.1), usable with crema's training files.
# SPANet 2.1.1 as released does not run with today's stack; this pins what it needs and applies a small
# compatibility patch (numpy 2 dtype aliases; ONNX export with opset 14 and the TorchScript exporter).
# Usage: tools/spanet_pypi/setup_env.sh [VENV_DIR]   (default /tmp/spanet-env)  -- see docs/spanet.md
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${1:-/tmp/spanet-env}"
python3 -m venv "$venv"
"$venv/bin/pip" install -q torch==2.13.0          # first: the local CPU build
"$venv/bin/pip" install -q spanet==2.1.1
# spanet imports pytorch_lightning.profiler (gone in lightning 2), lightning 1.8 needs pkg_resources,
# rich is used but not declared (and rich >= 14 breaks lightning 1.8's progress bar), export needs onnx
"$venv/bin/pip" install -q "pytorch-lightning==1.8.6" "setuptools<81" "rich==13.7.1" onnx
site="$("$venv/bin/python" -c 'import spanet, pathlib; print(pathlib.Path(spanet.__file__).parent.parent)')"
(cd "$site" && patch -p0 --forward < "$here/spanet-2.1.1-compat.patch")
echo "SPANet environment ready: $venv"
