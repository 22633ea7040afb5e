#!/usr/bin/env bash
# README command 1: install what is missing, build, prepare the King James Bible as byte tokens,
# train a small GPT on it with progress output, then print the validation loss and a sample.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
bash "$ROOT/tools/setup.sh"
bash "$ROOT/tools/build.sh"
BIN="$ROOT/build/diloco"
RUNS="$ROOT/runs"
mkdir -p "$RUNS"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}

if [ ! -f "$RUNS/data-kjv/meta.json" ]; then
    bible -f "Gen1:1-Rev22:21" > "$RUNS/kjv.txt"
    "$BIN" prepare --input "$RUNS/kjv.txt" --out "$RUNS/data-kjv"
fi

STEPS=${STEPS:-800}
"$BIN" train --data "$RUNS/data-kjv" --out "$RUNS/demo" \
    --n-layer 4 --n-head 4 --d-model 128 --seq-len 128 --batch 16 \
    --steps "$STEPS" --warmup 50 --lr 2e-3 --eval-every 200 --eval-batches 16 --ckpt-every 200

echo
echo "== result"
grep final_val_loss "$RUNS/demo/metrics.jsonl"
CKPT=$(ls "$RUNS"/demo/ckpt/step_*.ckpt | sort | tail -1)
echo "== sample from $CKPT"
"$BIN" generate --ckpt "$CKPT" --prompt "Ge1:1 In the beginning" --tokens 300 --temperature 0.7
