#!/usr/bin/env bash
# Distributed training on one node: bash scripts/dist_train.sh NUM_PROCS --cfg_file CFG [train.py args]
# One process per GPU (or per CPU worker on a CPU-only machine, gloo backend).
# PORT=29501 fixes the rendezvous port (default: a free one); PYTHON selects the interpreter.
# Several nodes: run it on each node with NNODES, NODE_RANK and MASTER_ADDR (node 0's address) and one PORT.
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: $0 NUM_PROCS [train.py arguments]" >&2
  exit 2
fi
NUM_PROCS=$1
shift
PYTHON=${PYTHON:-python3}
TOOLS_DIR=$(cd "$(dirname "$0")/.." && pwd)
PORT=${PORT:-$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1]); s.close()')}

NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}

exec "$PYTHON" -m torch.distributed.run --nproc_per_node="$NUM_PROCS" --nnodes="$NNODES" --node_rank="$NODE_RANK" \
  --master_addr="$MASTER_ADDR" --master_port="$PORT" \
  "$TOOLS_DIR/train.py" --launcher pytorch "$@"
