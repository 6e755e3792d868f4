#!/usr/bin/env bash
# One GPU-machine run: the gpu-marked tests (engines must run: native fallback disabled),
# then the benchmark. Logs and JSON go to $RESULTS_DIR (default ./gpu_out); the benchmark table prints last.
#   bash benchmarks/gpu_run.sh [tests|bench|all] [extra benchmark args...]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${RESULTS_DIR:-gpu_out}; mkdir -p "$OUT"
what=${1:-all}; shift || true
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
rc=0
if [ "$what" = tests ] || [ "$what" = all ]; then
  TFTRT_LITE_ALLOW_NATIVE_FALLBACK=0 python3 -m pytest -m gpu -q -p no:cacheprovider tests \
      --junitxml="$OUT/gpu_tests.xml" 2>&1 | tee "$OUT/gpu_tests.log" | tail -40
  rc=${PIPESTATUS[0]}
fi
if [ "$what" = bench ] || [ "$what" = all ]; then
  python3 benchmarks/bench.py --out "$OUT/bench.json" "$@" 2>&1 | tee "$OUT/bench.log" | tail -25
fi
exit $rc
