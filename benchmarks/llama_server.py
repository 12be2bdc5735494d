"""The batching baseline: upstream `llama-server`, built once from the llama.cpp sources
vendored in the llama-cpp-python sdist of the installed version.

The binary lands in ~/.cache/compute-node/llama-server-<version>/ (outside the
repository, kept between runs); a later run finds it and skips the build. The
build needs cmake, a C++ compiler and PyPI (for the sdist); it takes a few
minutes on 2 cores. No package provides llama-server, so there is no other way.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import llama_cpp
import structlog

from models.cpu import CpuInfo, extra_buffers_enabled

log = structlog.get_logger(__name__)

CACHE_ROOT = Path("~/.cache/compute-node").expanduser()
# The node's own llama.cpp patch (install.sh): AMX kernels with their tile configuration fixed.
LLAMA_PATCH = Path(__file__).resolve().parents[1] / "deploy" / "llama-cpp" / "amx-tile-config.patch"


class LlamaServerError(Exception):
    """llama-server could not be built or started; the message says which step failed."""


def cache_dir(version: str | None = None) -> Path:
    # Keyed by the CPU too (the build is native, -march=native, like the node's wheel) and the patch.
    cpu = hashlib.sha256(" ".join(sorted(CpuInfo.read().flags)).encode()).hexdigest()[:12]
    patch = hashlib.sha256(LLAMA_PATCH.read_bytes()).hexdigest()[:8]
    return CACHE_ROOT / f"llama-server-{version or llama_cpp.__version__}-{patch}-{cpu}"


def binary_path(version: str | None = None) -> Path:
    return cache_dir(version) / "llama-server"


def build_seconds(version: str | None = None) -> float | None:
    """How long the cached build took (None: not built yet)."""
    stamp = cache_dir(version) / "build-seconds.txt"
    return float(stamp.read_text()) if stamp.exists() else None


def ensure_built(timeout: float = 1800.0) -> Path:
    """The llama-server binary, building it first if the cache has none."""
    binary = binary_path()
    if binary.exists():
        return binary
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            raise LlamaServerError(f"cannot build llama-server: '{tool}' is not installed")
    version = llama_cpp.__version__
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="llama-server-build-") as work:
        source = _fetch_sources(Path(work), version, timeout)
        _cmake_build(source, Path(work) / "build", timeout - (time.monotonic() - started))
        built = Path(work) / "build" / "bin" / "llama-server"
        if not built.exists():
            raise LlamaServerError(f"the build finished but {built} is missing")
        cache_dir().mkdir(parents=True, exist_ok=True)
        shutil.copy2(built, binary)
    elapsed = time.monotonic() - started
    (cache_dir() / "build-seconds.txt").write_text(f"{elapsed:.0f}\n")
    log.info("llama-server built", path=str(binary), seconds=round(elapsed))
    return binary


def _fetch_sources(work: Path, version: str, timeout: float) -> Path:
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            "llama-cpp-python",  # its sdist; build backends may come as wheels
            f"llama-cpp-python=={version}",
            "-d",
            str(work),
        ],
        "downloading the llama-cpp-python sdist",
        timeout,
    )
    archives = list(work.glob("llama_cpp_python-*.tar.gz"))
    if not archives:
        raise LlamaServerError(f"pip download left no llama_cpp_python sdist in {work}")
    with tarfile.open(archives[0]) as tar:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 (Debian 12 ships 3.11.2)
            tar.extractall(work, filter="data")
        else:
            tar.extractall(work)  # noqa: S202 - PyPI's sdist of the version we run
    sdist = work / f"llama_cpp_python-{version}"
    source = sdist / "vendor" / "llama.cpp"
    if not (source / "CMakeLists.txt").exists():
        raise LlamaServerError(f"the sdist has no vendored llama.cpp at {source}")
    if shutil.which("patch") is None:
        raise LlamaServerError("cannot build llama-server: 'patch' is not installed")
    _run(
        ["patch", "-d", str(sdist), "-p1", "--forward", "--quiet", "-i", str(LLAMA_PATCH)],
        "patching llama.cpp",
        timeout,
    )
    return source


def _cmake_build(source: Path, build: Path, timeout: float) -> None:
    flags = [
        "-DCMAKE_BUILD_TYPE=Release",
        "-DBUILD_SHARED_LIBS=OFF",
        "-DLLAMA_BUILD_SERVER=ON",
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
        "-DLLAMA_CURL=OFF",
        "-DLLAMA_OPENSSL=OFF",
        "-DLLAMA_BUILD_UI=OFF",
        "-DLLAMA_USE_PREBUILT_UI=OFF",
    ]
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    _run(["cmake", "-S", str(source), "-B", str(build), *generator, *flags], "configuring llama.cpp", timeout)
    jobs = str(len(os.sched_getaffinity(0)))
    _run(["cmake", "--build", str(build), "--target", "llama-server", "-j", jobs], "compiling llama-server", timeout)


def _run(cmd: list[str], step: str, timeout: float) -> None:
    # SOURCE_DATE_EPOCH turns every SIMD option off in ggml's CMake.
    env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=max(timeout, 1.0), env=env, check=False)
    except subprocess.TimeoutExpired:
        raise LlamaServerError(f"{step} took longer than {timeout:.0f} s") from None
    if done.returncode != 0:
        tail = (done.stdout + done.stderr)[-2000:]
        raise LlamaServerError(f"{step} failed (exit {done.returncode}):\n{tail}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_server(model: Path, parallel: int, threads: int, ctx_per_slot: int = 1024) -> Iterator[str]:
    """Start llama-server on 127.0.0.1 and yield its base URL once /health says ok."""
    binary = ensure_built()
    port = free_port()
    cmd = [
        str(binary),
        "-m",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--parallel",
        str(parallel),
        "-t",
        str(threads),
        "-tb",
        str(threads),
        "-c",
        str(parallel * ctx_per_slot),
        "--no-webui",
        "--log-disable",
    ]
    if not extra_buffers_enabled("auto", CpuInfo.read(), [binary]):
        cmd.append("--no-repack")  # as the node does on this CPU with such a build (extra_buffers = auto)
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=errors)
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_healthy(proc, url, errors)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_healthy(proc: subprocess.Popen[bytes], url: str, errors: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            errors.seek(0)  # type: ignore[attr-defined]
            tail = errors.read()[-1500:].decode(errors="replace")  # type: ignore[attr-defined]
            raise LlamaServerError(f"llama-server exited with {proc.returncode} at start:\n{tail}")
        try:
            if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise LlamaServerError(f"llama-server did not become healthy within {timeout:.0f} s")


if __name__ == "__main__":
    print(ensure_built())
