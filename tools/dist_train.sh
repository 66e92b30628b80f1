#!/usr/bin/env bash
# Trains on GPUS processes of this node with torchrun (one process per GPU).
#
#   bash tools/dist_train.sh CONFIG GPUS [train.py options...]
#
# Several nodes: run it on each with NNODES, NODE_RANK (0..NNODES-1), MASTER_ADDR (node 0's
# address) and PORT (a free port there) set alike, e.g.
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 PORT=29500 bash tools/dist_train.sh CONFIG 8
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: bash tools/dist_train.sh CONFIG GPUS [train.py options...]" >&2
  exit 2
fi
config=$1
gpus=$2
shift 2
root=$(cd "$(dirname "$0")/.." && pwd)

PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" exec torchrun \
  --nnodes="${NNODES:-1}" \
  --node_rank="${NODE_RANK:-0}" \
  --master_addr="${MASTER_ADDR:-127.0.0.1}" \
  --master_port="${PORT:-29500}" \
  --nproc_per_node="$gpus" \
  "$root/tools/train.py" "$config" --launcher pytorch "$@"
