#!/usr/bin/env bash
# Gathers into .gpu/ (ignored by git) what a bare GPU machine lacks for building and testing the
# CUDA side: CLI11's headers, GoogleTest's sources, OpenBLAS (library and headers). The machine
# brings CUDA, CMake and ninja. Then, there: bash tools/gpu_session.sh
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
du -sh "$B"
