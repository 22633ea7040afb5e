#!/usr/bin/env bash
# Synchronous DiLoCo against asynchronous Local-SGD (naive Nesterov, delayed Nesterov, delayed
# Nesterov + dynamic local updates) at equal tokens, M = 4 workers of speeds 1,1,0.5,0.25, on the
# virtual clock (a speed-1 inner step = 1 virtual second), on the prepared KJV.
# Each method's outer learning rate is tuned on its own grid with the first seed (lowest final
# validation loss); the other seeds then run at that method's best rate.
# Prints the markdown tables of docs/results.md. Usage: tools/compare_async.sh [STEPS] [H] [OUTDIR]
# SEEDS="1 2", RUNS="sync naive delayed dylu" pick subsets; GRID_sync="0.4 0.7 1.0" (and GRID_naive,
# GRID_delayed, GRID_dylu) replace a grid; BIN= another diloco program.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
STEPS=${1:-240}
H=${2:-20}
OUT=${3:-$ROOT/runs/compare-async}
BIN=${BIN:-$ROOT/build/diloco}
SPEEDS=1,1,0.5,0.25
SEEDS=${SEEDS:-1 2}
RUNS=${RUNS:-sync naive delayed dylu}
: "${GRID_sync:=0.2 0.4 0.7 1.0}" "${GRID_naive:=0.0125 0.025 0.05 0.1 0.2 0.4}" "${GRID_delayed:=0.15 0.3 0.5 0.7}" "${GRID_dylu:=0.15 0.3 0.5 0.7}"
DATA="$ROOT/runs/data-kjv"
[ -f "$DATA/meta.json" ] || { bible -f "Gen1:1-Rev22:21" > "$ROOT/runs/kjv.txt"; "$BIN" prepare --input "$ROOT/runs/kjv.txt" --out "$DATA"; }
export OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
MODEL="--n-layer 4 --n-head 4 --d-model 128 --seq-len 128 --batch 4 --steps $STEPS --warmup 20 --lr 2e-3
       --eval-every $((STEPS / 6)) --eval-batches 8 --log-every 0 --inner-steps $H --workers 4"
ASYNC="--algo async --virtual-step-s 1 --worker-speeds $SPEEDS"

run() {  # run NAME OUTER_LR SEED
    local name=$1 lr=$2 seed=$3 out="$OUT/$1-lr$2-s$3"
    [ -f "$out/metrics.jsonl" ] && grep -q summary "$out/metrics.jsonl" && return 0
    echo "== $name outer lr $lr seed $seed" >&2
    local common=(train --data "$DATA" --out "$out" $MODEL --seed "$seed" --outer-lr "$lr")
    case $name in
        sync) mpirun --oversubscribe -np 4 "$BIN" "${common[@]}" --algo diloco ;;
        naive) mpirun --oversubscribe -np 5 "$BIN" "${common[@]}" $ASYNC ;;
        delayed) mpirun --oversubscribe -np 5 "$BIN" "${common[@]}" $ASYNC --outer-opt delayed-nesterov --delay-buffer 4 ;;
        dylu) mpirun --oversubscribe -np 5 "$BIN" "${common[@]}" $ASYNC --outer-opt delayed-nesterov --delay-buffer 4 --dylu ;;
        *) echo "unknown run $name" >&2; exit 2 ;;
    esac
}

first=${SEEDS%% *}
for name in $RUNS; do
    grid_var=GRID_$name
    for lr in ${!grid_var}; do run "$name" "$lr" "$first"; done
done
for name in $RUNS; do
    best=$(python3 "$ROOT/tools/compare_async.py" --best "$OUT" "$name" "$first")
    for seed in $SEEDS; do run "$name" "$best" "$seed"; done
done
python3 "$ROOT/tools/compare_async.py" "$OUT" "$SPEEDS" "$H" $SEEDS
