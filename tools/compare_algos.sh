#!/usr/bin/env bash
# DP against DiLoCo with M = 1, 2, 4 replicas at equal tokens, on 4 ranks, on the prepared KJV.
# Prints a markdown table (docs/results.md). Usage: tools/compare_algos.sh [STEPS] [H] [OUTDIR]
# RUNS="dp diloco-m4" picks a subset; also diloco-m4-eager, streaming-pP-FORMAT (M=4, tau=1) and
# streaming-eager-pP-FORMAT (M=4, eager). BIN= another diloco program (default build/diloco).
# LINK="--outer-gbps 1 --outer-latency-ms 10" emulates a slow across-worker link.
# LRS="1.25e-3 2.5e-3 5e-3 1e-2 1.4e-2 2e-2" and OUTER_LRS="0.2 0.4 0.6 0.8 1.0" grid the inner
# learning rate of every method and the outer one of the DiLoCo family: each method gets its own
# best, marked in the table (the defaults, one value each, run the table of docs/results.md).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
STEPS=${1:-600}
H=${2:-50}
OUT=${3:-$ROOT/runs/compare}
BIN=${BIN:-$ROOT/build/diloco}
DATA="$ROOT/runs/data-kjv"
[ -f "$DATA/meta.json" ] || { bible -f "Gen1:1-Rev22:21" > "$ROOT/runs/kjv.txt"; "$BIN" prepare --input "$ROOT/runs/kjv.txt" --out "$DATA"; }
export OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
LRS=${LRS:-2e-3}
OUTER_LRS=${OUTER_LRS:-0.7}
MODEL="--n-layer 4 --n-head 4 --d-model 128 --seq-len 128 --batch 4 --steps $STEPS --warmup 50 --eval-every 100 --eval-batches 8 --log-every 100"
NAMES=()
run() {  # run NAME ARGS...: once per inner lr, and per outer lr unless data-parallel
    local name=$1; shift
    local outer=$OUTER_LRS
    [ "$name" = dp ] && outer=none
    for lr in $LRS; do
        for olr in $outer; do
            local dir=$name
            [ "$(echo $LRS | wc -w)" -gt 1 ] && dir="$dir-lr$lr"
            [ "$olr" != none ] && [ "$(echo $OUTER_LRS | wc -w)" -gt 1 ] && dir="$dir-olr$olr"
            echo "== $dir" >&2
            local rates=(--lr "$lr")
            [ "$olr" != none ] && rates+=(--outer-lr "$olr")
            mpirun --oversubscribe -np 4 "$BIN" train --data "$DATA" --out "$OUT/$dir" $MODEL "${rates[@]}" ${LINK:-} "$@"
            NAMES+=("$dir")
        done
    done
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
python3 - "$OUT" "${RUNS:-dp diloco-m1 diloco-m2 diloco-m4}" "${NAMES[@]}" <<'PY'
import json, sys, os
out, methods = sys.argv[1], sys.argv[2].split()
summaries = {n: [json.loads(l) for l in open(os.path.join(out, n, "metrics.jsonl")) if "summary" in l][0]
             for n in sys.argv[3:]}
best = {}  # each method's best run over its grid, in bold
for m in methods:
    mine = [n for n in summaries if n == m or n.startswith(m + "-lr") or n.startswith(m + "-olr")]
    if len(mine) > 1:
        best[min(mine, key=lambda n: summaries[n]["final_val_loss"])] = True
print("| run | replicas M | ranks per replica | H | final val loss | across-worker bytes (all ranks) | DP-equivalent bytes | reduction | peak bytes in a step (one rank) | compute utilisation |")
print("|---|---|---|---|---|---|---|---|---|---|")
for name, s in summaries.items():
    b, d = s["bytes_outer_total"], s["bytes_outer_dp_equivalent"]
    red = f"{d / b:.0f}x" if b > 0 and d > 0 else "–"
    print(f"| {name} | {s['workers']} | {s['ranks'] // s['workers']} | {s['inner_steps'] if s['algo'] != 'dp' else 1} "
          f"| {'**%.4f**' % s['final_val_loss'] if name in best else '%.4f' % s['final_val_loss']} | {b / 1e6:.1f} MB | {d / 1e6:.1f} MB | {red} | "
          f"{s.get('peak_bytes_step', 0) / 1e6:.2f} MB | {s.get('compute_util', 0):.3f} |")
PY
