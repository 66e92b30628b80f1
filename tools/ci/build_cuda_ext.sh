#!/usr/bin/env bash
# Compiles the MSDA CUDA op (detr_plugin/ops/csrc) so that CI catches compile errors without a GPU.
#
#   bash tools/ci/build_cuda_ext.sh
#
# Creates (once; later runs reuse it) the git-ignored venv .venv-cuda at the repo root with a CUDA
# torch, then runs setup.py build_ext with FORCE_CUDA=1 for sm_80 and sm_90 into a temporary build
# dir, removed on exit: no .so is ever left inside detr_plugin/, where the CPU torch of .venv would
# try to load it. Fails on any compile error. Without nvcc it prints one line and exits 0.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda-13.0}
nvcc=$(command -v nvcc || true)
[ -x "$CUDA_HOME/bin/nvcc" ] && nvcc=$CUDA_HOME/bin/nvcc
if [ -z "$nvcc" ]; then
  echo "build_cuda_ext: nvcc not found; skipping the CUDA op build"
  exit 0
fi

venv=$root/.venv-cuda
py=$venv/bin/python
[ -x "$py" ] || python3 -m venv "$venv"
if ! "$py" -c 'import torch, numpy, setuptools, sys; sys.exit(torch.__version__.split("+")[0] != "2.14.1" or int(setuptools.__version__.split(".")[0]) >= 81)' 2>/dev/null; then
  echo "build_cuda_ext: installing torch 2.14.1 (CUDA) into $venv (minutes the first time)"
  "$py" -m pip install -q --disable-pip-version-check torch==2.14.1 'setuptools<81' numpy
fi

build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
echo "build_cuda_ext: compiling with $nvcc into $build"
FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-"8.0;9.0"} MAX_JOBS=${MAX_JOBS:-$(nproc)} \
  "$py" setup.py -q build_ext --build-temp "$build/temp" --build-lib "$build/lib"
so=$(find "$build/lib" -name '_ext*.so' | head -1)
[ -n "$so" ] || { echo "build_cuda_ext: no _ext*.so was produced" >&2; exit 1; }
echo "build_cuda_ext: OK, built $(basename "$so") ($(du -k "$so" | cut -f1) KiB)"
