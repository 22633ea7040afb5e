#!/usr/bin/env bash
# README command 2: install what is missing, build, run every test.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
bash "$ROOT/tools/setup.sh"
bash "$ROOT/tools/build.sh"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

# The emulated CUDA tests once more under AddressSanitizer + UndefinedBehaviorSanitizer, so that
# out-of-bounds accesses and undefined arithmetic in the kernels' own source show (docs/testing.md).
echo "== emulated CUDA tests under ASan + UBSan (build-asan)"
cmake -S "$ROOT" -B "$ROOT/build-asan" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDILOCO_SANITIZE=ON -DDILOCO_UBSAN=ON \
      -DDILOCO_WITH_CUDA=OFF -DDILOCO_WITH_MPI=OFF >/dev/null
cmake --build "$ROOT/build-asan" -j "$(nproc)" --target emu_tests emu_twin_tests
UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" ctest --test-dir "$ROOT/build-asan" --output-on-failure -R '^emulated\.'

# The unit tests, every committed fuzz input, the CLI error cases and a short mpirun run under
# AddressSanitizer + UndefinedBehaviorSanitizer (docs/testing.md says why this subset): a reader
# or an optimizer that reads out of bounds, overflows or shifts past a width fails here.
echo "== unit tests, fuzz inputs, CLI errors, mpirun under ASan + UBSan (build-san)"
cmake -S "$ROOT" -B "$ROOT/build-san" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDILOCO_SANITIZE=ON -DDILOCO_UBSAN=ON \
      -DDILOCO_WITH_CUDA=OFF -DDILOCO_EMULATE_CUDA=OFF >/dev/null
cmake --build "$ROOT/build-san" -j "$(nproc)" --target unit_tests fuzz_replay diloco
(
    export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
    # `train` starts MPI, whose per-process allocations outlive it (the file says which libraries);
    # full unwinding reaches libmpi through Open MPI's plugins, unloaded by then, so they match
    export LSAN_OPTIONS="suppressions=$ROOT/tests/sanitizers/lsan.supp:print_suppressions=0"
    export ASAN_OPTIONS="fast_unwind_on_malloc=0"
    "$ROOT/build-san/tests/unit_tests" --gtest_brief=1
    "$ROOT/build-san/tests/fuzz_replay" --gtest_brief=1
    bash "$ROOT/tests/cli_errors.sh" "$ROOT/build-san/diloco" | grep -E "^FAIL|passed"
    bash "$ROOT/tests/sanitizers/mpi_smoke.sh" "$ROOT/build-san/diloco"
)

# In-job survival of a lost worker: the build against Open MPI 5 with ULFM (.venv-ulfm, from
# tools/setup.sh), whose ranks are SIGKILLed mid-run under its `mpirun --with-ft ulfm`.
echo "== in-job survival of a lost worker, Open MPI with ULFM (build-ulfm)"
cmake -S "$ROOT" -B "$ROOT/build-ulfm" -G Ninja -DCMAKE_BUILD_TYPE=Release -DDILOCO_ULFM=ON -DDILOCO_WITH_CUDA=OFF \
      -DDILOCO_EMULATE_CUDA=OFF -DDILOCO_BUILD_TESTS=OFF >/dev/null
cmake --build "$ROOT/build-ulfm" -j "$(nproc)" --target diloco
"$ROOT/.venv/bin/python" "$ROOT/tests/mpi/test_survival.py" --diloco "$ROOT/build-ulfm/diloco" \
    --mpirun "$ROOT/.venv-ulfm/bin/mpirun"

# Every fuzz target for 20 s on its committed corpus, and ThreadSanitizer over the OpenMP regions
# and the overlapped exchanges, when clang is there (tools/fuzz.sh, tests/sanitizers/tsan.sh)
if command -v clang++ >/dev/null; then
    echo "== fuzz smoke: every target for 20 s (build-fuzz)"
    bash "$ROOT/tools/fuzz.sh" --smoke 20
    echo "== ThreadSanitizer (build-tsan)"
    bash "$ROOT/tests/sanitizers/tsan.sh"
else
    echo "== fuzz smoke and ThreadSanitizer skipped: no clang++ (tools/setup.sh installs it)"
fi

cd "$ROOT/build"
# say why the native GPU tests will not run, if they will not
if ctest -N -R '^native\.' | grep -q "Test #"; then
    ./tests/cuda_native_tests 2>&1 | grep -m1 -A1 "Skipped" || true
fi
echo "== all tests (build)"
ctest --output-on-failure --timeout 900 -j 1
