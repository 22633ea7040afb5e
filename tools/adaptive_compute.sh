#!/usr/bin/env bash
# The DiLoCo paper's adaptive-compute experiment at small scale (docs/results.md): the number of
# workers changes during training, 4 -> 2 -> 4, by stopping and resuming on another -np/--workers
# (elastic restart), against constant M = 4 and M = 2 runs of the same total tokens.
#
#   tools/adaptive_compute.sh DATA_DIR OUT_DIR [SEEDS...]     (default seed 0; P=420 steps a phase, a multiple of H)
#
# Every run: the demo model (3 layers, d_model 48, T 64, 2 sequences per rank), H = 30, inner lr
# 2.5e-3, outer Nesterov 1.0 / 0.9, validation on the same 512 rows. Prints one line per run:
# seed, schedule, tokens, final validation loss.
set -euo pipefail
DATA=$1 OUT=$2
shift 2
SEEDS=${*:-0}
P=${P:-420}
BIN=${BIN:-$(cd "$(dirname "$0")/.." && pwd)/build/diloco}
export OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mkdir -p "$OUT"

common() {  # steps
    echo "--data $DATA --n-layer 3 --n-head 4 --d-model 48 --seq-len 64 --batch 2 --steps $1
          --warmup $(($1 / 20)) --min-lr-frac 0.05 --beta2 0.99 --algo diloco --inner-steps 30
          --lr 0.0025 --outer-lr 1.0 --outer-momentum 0.9 --log-every 0 --eval-every 0"
}
# M workers of one rank; the validation rows are eval-batches x M x 2: 512 for every M
train() {  # M, out, steps, seed, more options
    local M=$1 out=$2 steps=$3 seed=$4
    shift 4
    # shellcheck disable=SC2046
    mpirun --oversubscribe -np "$M" "$BIN" train $(common "$steps") --workers "$M" --eval-batches $((256 / M)) \
        --seed "$seed" --out "$out" "$@" 2>> "$out.log"
}
final() {  # rundir: tokens and final_val_loss of the summary line
    python3 -c "
import json, sys
s = [json.loads(l) for l in open(sys.argv[1] + '/metrics.jsonl') if 'summary' in l][0]
print(f\"{s['tokens']:.0f} {s['final_val_loss']:.4f}\")" "$1"
}

for seed in $SEEDS; do
    d=$OUT/seed$seed
    mkdir -p "$d"
    rm -rf "$d"/adaptive* "$d"/const4* "$d"/const2*
    # 4 -> 2 -> 4: P steps each, 3P steps in all, (4 + 2 + 4) P rank-steps
    train 4 "$d/adaptive" $((3 * P)) "$seed" --stop-at "$P"
    train 2 "$d/adaptive" $((3 * P)) "$seed" --resume --stop-at $((2 * P))
    train 4 "$d/adaptive" $((3 * P)) "$seed" --resume
    echo "$seed 4-2-4 $(final "$d/adaptive")"
    train 4 "$d/const4" $((10 * P / 4)) "$seed"
    echo "$seed const-4 $(final "$d/const4")"
    train 2 "$d/const2" $((10 * P / 2)) "$seed"
    echo "$seed const-2 $(final "$d/const2")"
done
