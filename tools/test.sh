#!/usr/bin/env bash
# README command 2: install what is missing, build, run every test.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
bash "$ROOT/tools/setup.sh"
bash "$ROOT/tools/build.sh"
cd "$ROOT/build"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
ctest --output-on-failure --timeout 900 -j 1
# say why the native GPU tests did not run, if they did not
if ctest -N -R CudaNative | grep -q "Test #"; then
    ./tests/cuda_native_tests 2>&1 | grep -m1 -A1 "Skipped" || true
fi
