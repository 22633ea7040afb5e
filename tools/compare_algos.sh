#!/usr/bin/env bash
# DP against DiLoCo with M = 1, 2, 4 replicas at equal tokens, on 4 ranks, on the prepared KJV.
# Prints a markdown table (docs/results.md). Usage: tools/compare_algos.sh [STEPS] [H] [OUTDIR]
# RUNS="dp diloco-m4" picks a subset; also diloco-m4-eager, streaming-pP-FORMAT (M=4, tau=1) and
# streaming-eager-pP-FORMAT (M=4, eager). BIN= another diloco program (default build/diloco).
# LINK="--outer-gbps 1 --outer-latency-ms 10" emulates a slow across-worker link.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
STEPS=${1:-600}
H=${2:-50}
OUT=${3:-$ROOT/runs/compare}
BIN=${BIN:-$ROOT/build/diloco}
DATA="$ROOT/runs/data-kjv"
[ -f "$DATA/meta.json" ] || { bible -f "Gen1:1-Rev22:21" > "$ROOT/runs/kjv.txt"; "$BIN" prepare --input "$ROOT/runs/kjv.txt" --out "$DATA"; }
export OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
MODEL="--n-layer 4 --n-head 4 --d-model 128 --seq-len 128 --batch 4 --steps $STEPS --warmup 50 --lr 2e-3 --eval-every 100 --eval-batches 8 --log-every 100"
run() {  # run NAME ARGS...
    local name=$1; shift
    echo "== $name" >&2
    mpirun --oversubscribe -np 4 "$BIN" train --data "$DATA" --out "$OUT/$name" $MODEL ${LINK:-} "$@"
}
for name in ${RUNS:-dp diloco-m1 diloco-m2 diloco-m4}; do
    case $name in
        dp) run dp --algo dp --workers 4 ;;
        diloco-m4-eager) run "$name" --algo diloco --workers 4 --inner-steps "$H" --eager ;;
        diloco-m*) run "$name" --algo diloco --workers "${name#diloco-m}" --inner-steps "$H" ;;
        streaming-eager-p*) p=${name#streaming-eager-p}; run "$name" --algo streaming --workers 4 --inner-steps "$H" \
                          --fragments "${p%%-*}" --quant "${p#*-}" --eager ;;
        streaming-p*) p=${name#streaming-p}; run "$name" --algo streaming --workers 4 --inner-steps "$H" \
                          --fragments "${p%%-*}" --quant "${p#*-}" --overlap 1 ;;
        *) echo "unknown run $name" >&2; exit 2 ;;
    esac
done
python3 - "$OUT" ${RUNS:-dp diloco-m1 diloco-m2 diloco-m4} <<'PY'
import json, sys, os
out = sys.argv[1]
print("| run | replicas M | ranks per replica | H | final val loss | across-worker bytes (all ranks) | DP-equivalent bytes | reduction | peak bytes in a step (one rank) | compute utilisation |")
print("|---|---|---|---|---|---|---|---|---|---|")
for name in sys.argv[2:]:
    s = [json.loads(l) for l in open(os.path.join(out, name, "metrics.jsonl")) if "summary" in l][0]
    b, d = s["bytes_outer_total"], s["bytes_outer_dp_equivalent"]
    red = f"{d / b:.0f}x" if b > 0 and d > 0 else "–"
    print(f"| {name} | {s['workers']} | {s['ranks'] // s['workers']} | {s['inner_steps'] if s['algo'] != 'dp' else 1} "
          f"| {s['final_val_loss']:.4f} | {b / 1e6:.1f} MB | {d / 1e6:.1f} MB | {red} | "
          f"{s.get('peak_bytes_step', 0) / 1e6:.2f} MB | {s.get('compute_util', 0):.3f} |")
PY
