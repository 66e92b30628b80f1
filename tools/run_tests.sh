#!/usr/bin/env bash
# The test suite: environment, CUDA op compile check, then pytest.
#
#   bash tools/run_tests.sh [pytest options...]        # e.g. -k ms_deform -x
#
# 1. sets up the environment (tools/setup_env.sh; reused when already there),
# 2. compiles the CUDA op with tools/ci/build_cuda_ext.sh when that script exists (it fails on
#    compile errors; SKIP_CUDA_BUILD=1 skips this step),
# 3. runs `python -m pytest tests -q` with the options given. Tests marked `gpu` are skipped
#    without a GPU. Exits non-zero on any failure, and also when pytest collects no test.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

setup_log=$(mktemp)
trap 'rm -f "$setup_log"' EXIT
bash tools/setup_env.sh | tee "$setup_log"
py=$(tail -n 1 "$setup_log")

if [ "${SKIP_CUDA_BUILD:-0}" = 1 ]; then
  echo "run_tests: SKIP_CUDA_BUILD=1: not compiling the CUDA op"
elif [ -f tools/ci/build_cuda_ext.sh ]; then
  bash tools/ci/build_cuda_ext.sh
fi

status=0
"$py" -m pytest tests -q "$@" || status=$?
if [ "$status" = 5 ]; then
  echo "run_tests: pytest collected no tests" >&2
fi
exit "$status"
