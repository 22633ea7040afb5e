#!/usr/bin/env bash
# DiPaCo with 2 x 2 = 4 paths against two dense models, at (about) equal training compute, on the
# King James Bible by chapter and the GCIDE dictionary by entry (tools/dipaco_corpus.py), routed
# by `diloco route --levels 2 --modules 2`:
#   dipaco     4 paths of N params (n_layer blocks each), M = 4 workers, STEPS inner steps
#   dense-N    DiLoCo, M = 4, the path's size N, STEPS steps (the same tokens and FLOPs)
#   dense-all  DiLoCo, M = 4, 2 x n_layer blocks: exactly the parameters of all modules together,
#              STEPS / 2 steps (about twice the FLOPs per token, so about the same compute)
# Every model is scored on the same rows: each held-out document by the model of its path
# (`eval --routed`; the dense models score every path's documents). Prints the markdown table of
# docs/results.md. Usage: tools/compare_dipaco.sh [STEPS] [OUTDIR]; SEEDS="1 2", BIN=.
# HIDDEN=1 also routes by the mean hidden state of the first seed's dense-N model (`route --ckpt`)
# into OUTDIR/data-hidden, trains DiPaCo on that routing, and scores all three on its rows.
# SHARE=1 also trains DiPaCo with --module-weights share (the data-weighted module mean) on each
# routing.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
STEPS=${1:-2400}
OUT=${2:-$ROOT/runs/compare-dipaco}
BIN=${BIN:-$ROOT/build/diloco}
SEEDS=${SEEDS:-1 2}
PY=${PY:-python3}
H=30
DATA="$OUT/data"
mkdir -p "$OUT"
if [ ! -f "$DATA/routes.idx" ]; then
    "$PY" "$ROOT/tools/dipaco_corpus.py" "$OUT/corpus" --stride 36
    "$BIN" prepare --input "$OUT/corpus/kjv_chapters.txt" "$OUT/corpus/gcide_entries.txt" --out "$DATA" \
        --documents paragraphs
    "$BIN" route --data "$DATA" --levels 2 --modules 2 --prefix 64 --seed 1337 2> "$OUT/route.txt"
fi
cat "$OUT/route.txt" >&2
export OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
COMMON="--n-head 4 --d-model 64 --seq-len 64 --batch 2 --warmup 100 --lr 2.5e-3 --outer-lr 0.7
        --outer-momentum 0.9 --inner-steps $H --workers 4 --log-every 0 --eval-batches 8"

run() {  # run NAME SEED [DATA]
    local name=$1 seed=$2 out="$OUT/$1-s$2" DATA=${3:-$DATA}
    [ -f "$out/metrics.jsonl" ] && grep -q summary "$out/metrics.jsonl" && return 0
    echo "== $name seed $seed" >&2
    local common=(train --data "$DATA" --out "$out" $COMMON --seed "$seed")
    case $name in
        dipaco|dipaco-hidden) mpirun --oversubscribe -np 4 "$BIN" "${common[@]}" --n-layer 4 --steps "$STEPS" --algo dipaco \
                    --levels 2 --modules 2 --module-weights uniform 2> "$out.log" ;;
        dipaco-share|dipaco-hidden-share) mpirun --oversubscribe -np 4 "$BIN" "${common[@]}" --n-layer 4 \
                    --steps "$STEPS" --algo dipaco --levels 2 --modules 2 --module-weights share 2> "$out.log" ;;
        dense-N) mpirun --oversubscribe -np 4 "$BIN" "${common[@]}" --n-layer 4 --steps "$STEPS" --algo diloco 2> "$out.log" ;;
        dense-all) mpirun --oversubscribe -np 4 "$BIN" "${common[@]}" --n-layer 8 --steps $((STEPS / 2)) --algo diloco \
                       2> "$out.log" ;;
    esac
    if [ "$name" != dense-N ] && [ "$name" != dense-all ]; then
        "$BIN" eval --routed --modules "$out/modules" --data "$DATA" --seq-len 64 --batch 8 > "$out/routed.txt"
    else
        "$BIN" eval --routed --run "$out" --data "$DATA" --seq-len 64 --batch 8 > "$out/routed.txt"
    fi
}

MAIN="dipaco dense-N dense-all"
[ "${SHARE:-0}" = 1 ] && MAIN="$MAIN dipaco-share"
for seed in $SEEDS; do
    for name in $MAIN; do run "$name" "$seed"; done
done
if [ "${HIDDEN:-0}" = 1 ]; then
    first=${SEEDS%% *}
    DH="$OUT/data-hidden"
    if [ ! -f "$DH/routes.idx" ]; then
        mkdir -p "$DH" && cp "$DATA"/meta.json "$DATA"/*.bin "$DATA"/*.docs "$DH"/
        "$BIN" route --data "$DH" --levels 2 --modules 2 --prefix 64 --seed 1337 \
            --ckpt "$(ls "$OUT/dense-N-s$first"/ckpt/step_*.ckpt | tail -1)" 2> "$OUT/route-hidden.txt"
    fi
    cat "$OUT/route-hidden.txt" >&2
    for seed in $SEEDS; do
        run dipaco-hidden "$seed" "$DH"
        [ "${SHARE:-0}" = 1 ] && run dipaco-hidden-share "$seed" "$DH"
        for name in dense-N dense-all; do
            [ -f "$OUT/$name-s$seed/routed-hidden.txt" ] ||
                "$BIN" eval --routed --run "$OUT/$name-s$seed" --data "$DH" --seq-len 64 --batch 8 \
                    > "$OUT/$name-s$seed/routed-hidden.txt"
        done
    done
fi
"$PY" - "$OUT" ${HIDDEN:-0} ${SHARE:-0} $SEEDS <<'PY'
import json, re, sys
out, hidden, share, seeds = sys.argv[1], sys.argv[2] == "1", sys.argv[3] == "1", sys.argv[4:]
def summary(d):
    return [json.loads(l) for l in open(f"{d}/metrics.jsonl") if "summary" in l][0]
def routed(d, f="routed.txt"):
    t = open(f"{d}/{f}").read()
    return float(re.search(r"^val_loss (\S+)", t, re.M).group(1)), [float(x) for x in re.findall(r"^path \d+ val_loss (\S+)", t, re.M)]
def table(rows, f):
  print("| model | params trained | params per inference | steps x tokens/step | " +
      " | ".join(f"val loss seed {s}" for s in seeds) + " | mean | per path (seed " + seeds[0] + ") | bytes sent across workers, all ranks |")
  print("|---|---|---|---|" + "---|" * len(seeds) + "---|---|---|")
  for name in rows:
    runs = [f"{out}/{name}-s{s}" for s in seeds]
    sm = summary(runs[0])
    this = "routed.txt" if name.startswith("dipaco") else f
    losses = [routed(r, this)[0] for r in runs]
    per = routed(runs[0], this)[1]
    params = sm["params"]
    trained = params
    if name.startswith("dipaco"):  # the path's, and all modules': shared + L*K level modules
        head = open(f"{runs[0]}.log").read()
        m = re.search(r"([\d.]+)M params in all", head)
        trained = float(m.group(1)) * 1e6
    print(f"| {name} | {trained / 1e6:.3f}M | {params / 1e6:.3f}M | {sm['step']} x {sm['tokens'] / sm['step']:.0f} | " +
          " | ".join(f"{l:.4f}" for l in losses) + f" | {sum(losses) / len(losses):.4f} | " +
          " / ".join(f"{p:.3f}" for p in per) + f" | {sm['bytes_outer_total'] / 1e6:.1f} MB |")
extra = ("dipaco-share",) if share else ()
table(("dipaco",) + extra + ("dense-N", "dense-all"), "routed.txt")
if hidden:
  print()
  table(("dipaco-hidden",) + tuple(e.replace("dipaco", "dipaco-hidden") for e in extra) + ("dense-N", "dense-all"),
        "routed-hidden.txt")
PY
