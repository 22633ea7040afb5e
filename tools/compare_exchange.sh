#!/usr/bin/env bash
# Streaming DiLoCo's exchange at equal tokens on the prepared KJV: fp32 against the compressed
# formats at several --quant-block sizes, by all-gather and by reduce-scatter, over several seeds.
# Prints a markdown table: final validation loss (mean and range over the seeds), bits per value,
# outer bytes per rank. Usage: tools/compare_exchange.sh [STEPS] [H] [OUTDIR]
# RUNS="fp32 e3m0-b32-ag e3m0-b128-rs ..." picks the runs (FORMAT-bBLOCK-ag|rs); SEEDS="1 2" the
# seeds; M (default 4) the replicas, one rank each. A run whose summary exists is not run again.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
STEPS=${1:-600}
H=${2:-10}
OUT=${3:-$ROOT/runs/compare-exchange}
BIN=${BIN:-$ROOT/build/diloco}
M=${M:-4}
SEEDS=${SEEDS:-1 2}
RUNS=${RUNS:-fp32 e3m0-b32-ag e3m0-b128-ag e3m0-b256-ag e3m0-b1024-ag e3m0-b32-rs e3m0-b128-rs e3m0-b256-rs e3m0-b1024-rs}
DATA="$ROOT/runs/data-kjv"
[ -f "$DATA/meta.json" ] || { bible -f "Gen1:1-Rev22:21" > "$ROOT/runs/kjv.txt"; "$BIN" prepare --input "$ROOT/runs/kjv.txt" --out "$DATA"; }
export OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
MODEL="--n-layer 3 --n-head 4 --d-model 64 --seq-len 64 --batch 8 --steps $STEPS --warmup 50 --lr 2e-3 --eval-every 0 --eval-batches 16 --log-every 100"
STREAM="--algo streaming --workers $M --inner-steps $H --fragments 2 --overlap 1 --alpha 0.5"
for name in $RUNS; do
    case $name in
        fp32) flags="--quant fp32" ;;
        *-b*-ag|*-b*-rs) f=${name%%-b*}; rest=${name#*-b}; block=${rest%-*}; ex=${rest##*-}
                         flags="--quant $f --quant-block $block --exchange $([ "$ex" = ag ] && echo allgather || echo reduce-scatter)" ;;
        *) echo "unknown run $name" >&2; exit 2 ;;
    esac
    for seed in $SEEDS; do
        dir="$OUT/$name-s$seed"
        if [ -f "$dir/metrics.jsonl" ] && grep -q '"summary"' "$dir/metrics.jsonl"; then continue; fi
        rm -rf "$dir"
        echo "== $name seed $seed" >&2
        mpirun --oversubscribe -np "$M" "$BIN" train --data "$DATA" --out "$dir" $MODEL $STREAM $flags --seed "$seed" >/dev/null
    done
done
python3 - "$OUT" "$STEPS" "$RUNS" "$SEEDS" <<'PY'
import json, os, sys
out, steps, runs, seeds = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(), sys.argv[4].split()


def summary(name, seed):
    with open(os.path.join(out, f"{name}-s{seed}", "metrics.jsonl")) as f:
        return [json.loads(l) for l in f if '"summary"' in l][0]


def bits(name):
    if name == "fp32":
        return 32.0
    fmt, block = name.split("-")[0], int(name.split("-b")[1].split("-")[0])
    return {"int8": 8, "e2m1": 4, "e3m0": 4}[fmt] + 32 / block


# the difference to fp32 is taken seed by seed (same initialisation and data order), which removes
# most of the spread between seeds
ref = {s: summary("fp32", s)["final_val_loss"] for s in seeds} if "fp32" in runs else None
print("| run | bits per value | outer bytes per rank: all, per inner step, peak step | final val loss, mean (min–max) "
      "| minus fp32, same seed: mean (min–max) |")
print("|---|---|---|---|---|")
for name in runs:
    sums = [summary(name, s) for s in seeds]
    losses = [s["final_val_loss"] for s in sums]
    # what the outer exchanges sent per rank, less the per-step losses sent to rank 0
    per_rank = (sums[0]["bytes_outer_total"] - 8 * steps * sums[0]["ranks"]) / sums[0]["ranks"]
    cell = "–"
    if ref and name != "fp32":
        d = [l - ref[s] for l, s in zip(losses, seeds)]
        cell = f"{sum(d) / len(d):+.4f} ({min(d):+.4f} … {max(d):+.4f})"
    print(f"| {name} | {bits(name):.4g} | {per_rank / 1e6:.2f} MB, {per_rank / steps / 1e3:.1f} kB, "
          f"{sums[0]['peak_bytes_step'] / 1e3:.1f} kB | {sum(losses) / len(losses):.4f} "
          f"({min(losses):.4f}–{max(losses):.4f}) | {cell} |")
print(f"\nseeds {' '.join(seeds)}; {steps} steps")
PY
