#!/usr/bin/env bash
# Trains on a Slurm cluster: srun starts one task per GPU, tools/train.py --launcher slurm.
#
#   [GPUS=8] [GPUS_PER_NODE=8] [CPUS_PER_TASK=5] [SRUN_ARGS="..."] \
#     bash tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [train.py options...]
#
# GPUS: total tasks (GPUs); GPUS_PER_NODE: GPUs used on each node (default: GPUS, at most 8);
# CPUS_PER_TASK: CPU cores per task (data loading workers); SRUN_ARGS: extra srun options, split
# on spaces (e.g. "--time=24:00:00 --qos=high"); PYTHON: the interpreter (default: python).
set -euo pipefail
if [ $# -lt 4 ]; then
  echo "usage: bash tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [train.py options...]" >&2
  exit 2
fi
partition=$1
job_name=$2
config=$3
work_dir=$4
shift 4
root=$(cd "$(dirname "$0")/.." && pwd)
gpus=${GPUS:-8}
gpus_per_node=${GPUS_PER_NODE:-$(( gpus < 8 ? gpus : 8 ))}
read -r -a srun_args <<< "${SRUN_ARGS:-}"

PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" exec srun \
  -p "$partition" \
  --job-name="$job_name" \
  --gres="gpu:$gpus_per_node" \
  --ntasks="$gpus" \
  --ntasks-per-node="$gpus_per_node" \
  --cpus-per-task="${CPUS_PER_TASK:-5}" \
  --kill-on-bad-exit=1 \
  ${srun_args[@]+"${srun_args[@]}"} \
  "${PYTHON:-python}" -u "$root/tools/train.py" "$config" --work-dir="$work_dir" --launcher=slurm "$@"
