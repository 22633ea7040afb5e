#!/usr/bin/env bash
# A short distributed run of the sanitized program (build-san: ASan + UBSan): 2 ranks as 2
# workers, DiLoCo and then Streaming DiLoCo with an overlapped, e3m0-quantised exchange, both with
# --verify-sync. Passes when both runs exit 0 with no sanitizer report.
# usage: mpi_smoke.sh path/to/diloco
set -u
BIN=$(realpath "$1")
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=$(mktemp -d /tmp/diloco_san_mpi.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
# Open MPI's own allocations live until exit (lsan.supp says which); everything else is ours
# (full unwinding reaches libmpi through its plugins, which are unloaded by exit)
export LSAN_OPTIONS="suppressions=$HERE/lsan.supp:print_suppressions=0" ASAN_OPTIONS="fast_unwind_on_malloc=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
python3 -c "
import random; random.seed(3)
w = 'the cat sat on a mat and dog ran far away home'.split()
print(' '.join(random.choice(w) for _ in range(6000)))" > corpus.txt
"$BIN" prepare --input corpus.txt --out data >/dev/null 2>&1 || { echo "FAIL: prepare"; exit 1; }
SMALL="--data data --n-layer 2 --n-head 2 --d-model 16 --seq-len 16 --batch 2 --steps 8 --log-every 0 --eval-batches 1
       --workers 2 --inner-steps 4 --verify-sync"
failures=0
for algo in "diloco" "streaming --fragments 2 --overlap 1 --quant e3m0"; do
    name=${algo%% *}
    timeout 300 mpirun --oversubscribe -np 2 "$BIN" train $SMALL --out "run-$name" --algo $algo >out.txt 2>err.txt
    rc=$?
    steps=$(grep -c '"loss"' "run-$name/metrics.jsonl" 2>/dev/null)
    if [ $rc -eq 0 ] && [ "$steps" = 8 ] && ! grep -qE 'ERROR: (Address|Leak)Sanitizer|runtime error:' err.txt; then
        echo "ok: sanitized mpirun -np 2, $algo: 8 steps, $(grep -o 'final val_loss [0-9.]*' err.txt)"
    else
        echo "FAIL: sanitized mpirun -np 2, $algo (exit $rc):"; grep -m5 -E 'ERROR|runtime error|SUMMARY|error:' err.txt | sed 's/^/    /'
        failures=$((failures + 1))
    fi
done
[ $failures -eq 0 ]
