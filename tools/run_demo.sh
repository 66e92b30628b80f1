#!/usr/bin/env bash
# The demo: trains a small RT-DETR from scratch on synthetic shapes on the CPU and shows that it learns.
#
#   bash tools/run_demo.sh [train.py options...]      # e.g. --cfg-options train_cfg.max_epochs=2
#
# 1. sets up the environment (tools/setup_env.sh; reused when already there),
# 2. writes the demo dataset to data/demo/ if it is not there (tools/misc/make_demo_dataset.py),
# 3. evaluates the untrained model (tools/test.py without a checkpoint),
# 4. trains it (tools/train.py) into a new directory work_dirs/demo/<timestamp>/,
# 5. evaluates the last checkpoint, then prints both COCO bbox mAPs and the wall times.
# DEMO_CONFIG overrides the config (default configs/rtdetr/rtdetr_r18vd_1xb8-demo.py; the DETR and
# Deformable DETR demo configs are configs/detr/detr_r18_1xb8-demo.py and
# configs/deformable_detr/deformable-detr_r18_1xb8-demo.py). About 10 minutes
# on 2 CPU cores once the environment exists.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
config=${DEMO_CONFIG:-configs/rtdetr/rtdetr_r18vd_1xb8-demo.py}
[ -f "$config" ] || { echo "run_demo: config $config not found" >&2; exit 1; }

stage() { echo; echo "==== run_demo: $* ===="; }
# The value of a key in the "Final metrics: {...}" line that tools/test.py prints last.
read_metric() {
  "$py" -c 'import json, sys
prefix = "Final metrics: "
lines = [line for line in open(sys.argv[1]) if line.startswith(prefix)]
if not lines:
    sys.exit(f"run_demo: no {prefix!r} line in {sys.argv[1]}")
print(format(json.loads(lines[-1][len(prefix):])[sys.argv[2]], ".3f"))' "$1" "$2"
}

stage "environment (tools/setup_env.sh)"
start=$SECONDS
setup_log=$(mktemp)
trap 'rm -f "$setup_log"' EXIT
bash tools/setup_env.sh | tee "$setup_log"
py=$(tail -n 1 "$setup_log")
t_setup=$((SECONDS - start))

stage "data (data/demo)"
start=$SECONDS
if [ -f data/demo/annotations/instances_train.json ] && [ -f data/demo/annotations/instances_val.json ]; then
  echo "reusing data/demo"
else
  "$py" tools/misc/make_demo_dataset.py --out data/demo
fi
t_data=$((SECONDS - start))

# A new directory for every run, even for two runs within the same second.
work_dir=work_dirs/demo/$(date +%Y%m%d_%H%M%S)
base=$work_dir
n=1
while [ -e "$work_dir" ]; do n=$((n + 1)); work_dir=${base}_$n; done
mkdir -p "$work_dir"

stage "evaluating the untrained model ($config)"
start=$SECONDS
"$py" tools/test.py "$config" --work-dir "$work_dir/eval_untrained" 2>&1 | tee "$work_dir/eval_untrained.log"
t_untrained=$((SECONDS - start))

stage "training ($config -> $work_dir)"
start=$SECONDS
"$py" tools/train.py "$config" --work-dir "$work_dir" "$@"
t_train=$((SECONDS - start))

stage "evaluating the trained model"
start=$SECONDS
[ -f "$work_dir/last_checkpoint" ] || { echo "run_demo: training left no $work_dir/last_checkpoint" >&2; exit 1; }
checkpoint=$(cat "$work_dir/last_checkpoint")
"$py" tools/test.py "$config" "$checkpoint" --work-dir "$work_dir/eval_trained" 2>&1 \
  | tee "$work_dir/eval_trained.log"
t_trained=$((SECONDS - start))

untrained=$(read_metric "$work_dir/eval_untrained.log" coco/bbox_mAP)
trained=$(read_metric "$work_dir/eval_trained.log" coco/bbox_mAP)
stage "summary"
echo "config:     $config"
echo "checkpoint: $checkpoint"
echo "untrained bbox mAP: $untrained / trained bbox mAP: $trained   (COCO bbox mAP@[.5:.95], data/demo val)"
echo "wall times: setup ${t_setup}s, data ${t_data}s, untrained eval ${t_untrained}s, training ${t_train}s, trained eval ${t_trained}s"
