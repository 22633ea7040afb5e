#!/usr/bin/env bash
# Self-test of tools/peer_torch.py against the diloco binary: the oracle agrees with `diloco eval`
# on the same rows, llm.c files round-trip both ways, and every throughput path runs. On the CPU;
# the CUDA checks run too when torch sees a GPU. Prints one ok/FAIL line per check.
#
# usage: tools/test_peer_torch.sh PYTHON DILOCO [WORKDIR]
#   SKIP_COMPILE=1 skips the torch.compile runs on the CPU (about a minute each on 2 cores);
#   BIG=1 adds the oracle at GPT-2-124M's shapes (fresh weights, through diloco import).
set -uo pipefail
PY=${1:?usage: $0 PYTHON DILOCO [WORKDIR]}
D=${2:?usage: $0 PYTHON DILOCO [WORKDIR]}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
PEER="$HERE/peer_torch.py"
W=${3:-$(mktemp -d /tmp/peer_torch.XXXXXX)}
mkdir -p "$W"
abspath() { if [[ $1 == */* ]]; then echo "$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"; else echo "$1"; fi; }
PY=$(abspath "$PY")
D=$(abspath "$D")
cd "$W" || exit 1
rm -rf data data2 run run0 ./*.log ./*.jsonl
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
fails=0
ok() { echo "ok   $*"; }
fail() { echo "FAIL $*"; fails=$((fails + 1)); }
# run NAME CMD...: runs CMD with its output in NAME.log; prints the log and fails NAME if it fails
run() {
    local name=$1; shift
    "$@" >"$name.log" 2>&1
    local rc=$?
    [ $rc -eq 0 ] && return 0
    sed 's/^/    /' "$name.log"; fail "$name: exit status $rc"; return 1
}
loss_of() { awk '/^(val_)?loss /{v=$2} END{print v}' "$1.log"; }
# rel_close A B TOL: |A-B| <= TOL*|B|
rel_close() { awk -v a="$1" -v b="$2" -v t="$3" 'BEGIN{d=a-b; if(d<0)d=-d; m=b<0?-b:b; exit !(a!="" && b!="" && d<=t*m)}'; }
abs_close() { awk -v a="$1" -v b="$2" -v t="$3" 'BEGIN{d=a-b; if(d<0)d=-d; exit !(a!="" && d<=t)}'; }
compare() {  # NAME OURS THEIRS TOL
    if rel_close "$2" "$3" "$4"; then ok "$1: diloco $2, torch $3"; else fail "$1: diloco $2, torch $3 (rel tol $4)"; fi
}
TINY=(--n-layer 2 --n-head 2 --d-model 64 --seq-len 64)
TOL=1e-5  # fp32 on both sides; each logit sums <= 4C = 256 products, the loss averages B*T of them
LN256=5.545177

echo "== work directory $W"
# a corpus of fixed size: 4000 val tokens, 62 chunks of 65 at T = 64
cat "$ROOT"/README.md "$ROOT"/docs/*.md "$ROOT"/README.md "$ROOT"/docs/*.md | head -c 80000 >corpus.txt
run prepare "$D" prepare --input corpus.txt --out data || exit 1
run train "$D" train --data data --out run "${TINY[@]}" --batch 4 --steps 20 --ckpt-every 20 --lr 3e-3 \
    --warmup 5 --device cpu || exit 1
CK=run/ckpt/step_00000020.ckpt
run export "$D" export --ckpt $CK --out m.bin || exit 1

echo "== oracle: the loss of an exported model on the rows diloco eval reads"
for K in 1 3 20; do  # K = 20: 80 rows, more than the 62 chunks, so the rows wrap around
    run eval_$K "$D" eval --ckpt $CK --data data --batches $K --batch 4 --seq-len 64 &&
        run peer_eval_$K "$PY" "$PEER" --device cpu --load-llmc m.bin --eval-rows-like-diloco data \
            --batches $K --batch 4 --seq-len 64 &&
        compare "trained model, $K batch(es) of 4 x 64" "$(loss_of eval_$K)" "$(loss_of peer_eval_$K)" $TOL
done
run peer_check "$PY" "$PEER" --device cpu --load-llmc m.bin --check-loss data/val_000000.bin --batch 4 --seq-len 64 &&
    compare "--check-loss on the first B*T+1 tokens of the shard" "$(loss_of eval_1)" "$(loss_of peer_check)" $TOL

# two val shards of lengths that are not multiples of T: chunks must not span them
mkdir -p data2 && cp data/meta.json data/train_000000.bin data2/
"$PY" - <<'EOF'
import numpy as np
def shard(path, tok):
    h = np.zeros(256, dtype="<i4"); h[:3] = [20240520, 1, len(tok)]
    open(path, "wb").write(h.tobytes() + tok.astype("<u2").tobytes())
tok = np.fromfile("data/val_000000.bin", dtype="<u2", offset=1024)
shard("data2/val_000000.bin", tok[:1000]); shard("data2/val_000001.bin", tok[1000:2500])
EOF
run eval_two "$D" eval --ckpt $CK --data data2 --batches 10 --batch 4 --seq-len 64 &&
    run peer_two "$PY" "$PEER" --device cpu --load-llmc m.bin --eval-rows-like-diloco data2 --batches 10 --batch 4 --seq-len 64 &&
    compare "two val shards, 40 rows" "$(loss_of eval_two)" "$(loss_of peer_two)" $TOL

echo "== fresh initialisation: loss near ln(256) = $LN256 on both sides; exact through diloco import"
run train0 "$D" train --data data --out run0 "${TINY[@]}" --batch 4 --steps 1 --ckpt-every 1 --lr 1e-12 --device cpu &&
    run eval0 "$D" eval --ckpt run0/ckpt/step_00000001.ckpt --data data --batches 4 --batch 4 --seq-len 64 &&
    if abs_close "$(loss_of eval0)" $LN256 0.05; then ok "diloco init loss $(loss_of eval0)"; else fail "diloco init loss $(loss_of eval0)"; fi
run peer_init "$PY" "$PEER" --device cpu "${TINY[@]}" --vocab 256 --eval-rows-like-diloco data --batches 4 --batch 4 &&
    if abs_close "$(loss_of peer_init)" $LN256 0.05; then ok "torch init loss $(loss_of peer_init)"; else fail "torch init loss $(loss_of peer_init)"; fi
# GPT-2's vocabulary, padded to 50304 rows in the file; wpe longer than the sequences
run peer_save "$PY" "$PEER" --device cpu "${TINY[@]}" --max-seq-len 128 --vocab 50257 --steps 0 --save-llmc g.bin &&
    run import "$D" import --in g.bin --out "$W/g.ckpt" &&
    run eval_g "$D" eval --ckpt "$W/g.ckpt" --data data --batches 2 --batch 4 --seq-len 64 &&
    run peer_g "$PY" "$PEER" --device cpu --load-llmc g.bin --eval-rows-like-diloco data --batches 2 --batch 4 --seq-len 64 &&
    compare "torch init, vocab 50257 padded, through diloco import" "$(loss_of eval_g)" "$(loss_of peer_g)" $TOL
run export_g "$D" export --ckpt "$W/g.ckpt" --out g2.bin &&
    if cmp -s g.bin g2.bin; then ok "torch-written llm.c file survives diloco import + export byte for byte"; else fail "g.bin != g2.bin"; fi
run peer_roundtrip "$PY" "$PEER" --device cpu --load-llmc m.bin --steps 0 --save-llmc m2.bin &&
    if cmp -s m.bin m2.bin; then ok "diloco export survives torch load + save byte for byte"; else fail "m.bin != m2.bin"; fi

if [ "${BIG:-0}" = 1 ]; then  # GPT-2-124M's shapes: 12 layers, C = 768, 50304 rows of wte (1.5 GB of files)
    run peer_save_big "$PY" "$PEER" --device cpu --model gpt2-small --steps 0 --save-llmc big.bin &&
        run import_big "$D" import --in big.bin --out "$W/big.ckpt" &&
        run eval_big "$D" eval --ckpt "$W/big.ckpt" --data data --batches 2 --batch 4 --seq-len 64 &&
        run peer_big "$PY" "$PEER" --device cpu --load-llmc big.bin --eval-rows-like-diloco data --batches 2 --batch 4 --seq-len 64 &&
        compare "torch init of GPT-2-124M through diloco import" "$(loss_of eval_big)" "$(loss_of peer_big)" $TOL
    rm -f big.bin big.ckpt
fi

echo "== throughput paths"
json_ok() {  # NAME FILE: the last JSON line has a positive tokens_per_s and a finite loss
    if "$PY" -c "import json,math,sys; r=json.loads(open(sys.argv[1]).read().splitlines()[-1]); \
sys.exit(0 if r['tokens_per_s'] > 0 and math.isfinite(r['final_loss']) else 1)" "$2"; then
        ok "$1: $(grep -h -m1 'tokens/s' "$1.log")"; else fail "$1: bad JSON line in $2"; fi
}
SMALL=(--model tiny --vocab 256 --batch 4 --steps 3 --warmup-steps 1)
run cpu_fp32 "$PY" "$PEER" --device cpu "${SMALL[@]}" --no-compile --json-out cpu.jsonl && json_ok cpu_fp32 cpu.jsonl
run cpu_data "$PY" "$PEER" --device cpu "${SMALL[@]}" --no-compile --data data/train_000000.bin --json-out cpu.jsonl &&
    json_ok cpu_data cpu.jsonl
run cpu_maxbatch "$PY" "$PEER" --device cpu --model tiny --vocab 256 --steps 2 --warmup-steps 1 --no-compile \
    --find-max-batch --fake-oom-above 16 --json-out cpu.jsonl &&
    if grep -q "max batch 16" cpu_maxbatch.log; then json_ok cpu_maxbatch cpu.jsonl; else fail "cpu_maxbatch: no 'max batch 16'"; fi
if [ "${SKIP_COMPILE:-0}" = 1 ]; then
    echo "skip torch.compile on the CPU (SKIP_COMPILE=1)"
else
    run cpu_compile "$PY" "$PEER" --device cpu "${SMALL[@]}" --compile --json-out cpu.jsonl && json_ok cpu_compile cpu.jsonl
    run cpu_compile_bf16 "$PY" "$PEER" --device cpu "${SMALL[@]}" --compile --mode bf16 --json-out cpu.jsonl &&
        json_ok cpu_compile_bf16 cpu.jsonl
fi

if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "== CUDA"
    run cuda_eval "$PY" "$PEER" --device cuda --load-llmc m.bin --eval-rows-like-diloco data --batches 3 --batch 4 --seq-len 64 &&
        compare "oracle on cuda, 3 batches" "$(loss_of eval_3)" "$(loss_of cuda_eval)" $TOL
    run cuda_bf16 "$PY" "$PEER" --device cuda "${SMALL[@]}" --mode bf16 --compile --json-out cuda.jsonl && json_ok cuda_bf16 cuda.jsonl
    run cuda_fp32 "$PY" "$PEER" --device cuda "${SMALL[@]}" --mode fp32 --no-compile --json-out cuda.jsonl && json_ok cuda_fp32 cuda.jsonl
    run cuda_fp32_compile "$PY" "$PEER" --device cuda "${SMALL[@]}" --mode fp32 --compile --json-out cuda.jsonl &&
        json_ok cuda_fp32_compile cuda.jsonl
    run cuda_maxbatch "$PY" "$PEER" --device cuda --model tiny --vocab 256 --steps 2 --warmup-steps 1 --compile \
        --find-max-batch --fake-oom-above 32 --json-out cuda.jsonl &&
        if grep -q "max batch 32" cuda_maxbatch.log; then json_ok cuda_maxbatch cuda.jsonl; else fail "cuda_maxbatch: no 'max batch 32'"; fi
else
    echo "skip CUDA checks (torch sees no GPU)"
fi

if [ $fails -eq 0 ]; then echo "all peer_torch checks passed ($W)"; else echo "$fails peer_torch check(s) FAILED ($W)"; fi
exit $((fails > 0))
