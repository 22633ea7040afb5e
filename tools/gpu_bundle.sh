#!/usr/bin/env bash
# Gathers into .gpu/ (ignored by git) what a bare GPU machine lacks for building and testing the
# CUDA side: CLI11's headers, GoogleTest's sources, OpenBLAS (library and headers), the
# cudnn-frontend headers and cuDNN's own headers (the bench's attention peer; libcudnn itself is
# loaded at run time where the machine has it). The machine brings CUDA, CMake and ninja. Then, there: bash tools/gpu_session.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
B="$ROOT/.gpu"
rm -rf "$B"
mkdir -p "$B/include" "$B/lib"
cp -r /usr/include/CLI "$B/include/"
cp -r /usr/src/googletest "$B/googletest"
cp /usr/include/x86_64-linux-gnu/openblas-pthread/*.h "$B/include/"
lib=$(readlink -f /usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0)
cp "$lib" "$B/lib/libopenblas.so.0"
ln -sf libopenblas.so.0 "$B/lib/libopenblas.so"
for dep in libgfortran.so.5 libquadmath.so.0; do
    f=$(ldconfig -p | awk -v d="$dep" '$1 == d {print $NF; exit}')
    [ -n "$f" ] && cp "$(readlink -f "$f")" "$B/lib/$dep"
done
fe=$(ls -d "$ROOT"/.venv/lib/python3*/site-packages/include 2>/dev/null | head -1)
if [ -n "$fe" ] && [ -f "$fe/cudnn_frontend.h" ]; then
    mkdir -p "$B/cudnn-frontend" "$B/cudnn/include"
    cp -r "$fe" "$B/cudnn-frontend/include"
    cp /usr/local/cuda/include/cudnn*.h "$B/cudnn/include/" 2>/dev/null || true
else
    echo "gpu_bundle: no cudnn-frontend in .venv (tools/setup.sh): the bench will skip cuDNN" >&2
fi
du -sh "$B"
