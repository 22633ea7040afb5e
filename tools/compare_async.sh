#!/usr/bin/env bash
# Synchronous DiLoCo against asynchronous Local-SGD (naive Nesterov, delayed Nesterov, delayed
# Nesterov + dynamic local updates) at equal tokens, M = 4 workers of speeds 1,1,0.5,0.25, on the
# virtual clock (a speed-1 inner step = 1 virtual second), over 2 seeds, on the prepared KJV.
# Prints the markdown tables of docs/results.md. Usage: tools/compare_async.sh [STEPS] [H] [OUTDIR]
# SEEDS="1 2" and RUNS="sync naive delayed dylu" pick subsets; BIN= another diloco program.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
STEPS=${1:-240}
H=${2:-20}
OUT=${3:-$ROOT/runs/compare-async}
BIN=${BIN:-$ROOT/build/diloco}
SPEEDS=1,1,0.5,0.25
DATA="$ROOT/runs/data-kjv"
[ -f "$DATA/meta.json" ] || { bible -f "Gen1:1-Rev22:21" > "$ROOT/runs/kjv.txt"; "$BIN" prepare --input "$ROOT/runs/kjv.txt" --out "$DATA"; }
export OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
MODEL="--n-layer 4 --n-head 4 --d-model 128 --seq-len 128 --batch 4 --steps $STEPS --warmup 20 --lr 2e-3
       --eval-every $((STEPS / 6)) --eval-batches 8 --log-every 0 --inner-steps $H --workers 4"
ASYNC="--algo async --virtual-step-s 1 --worker-speeds $SPEEDS"
for seed in ${SEEDS:-1 2}; do
    for name in ${RUNS:-sync naive delayed dylu}; do
        out="$OUT/$name-s$seed"
        [ -f "$out/metrics.jsonl" ] && grep -q summary "$out/metrics.jsonl" && continue
        echo "== $name seed $seed" >&2
        case $name in
            sync) mpirun --oversubscribe -np 4 "$BIN" train --data "$DATA" --out "$out" $MODEL --seed "$seed" --algo diloco ;;
            naive) mpirun --oversubscribe -np 5 "$BIN" train --data "$DATA" --out "$out" $MODEL --seed "$seed" $ASYNC ;;
            delayed) mpirun --oversubscribe -np 5 "$BIN" train --data "$DATA" --out "$out" $MODEL --seed "$seed" $ASYNC \
                         --outer-opt delayed-nesterov --delay-buffer 4 ;;
            dylu) mpirun --oversubscribe -np 5 "$BIN" train --data "$DATA" --out "$out" $MODEL --seed "$seed" $ASYNC \
                      --outer-opt delayed-nesterov --delay-buffer 4 --dylu ;;
            *) echo "unknown run $name" >&2; exit 2 ;;
        esac
    done
done
python3 "$ROOT/tools/compare_async.py" "$OUT" "$SPEEDS" "$H" ${SEEDS:-1 2}
