#!/usr/bin/env bash
# Set up the environment and run the main job on the embedded synthetic dataset:
# generate data + infos, KITTI-metric self-check, load the shipped PointPillars teacher (model_zoo/), train its
# 4x student alone and distilled with PointDistiller, evaluate all three on val and print the results table.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
.venv/bin/python tools/benchmark_kd.py --preset main "$@"
