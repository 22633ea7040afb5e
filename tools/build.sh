#!/usr/bin/env bash
# Configures and builds into build/ (Release). CUDA code is compiled when nvcc is found
# (on PATH or in /usr/local/cuda); MPI is used when found. Extra arguments go to cmake.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ] && [ -z "${CUDACXX:-}" ]; then
    export CUDACXX=/usr/local/cuda/bin/nvcc
fi
cmake -S "$ROOT" -B "$ROOT/build" -G Ninja -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
cmake --build "$ROOT/build" -j "$(nproc)"
