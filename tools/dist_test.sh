#!/usr/bin/env bash
# Evaluates a checkpoint on GPUS processes of this node with torchrun (one process per GPU).
#
#   bash tools/dist_test.sh CONFIG CHECKPOINT GPUS [test.py options...]
#
# Several nodes: NNODES, NODE_RANK, MASTER_ADDR and PORT as for tools/dist_train.sh.
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: bash tools/dist_test.sh CONFIG CHECKPOINT GPUS [test.py options...]" >&2
  exit 2
fi
config=$1
checkpoint=$2
gpus=$3
shift 3
root=$(cd "$(dirname "$0")/.." && pwd)

PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" exec torchrun \
  --nnodes="${NNODES:-1}" \
  --node_rank="${NODE_RANK:-0}" \
  --master_addr="${MASTER_ADDR:-127.0.0.1}" \
  --master_port="${PORT:-29500}" \
  --nproc_per_node="$gpus" \
  "$root/tools/test.py" "$config" "$checkpoint" --launcher pytorch "$@"
