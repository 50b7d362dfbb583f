#!/usr/bin/env bash
# First thing to run on a new CUDA machine (docs/INSTALL.md): builds the ops with CUDA, runs the CUDA tests
# (parity of every op with its PyTorch reference), one timed training step of each detector and of each KD method
# on the GPU, and prints a table of step times and peak GPU memory. Meant to finish in under 8 minutes.
#
#   bash scripts/gpu_check.sh [--python PY] [--wheels DIR] [--install] [--out DIR] [--skip-build] [--skip-tests]
#                             [--skip-steps] [--require-gpu]
#
#   --python PY    the Python whose torch has CUDA (default: python3, or .venv/bin/python when it has CUDA)
#   --install      pip install a CUDA torch and spconv first (needs the network): torch from $TORCH_INDEX_URL
#                  (default https://download.pytorch.org/whl/cu126) and spconv-cu120 (spconv 2.x for CUDA 12;
#                  it runs on newer drivers)
#   --wheels DIR   install every wheel in DIR first, offline (--no-index --no-deps), e.g. spconv-cu120 and cumm-cu120
#                  carried to a machine without network, into a --target folder put on PYTHONPATH
#   --out DIR      where the logs and JSON tables go (default output/gpu_check)
#   --require-gpu  exit 1 instead of 0 when no CUDA GPU is visible
#
# Without a CUDA GPU it prints "gpu_check: SKIPPED: ..." and exits 0 (1 with --require-gpu): nothing is checked.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; }
PY="" WHEELS="" INSTALL=0 OUT=output/gpu_check SKIP_BUILD=0 SKIP_TESTS=0 SKIP_STEPS=0 REQUIRE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --python) [ $# -ge 2 ] || { echo "gpu_check: --python needs a path" >&2; exit 2; }; PY=$2; shift 2 ;;
    --wheels) [ $# -ge 2 ] || { echo "gpu_check: --wheels needs a folder" >&2; exit 2; }; WHEELS=$2; shift 2 ;;
    --out) [ $# -ge 2 ] || { echo "gpu_check: --out needs a folder" >&2; exit 2; }; OUT=$2; shift 2 ;;
    --install) INSTALL=1; shift ;;
    --skip-build) SKIP_BUILD=1; shift ;;
    --skip-tests) SKIP_TESTS=1; shift ;;
    --skip-steps) SKIP_STEPS=1; shift ;;
    --require-gpu) REQUIRE=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_check: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

has_cuda() { "$1" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; }
if [ -z "$PY" ]; then
  PY=python3
  if [ -x .venv/bin/python ] && has_cuda .venv/bin/python; then PY=.venv/bin/python; fi
fi
command -v "$PY" >/dev/null 2>&1 || [ -x "$PY" ] || { echo "gpu_check: no Python at '$PY'" >&2; exit 2; }
case "$PY" in /*) ;; */*) PY="$PWD/$PY" ;; *) PY=$(command -v "$PY") ;; esac   # the steps run from tools/

skip() {
  echo "gpu_check: SKIPPED: $1; nothing was checked"
  [ "$REQUIRE" = 1 ] && exit 1
  exit 0
}
if [ "${PCDET_GPU_CHECK_FAKE_NO_GPU:-0}" = 1 ]; then skip "no CUDA GPU (PCDET_GPU_CHECK_FAKE_NO_GPU=1)"; fi
if [ "$INSTALL" = 0 ] && [ -z "$WHEELS" ]; then
  command -v nvidia-smi >/dev/null 2>&1 || skip "no CUDA GPU visible (nvidia-smi not found)"
fi

mkdir -p "$OUT"
T0=$(date +%s)
stamp() { echo "[gpu_check +$(( $(date +%s) - T0 )) s] $*"; }

if [ "$INSTALL" = 1 ]; then
  stamp "installing a CUDA torch and spconv-cu120"
  "$PY" -m pip install -q torch==2.13.0 --index-url "${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cu126}"
  # requirements.txt names the CPU spconv; both ship the `spconv` package, so it is left out here
  grep -v '^spconv' requirements.txt | "$PY" -m pip install -q spconv-cu120 -r /dev/stdin
fi
if [ -n "$WHEELS" ]; then
  stamp "installing the wheels of $WHEELS into /tmp/pcdet_gpu_site"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/pcdet_gpu_site "$WHEELS"/*.whl
  export PYTHONPATH=/tmp/pcdet_gpu_site${PYTHONPATH:+:$PYTHONPATH}
fi
has_cuda "$PY" || skip "torch of $PY sees no CUDA device ($("$PY" -c 'import torch; print(torch.__version__)' 2>&1 | tail -1))"
"$PY" - <<'EOF'
import torch
p = torch.cuda.get_device_properties(0)
print(f"gpu_check: torch {torch.__version__} (CUDA {torch.version.cuda}), {p.name}, {p.total_memory / 2**30:.0f} GiB, "
      f"sm_{p.major}{p.minor}")
try:
    import spconv
    print(f"gpu_check: spconv {getattr(spconv, '__version__', '?')}")
except ImportError as exc:
    print(f"gpu_check: spconv missing ({exc}): SECOND / voxel CenterPoint steps will fail")
EOF

export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if [ "$SKIP_BUILD" = 0 ]; then
  stamp "building the ops with CUDA (log: $OUT/build.log)"
  FORCE_CUDA=1 "$PY" setup.py build_ext --inplace >"$OUT/build.log" 2>&1 \
    || { tail -30 "$OUT/build.log"; echo "gpu_check: FAILED: the CUDA build (see $OUT/build.log)"; exit 1; }
  "$PY" - <<'EOF'
import torch
from pcdet.ops import cuda_status
status = cuda_status()
print("gpu_check: ops with CUDA kernels: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in status.items()))
if not all(status.values()):
    raise SystemExit("gpu_check: FAILED: an op was built without its CUDA kernels")
EOF
fi
FAILED=0
if [ "$SKIP_TESTS" = 0 ]; then
  stamp "CUDA tests: pytest -m cuda (log: $OUT/tests.log)"
  "$PY" -m pytest -q -m cuda tests -p no:cacheprovider >"$OUT/tests.log" 2>&1 || FAILED=1
  tail -3 "$OUT/tests.log"
fi
if [ "$SKIP_STEPS" = 0 ]; then
  stamp "one training step of each detector (log: $OUT/detectors.log)"
  (cd tools && "$PY" benchmarks/bench_models.py --device cuda --widths 1.0 --iters 3 --warmup 1) \
    >"$OUT/detectors.log" 2>&1 || FAILED=1
  cat "$OUT/detectors.log" | tail -12
  stamp "one training step of each KD method (log: $OUT/kd_steps.log)"
  "$PY" tools/benchmarks/bench_kd_step.py --device cuda --all_methods --iters 3 --modes fp32 amp \
    --json "$OUT/kd_steps.json" >"$OUT/kd_steps.log" 2>&1 || FAILED=1
  cat "$OUT/kd_steps.log" | tail -25
fi
stamp "done"
if [ "$FAILED" = 1 ]; then echo "gpu_check: FAILED (see the logs in $OUT)"; exit 1; fi
echo "gpu_check: PASSED"
