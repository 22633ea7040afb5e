#!/usr/bin/env bash
# Compute utilisation under an emulated slow across-worker link (a benchmark, not a test):
# blocking DiLoCo against Streaming DiLoCo with tau = 1 and tau = 5, 2 workers on 2 ranks.
# Usage: tools/bench_overlap.sh [GBPS] [LATENCY_MS] [OUTDIR]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
GBPS=${1:-0.05}
LAT=${2:-20}
OUT=${3:-$ROOT/runs/overlap}
BIN="$ROOT/build/diloco"
DATA="$ROOT/runs/data-kjv"
[ -f "$DATA/meta.json" ] || { bible -f "Gen1:1-Rev22:21" > "$ROOT/runs/kjv.txt"; "$BIN" prepare --input "$ROOT/runs/kjv.txt" --out "$DATA"; }
export OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
COMMON="--n-layer 4 --n-head 4 --d-model 128 --seq-len 128 --batch 4 --steps 200 --warmup 20 --lr 2e-3
        --eval-batches 2 --log-every 0 --workers 2 --inner-steps 20 --outer-gbps $GBPS --outer-latency-ms $LAT"
run() {
    local name=$1; shift
    mpirun --oversubscribe -np 2 "$BIN" train --data "$DATA" --out "$OUT/$name" $COMMON "$@" 2>/dev/null
}
run diloco --algo diloco
run stream-tau1 --algo streaming --fragments 2 --overlap 1
run stream-tau5 --algo streaming --fragments 2 --overlap 5
run stream-tau5-e3m0 --algo streaming --fragments 2 --overlap 5 --quant e3m0
echo "emulated link: $GBPS Gbit/s, $LAT ms per message; 0.84M params (3.4 MB in fp32); H=20, M=2, 200 steps"
python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
print("| run | compute utilisation | wall s | final val loss | across-worker MB | peak bytes in one step |")
print("|---|---|---|---|---|---|")
for name in ("diloco", "stream-tau1", "stream-tau5", "stream-tau5-e3m0"):
    s = [json.loads(l) for l in open(os.path.join(out, name, "metrics.jsonl")) if "summary" in l][0]
    print(f"| {name} | {s['compute_util']:.3f} | {s['wall_s']:.1f} | {s['final_val_loss']:.4f} | "
          f"{s['bytes_outer_total'] / 1e6:.1f} | {s['peak_bytes_step']} |")
PY
