#!/usr/bin/env bash
# Set up the environment and run the main job on the embedded synthetic dataset:
# generate data + infos, KITTI-metric self-check, train a teacher, train the 1/4-width student alone,
# distil the same student with itKD, evaluate all three and print the results table.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
.venv/bin/python tools/benchmark_kd.py --preset main "$@"
