#!/usr/bin/env bash
# README command 2: install what is missing, build, run every test.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
bash "$ROOT/tools/setup.sh"
bash "$ROOT/tools/build.sh"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

# The emulated CUDA tests once more under AddressSanitizer, so that out-of-bounds accesses in the
# kernels' own source show (docs/testing.md).
echo "== emulated CUDA tests under AddressSanitizer (build-asan)"
cmake -S "$ROOT" -B "$ROOT/build-asan" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDILOCO_SANITIZE=ON \
      -DDILOCO_WITH_CUDA=OFF -DDILOCO_WITH_MPI=OFF >/dev/null
cmake --build "$ROOT/build-asan" -j "$(nproc)" --target emu_tests emu_twin_tests
ctest --test-dir "$ROOT/build-asan" --output-on-failure -R '^emulated\.'

cd "$ROOT/build"
# say why the native GPU tests will not run, if they will not
if ctest -N -R '^native\.' | grep -q "Test #"; then
    ./tests/cuda_native_tests 2>&1 | grep -m1 -A1 "Skipped" || true
fi
echo "== all tests (build)"
ctest --output-on-failure --timeout 900 -j 1
