#!/usr/bin/env bash
# README command 1: install what is missing, build, prepare the King James Bible as byte tokens,
# then train the same small GPT three times on 4 MPI ranks with the same tokens:
#   data-parallel (gradients averaged every step, its learning rate tuned on its own grid);
#   DiLoCo with 4 workers syncing every H = 30 inner steps (inner and outer rates tuned on its grid);
#   Streaming DiLoCo, 4 workers, 3 fragments, each outer gradient sent in 4 bits (e3m0).
# The recipe is the fair sweep's at 100k parameters (sweeps/fair-n100k.toml, docs/scaling.md):
# T = 64, global batch 8 sequences, D = 20 N tokens, 131 outer rounds, AdamW beta2 0.99, cosine
# to 5%. Prints the validation losses, the bytes each run sent across workers and the ratios, a
# sample, and draws the curves and bytes in runs/demo.png (tools/plot.py).
#   STEPS=... (default 3930) shortens the run; the rates below stay.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
bash "$ROOT/tools/setup.sh"
bash "$ROOT/tools/build.sh"
BIN="$ROOT/build/diloco"
RUNS="$ROOT/runs"
mkdir -p "$RUNS"
# 4 ranks share the machine's cores: one OpenMP thread each
export OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# a rank waiting in a collective yields its core to the rank it waits for
export OMPI_MCA_mpi_yield_when_idle=1

if [ ! -f "$RUNS/data-kjv/meta.json" ]; then
    bible -f "Gen1:1-Rev22:21" > "$RUNS/kjv.txt"
    "$BIN" prepare --input "$RUNS/kjv.txt" --out "$RUNS/data-kjv"
fi

STEPS=${STEPS:-3930}
H=30
# Learning rates: each method's best on its own grid at this size (results/sweep-fair/results-n100k.csv)
DP_LR=0.014
DILOCO_LR=${DILOCO_LR:-0.0025}
OUTER_LR=${OUTER_LR:-1.0}
EVERY=$(( STEPS / 10 > 0 ? STEPS / 10 : 1 ))
MODEL="--n-layer 3 --n-head 4 --d-model 48 --seq-len 64 --batch 2 --steps $STEPS
       --warmup $(( STEPS / 20 > 0 ? STEPS / 20 : 1 )) --min-lr-frac 0.05 --beta2 0.99
       --eval-every $EVERY --eval-batches 64 --log-every $EVERY"
train() {  # name, then the method's options
    local name=$1; shift
    mpirun --oversubscribe -np 4 "$BIN" train --data "$RUNS/data-kjv" --out "$RUNS/$name" $MODEL "$@"
}
START=$(date +%s)
echo "== data-parallel: 4 ranks, gradients averaged every step, lr $DP_LR"
train demo-dp --algo dp --workers 4 --lr "$DP_LR"
echo
echo "== DiLoCo: 4 workers, H=$H, inner lr $DILOCO_LR, outer Nesterov lr $OUTER_LR momentum 0.9"
train demo-diloco --algo diloco --workers 4 --inner-steps $H --lr "$DILOCO_LR" --outer-lr "$OUTER_LR"
echo
echo "== Streaming DiLoCo: 4 workers, 3 fragments, H=$H, overlap 1 step, 4-bit outer gradients (e3m0)"
train demo-streaming --algo streaming --workers 4 --inner-steps $H --fragments 3 --overlap 1 --quant e3m0 \
    --lr "$DILOCO_LR" --outer-lr "$OUTER_LR"

echo
echo "== result ($STEPS steps x 8 sequences x 64 bytes each, $(( $(date +%s) - START )) s of training)"
python3 - "$RUNS" <<'PY'
import json, os, sys
runs = sys.argv[1]
names = {"demo-dp": "data-parallel", "demo-diloco": "DiLoCo M=4", "demo-streaming": "Streaming, 4-bit"}
s = {n: [json.loads(l) for l in open(os.path.join(runs, n, "metrics.jsonl")) if '"summary"' in l][0] for n in names}
dp = s["demo-dp"]
print(f"{'':18s} {'val loss':>9s} {'vs DP':>7s} {'bytes across workers':>21s} {'DP / this':>10s}")
for n, label in names.items():
    r = s[n]
    print(f"{label:18s} {r['final_val_loss']:9.4f} {100 * (r['final_val_loss'] / dp['final_val_loss'] - 1):+6.1f}% "
          f"{r['bytes_outer_total'] / 1e6:17.2f} MB {dp['bytes_outer_total'] / r['bytes_outer_total']:9.0f}x")
PY
"$ROOT/.venv/bin/python" "$ROOT/tools/plot.py" "$RUNS/demo-dp" "$RUNS/demo-diloco" "$RUNS/demo-streaming" \
    --labels "data-parallel,DiLoCo M=4,Streaming 4-bit" --x tokens \
    --title "4 ranks, equal tokens: data-parallel, DiLoCo (M=4, H=$H), Streaming DiLoCo (4-bit)" --out "$RUNS/demo.png"
echo
echo "== sample from the DiLoCo model (its final checkpoint)"
"$BIN" generate --run "$RUNS/demo-diloco" --prompt "Ge1:1 In the beginning" --tokens 200 --temperature 0.7
