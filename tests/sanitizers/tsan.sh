#!/usr/bin/env bash
# ThreadSanitizer over the paths that run concurrently (docs/testing.md): the OpenMP regions of
# the CPU kernels and the optimizer (unit tests with 2 threads), and a distributed run whose
# outer exchanges are non-blocking collectives progressed while the next inner steps compute
# (Streaming DiLoCo with overlap, and eager DiLoCo; and with --comm-progress thread, the thread
# that polls MPI meanwhile), 2 ranks x 2 OpenMP threads.
# Builds build-tsan/ with clang: libomp reports its barriers and tasks to TSan through the Archer
# tool (libarcher.so), which GCC's libgomp cannot. usage: tests/sanitizers/tsan.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
HERE=$ROOT/tests/sanitizers
BUILD=$ROOT/build-tsan
cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_C_COMPILER=clang \
      -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDILOCO_TSAN=ON -DDILOCO_WITH_CUDA=OFF -DDILOCO_EMULATE_CUDA=OFF >/dev/null
nice -n 5 cmake --build "$BUILD" -j "$(nproc)" --target unit_tests diloco >/dev/null

ARCHER=$(clang++ -print-file-name=libarcher.so)
[ -f "$ARCHER" ] || ARCHER=$(ls /usr/lib/llvm-*/lib/libarcher.so 2>/dev/null | tail -1)
[ -f "$ARCHER" ] || { echo "tsan: libarcher.so not found (Debian: libomp-dev)" >&2; exit 2; }
export OMP_TOOL_LIBRARIES=$ARCHER OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=1
export TSAN_OPTIONS="halt_on_error=1 ignore_noninstrumented_modules=1 suppressions=$HERE/tsan.supp"
WORK=$(mktemp -d /tmp/diloco_tsan.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

# The setup itself, both ways: a parallel loop that races on a shared sum must be reported, and
# two correct parallel regions, one reading what the other wrote, must not. (Built with g++ and
# libgomp, the correct one gives 6 false reports: TSan cannot see libgomp's barriers.)
echo "== TSan with libomp + Archer: a racy OpenMP loop is caught, correct regions are clean"
cat > "$WORK/race.cpp" <<'CPP'
#include <cstdio>
int main() {
    double sum = 0, a[4096];
#pragma omp parallel for
    for (int i = 0; i < 4096; i++) { a[i] = i; sum += a[i]; }
    std::printf("%g\n", sum);
}
CPP
cat > "$WORK/clean.cpp" <<'CPP'
#include <cstdio>
#include <vector>
int main() {
    std::vector<double> a(4096), b(4096);
    for (int rep = 0; rep < 3; rep++) {
#pragma omp parallel for
        for (int i = 0; i < 4096; i++) a[i] = i * rep;
#pragma omp parallel for
        for (int i = 0; i < 4096; i++) b[i] = a[4095 - i];
    }
    std::printf("%g\n", b[0]);
}
CPP
for kind in race clean; do
    clang++ -fsanitize=thread -fopenmp -g -O1 "$WORK/$kind.cpp" -o "$WORK/$kind"
    "$WORK/$kind" >/dev/null 2>"$WORK/$kind.txt" || true
    reported=no; grep -q "WARNING: ThreadSanitizer: data race" "$WORK/$kind.txt" && reported=yes
    want=yes; [ $kind = clean ] && want=no
    [ $reported = $want ] || { echo "FAIL: TSan on the $kind loop: race reported: $reported"; head -20 "$WORK/$kind.txt"; exit 1; }
    echo "ok: $kind OpenMP program, race reported: $reported"
done

echo "== TSan: OpenMP regions of the kernels and the optimizer (unit tests, 2 threads)"
nice -n 5 "$BUILD/tests/unit_tests" --gtest_brief=1 \
    --gtest_filter='Embedding.*:LayerNorm.*:Matmul.*:Gelu.*:CrossEntropy.*:Attention.*:Residual.*:GradNorm.*:AdamW.*:Quant*.*:Training.*'

echo "== TSan: overlapped outer exchanges under mpirun (2 ranks x 2 threads)"
cd "$WORK"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
python3 -c "
import random; random.seed(3)
w = 'the cat sat on a mat and dog ran far away home'.split()
print(' '.join(random.choice(w) for _ in range(6000)))" > corpus.txt
"$BUILD/diloco" prepare --input corpus.txt --out data >/dev/null 2>&1
SMALL="--data data --n-layer 2 --n-head 2 --d-model 16 --seq-len 16 --batch 2 --steps 8 --log-every 0 --eval-batches 1
       --workers 2 --inner-steps 4 --verify-sync"
# the third: the same exchanges moved by the progress thread (comm/progress.h) while the inner
# steps compute, two threads in MPI at once
for algo in "streaming --fragments 2 --overlap 2 --quant e3m0" "diloco --eager" \
            "streaming --fragments 2 --overlap 2 --quant e3m0 --exchange reduce-scatter --comm-progress thread"; do
    if ! timeout 600 nice -n 5 mpirun --oversubscribe -np 2 -x OMP_TOOL_LIBRARIES -x OMP_NUM_THREADS -x TSAN_OPTIONS \
            -x OPENBLAS_NUM_THREADS "$BUILD/diloco" train $SMALL --out "run-${algo// /}" --algo $algo >out.txt 2>err.txt ||
       grep -q "WARNING: ThreadSanitizer" err.txt; then
        echo "FAIL: TSan, mpirun -np 2, $algo:"; grep -m20 -A12 "WARNING: ThreadSanitizer\|error" err.txt | sed 's/^/    /'
        exit 1
    fi
    echo "ok: TSan, mpirun -np 2, $algo"
done
