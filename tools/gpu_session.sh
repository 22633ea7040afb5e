#!/usr/bin/env bash
# On a lent GPU machine (CUDA, CMake, ninja; nothing else): build with the bundle from
# tools/gpu_bundle.sh, run the native CUDA tests, the kernel benches, and a short GPU training run.
# Everything it prints is also written to $OUT (or ./gpu-out) for docs/gpu-results.md.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUTDIR=${OUT:-$ROOT/gpu-out}
mkdir -p "$OUTDIR"
# the toolkit's folders too: cudnn-frontend dlopens libcudart.so.13 and the bench libcudnn.so.9
export LD_LIBRARY_PATH="$ROOT/.gpu/lib:/usr/local/cuda/lib64:/usr/local/cuda/lib:${LD_LIBRARY_PATH:-}"
log() { tee -a "$OUTDIR/session.log"; }
{ date; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; } 2>&1 | log
cmake -S "$ROOT" -B "$ROOT/build-gpu" -G Ninja -DCMAKE_BUILD_TYPE=Release -DDILOCO_WITH_MPI=OFF \
      -DDILOCO_BUNDLE="$ROOT/.gpu" 2>&1 | tail -3 | log
cmake --build "$ROOT/build-gpu" -j 16 2>&1 | tail -3 | log
# DILOCO_CUDA_SYNC=1: a kernel that faults in a test is named by its launch (docs/kernels.md)
(cd "$ROOT/build-gpu" && DILOCO_CUDA_SYNC=1 ctest --output-on-failure -R '^(native|emulated)\.' 2>&1) | log
for k in layernorm adamw gelu crossentropy quantize gemm; do "$ROOT/build-gpu/diloco" bench $k --device cuda 2>&1 | log; done
"$ROOT/build-gpu/diloco" bench attention --device cuda --B 8 --T 1024 --C 768 --NH 12 2>&1 | log
# a short training run on the GPU: byte-level text from the repository's own docs
mkdir -p "$ROOT/build-gpu/data-txt" && cat "$ROOT"/docs/*.md "$ROOT"/README.md > "$ROOT/build-gpu/corpus.txt"
"$ROOT/build-gpu/diloco" prepare --input "$ROOT/build-gpu/corpus.txt" --out "$ROOT/build-gpu/data-txt" 2>&1 | log
"$ROOT/build-gpu/diloco" train --data "$ROOT/build-gpu/data-txt" --out "$ROOT/build-gpu/run" --device cuda \
    --model small --seq-len 256 --batch 32 --steps 200 --warmup 20 --lr 1e-3 --log-every 20 --eval-every 100 2>&1 | log
