#!/usr/bin/env bash
# Training under slurm: bash scripts/slurm_train.sh PARTITION JOB_NAME NUM_GPUS --cfg_file CFG [train.py args]
# GPUS_PER_NODE (default 8), CPUS_PER_TASK (default 5), SRUN_ARGS and PORT (default: random) can be set.
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 PARTITION JOB_NAME NUM_GPUS [train.py arguments]" >&2
  exit 2
fi
PARTITION=$1
JOB_NAME=$2
GPUS=$3
shift 3
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
if [ "$GPUS" -lt "$GPUS_PER_NODE" ]; then GPUS_PER_NODE=$GPUS; fi
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
SRUN_ARGS=${SRUN_ARGS:-""}
PYTHON=${PYTHON:-python3}
PORT=${PORT:-$(( (RANDOM % 20000) + 20000 ))}
TOOLS_DIR=$(cd "$(dirname "$0")/.." && pwd)

# --kill-on-bad-exit: one failing rank ends the whole job instead of leaving its peers waiting
# shellcheck disable=SC2086
srun -p "$PARTITION" --job-name="$JOB_NAME" --gres=gpu:"$GPUS_PER_NODE" --ntasks="$GPUS" \
  --ntasks-per-node="$GPUS_PER_NODE" --cpus-per-task="$CPUS_PER_TASK" --kill-on-bad-exit=1 $SRUN_ARGS \
  "$PYTHON" -u "$TOOLS_DIR/train.py" --launcher slurm --tcp_port "$PORT" "$@"
