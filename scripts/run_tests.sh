#!/usr/bin/env bash
# Set up the environment, compile the CUDA kernels with nvcc (no GPU needed) and run the whole test suite on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
# every CUDA kernel compiled by nvcc (PyPI wheels, cached in ~/.cache/pcdet): the broken-kernel test needs it
bash scripts/check_cuda_build.sh
.venv/bin/python -m pytest -q tests "$@"
