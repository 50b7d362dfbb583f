#!/usr/bin/env bash
# Create .venv (Python 3.11) with pinned torch and install pcdet in editable mode, building its C++ ops.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# torch first and pinned: an unpinned torch would pull several GB of CUDA packages.
.venv/bin/pip install -q --disable-pip-version-check torch==2.13.0
.venv/bin/pip install -q --disable-pip-version-check -r requirements.txt pytest
# --no-build-isolation: the ops are compiled against the torch installed above.
.venv/bin/pip install -q --disable-pip-version-check --no-build-isolation -e .
