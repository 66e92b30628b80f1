#!/usr/bin/env bash
# Sets up a Python environment for detr_plugin, idempotently (a second run reuses what is there).
#
#   bash tools/setup_env.sh            # creates ./.venv (Python 3.11) and installs everything
#   PYTHON=/path/to/python bash tools/setup_env.sh   # installs into an existing environment
#
# Pins: torch 2.13.0 (only when no torch is importable: a CUDA torch you already have is kept),
# mmengine 0.10.7, mmcv 2.1.0 built from source with its compiled ops, mmdet 3.3.0, then
# deepforest 2.1.0 without its dependencies (its photographs are test data), then onnx 1.23.2
# and onnxruntime 1.31.1 (optional for users, needed by the export tests), then `pip install -e .`
# of this project (which compiles our CUDA op when torch has CUDA and nvcc is present). Prints the
# path of the environment's python on its last line.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

if [ -n "${PYTHON:-}" ]; then
  py=$PYTHON
else
  [ -x .venv/bin/python ] || python3 -m venv .venv
  py=$root/.venv/bin/python
fi
pip_install() { "$py" -m pip install -q --disable-pip-version-check "$@"; }
has() { "$py" -c "$1" >/dev/null 2>&1; }

# mmcv's setup.py imports pkg_resources, which setuptools 81 removed; other installs may upgrade it.
old_setuptools() {
  has 'import setuptools, sys; sys.exit(int(setuptools.__version__.split(".")[0]) >= 81)' \
    || pip_install 'setuptools<81' wheel
}
old_setuptools
has 'import torch' || pip_install torch==2.13.0
has 'import numpy, scipy, pycocotools' || pip_install numpy scipy pycocotools
has 'import mmengine; assert mmengine.__version__ == "0.10.7"' || pip_install mmengine==0.10.7
old_setuptools
if ! has 'import mmcv, mmcv.ops; assert mmcv.__version__ == "2.1.0"'; then
  echo "building mmcv 2.1.0 with its ops (about 16 minutes on 2 cores the first time; pip caches the wheel)"
  MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} pip_install --no-build-isolation mmcv==2.1.0
fi
has 'import mmdet; assert mmdet.__version__ == "3.3.0"' || pip_install mmdet==3.3.0
has 'import pytest' || pip_install pytest
# real photographs with tree-crown boxes for tests and the fine-tuning example
# (tools/dataset_converters/deepforest_trees_to_coco.py): only its data files are read, so without
# its dependencies (a 20 MB wheel)
has 'import importlib.util as u, sys; sys.exit(u.find_spec("deepforest") is None)' \
  || pip_install --no-deps deepforest==2.1.0
# optional for users (pip install -e .[onnx]); the tests of tools/deployment/export_onnx.py use them
has 'import onnx, onnxruntime' || pip_install onnx==1.23.2 onnxruntime==1.31.1
# Without the current directory on sys.path: from the repo root the source tree imports even when
# the package is not installed, but tools/*.py (sys.path[0] = tools/) need it installed.
has 'import sys; sys.path[:] = [p for p in sys.path if p not in ("", ".")]; import detr_plugin' \
  || pip_install --no-build-isolation -e .
echo "$py"
