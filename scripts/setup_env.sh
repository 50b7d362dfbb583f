#!/usr/bin/env bash
# Create .venv (Python 3.11) with pinned torch and install pcdet in editable mode, building its C++ ops.
# Re-running is cheap: each step is skipped while its inputs (requirements, setup files, op sources) are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp() { cat "$@" 2>/dev/null | sha1sum | cut -d' ' -f1; }
PIP=(.venv/bin/pip install -q --disable-pip-version-check)
deps=$(stamp requirements.txt)
if [ "$(cat .venv/.deps_stamp 2>/dev/null)" != "$deps" ]; then
  # torch first and pinned: an unpinned torch would pull several GB of CUDA packages.
  "${PIP[@]}" torch==2.13.0
  "${PIP[@]}" -r requirements.txt pytest
  echo "$deps" > .venv/.deps_stamp
fi
build=$(stamp setup.py pcdet/ops/ext_list.py $(find pcdet/ops -path '*/src/*' -type f | sort))
if [ "$(cat .venv/.build_stamp 2>/dev/null)" != "$build" ] || ! .venv/bin/python -c "import pcdet" 2>/dev/null; then
  # --no-build-isolation: the ops are compiled against the torch installed above.
  "${PIP[@]}" --no-build-isolation -e .
  echo "$build" > .venv/.build_stamp
fi
