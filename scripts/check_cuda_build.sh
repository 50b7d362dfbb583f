#!/usr/bin/env bash
# Compile every CUDA kernel of pcdet/ops and every op's C++ file (with WITH_CUDA) with nvcc, on a machine without
# a GPU: proves that `pip install -e .` builds on a CUDA machine. One line per file; exit 1 on any failure.
#
#   bash scripts/check_cuda_build.sh                 # nvcc from PyPI wheels, cached in $PCDET_CUDA_CACHE
#   NVCC=/usr/local/cuda/bin/nvcc bash scripts/check_cuda_build.sh --arch 70 80   # a local toolkit instead
#
# The wheels (nvcc, crt and nvvm, runtime and CCCL headers of CUDA 13.0, about 270 MB installed) go into
# $PCDET_CUDA_CACHE (default ~/.cache/pcdet/cuda-13.0) once; later runs reuse them. Extra arguments go to
# `python -m pcdet.ops.cuda_build_check` (--arch, --jobs, --sources, --verbose).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
CUDA_WHEELS=(nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-runtime==13.0.96
             nvidia-cuda-cccl==13.0.85)
if [ -z "${NVCC:-}" ]; then
  CACHE=${PCDET_CUDA_CACHE:-$HOME/.cache/pcdet/cuda-13.0}
  NVCC="$CACHE/nvidia/cu13/bin/nvcc"
  if [ ! -x "$NVCC" ] || [ "$(cat "$CACHE/.wheels" 2>/dev/null)" != "${CUDA_WHEELS[*]}" ]; then
    echo "check_cuda_build: installing ${CUDA_WHEELS[*]} into $CACHE"
    rm -rf "$CACHE.tmp"
    "$PY" -m pip install -q --disable-pip-version-check --no-deps --target "$CACHE.tmp" "${CUDA_WHEELS[@]}"
    rm -rf "$CACHE" && mv "$CACHE.tmp" "$CACHE"
    echo "${CUDA_WHEELS[*]}" > "$CACHE/.wheels"
  fi
fi
exec "$PY" -m pcdet.ops.cuda_build_check --nvcc "$NVCC" "$@"
