"""A real Docker engine for the image test: the client that can build, the README's commands, the wheels.

No registry is needed: `deploy/docker/make-base-image.sh` makes the base from Debian
packages, and prebuilt wheels (a portable llama-cpp-python, fastecdsa) spare the
build its compiler.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WHEELS_DIR = ROOT / "deploy" / "docker" / "wheels"
BASE_TAG = "compute-node-base:bookworm"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


class DockerUnavailableError(Exception):
    """No Docker client with BuildKit, or no dockerd answering it."""


def _client_builds_with_buildkit(client: str) -> bool:
    """buildx is there, or the client predates Docker 23 (BuildKit built in, DOCKER_BUILDKIT=1)."""
    if subprocess.run([client, "buildx", "version"], capture_output=True).returncode == 0:
        return True
    version = subprocess.run([client, "version", "--format", "{{.Client.Version}}"], capture_output=True, text=True)
    major = re.match(r"(\d+)\.", version.stdout.strip())
    return major is not None and int(major[1]) < 23


def find_client() -> str:
    """The first `docker` on PATH (or $DOCKER) that builds with BuildKit and reaches a dockerd."""
    candidates = [os.environ["DOCKER"]] if "DOCKER" in os.environ else []
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        found = shutil.which("docker", path=directory)
        if found and os.path.realpath(found) not in map(os.path.realpath, candidates):
            candidates.append(found)
    if not candidates:
        raise DockerUnavailableError("no docker client (apt-get install docker.io)")
    builders = [c for c in candidates if _client_builds_with_buildkit(c)]
    if not builders:
        raise DockerUnavailableError(
            f"no docker client with BuildKit among {candidates} (buildx, or Debian's docker.io)"
        )
    info = subprocess.run([builders[0], "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True)
    if info.returncode != 0:
        raise DockerUnavailableError(f"no dockerd reachable ({info.stderr.strip()[:200]}); start one: dockerd &")
    return builders[0]


@dataclass
class Docker:
    """One docker client; every call runs it with BuildKit on."""

    client: str

    def run(self, *args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, DOCKER_BUILDKIT="1")
        proc = subprocess.run([self.client, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"docker {shlex.join(args)} exited {proc.returncode}:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
            )
        return proc

    def inspect(self, name: str) -> dict[str, object]:
        [state] = json.loads(self.run("inspect", name).stdout)
        return dict(state)

    def image_size(self, tag: str) -> int:
        return int(self.run("image", "inspect", "--format", "{{.Size}}", tag).stdout)

    def json_logs(self, name: str) -> list[dict[str, object]]:
        """The container's structlog events (JSON lines), in order."""
        proc = self.run("logs", name, check=False)
        events = []
        for line in (proc.stdout + proc.stderr).splitlines():
            if line.startswith("{"):
                try:
                    events.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        events.sort(key=lambda e: str(e.get("timestamp", "")))
        return events

    def wait_healthy(self, name: str, timeout: float) -> float:
        """Seconds until the HEALTHCHECK said healthy; fails with the logs if the container ends first."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            state = self.inspect(name)["State"]
            assert isinstance(state, dict)
            if state["Status"] != "running":
                raise AssertionError(f"container {state['Status']} (exit {state['ExitCode']}):\n{self.logs_tail(name)}")
            health = state.get("Health") or {}
            if health.get("Status") == "healthy":
                return time.monotonic() - start
            time.sleep(1)
        raise AssertionError(f"not healthy after {timeout:.0f} s:\n{self.logs_tail(name)}")

    def logs_tail(self, name: str) -> str:
        proc = self.run("logs", "--tail", "40", name, check=False)
        return proc.stdout + proc.stderr


def readme_command(prefix: str) -> list[str]:
    """The first README command (code block or inline code) that starts with `prefix`, as argv."""
    readme = (ROOT / "README.md").read_text().replace("\\\n", " ")
    commands = [c for c in re.findall(r"(docker (?:build|run)\b[^`\n]*)", readme) if c.startswith(prefix)]
    if not commands:
        raise AssertionError(f"README.md has no `{prefix} ...` command")
    return shlex.split(commands[0].split(" #")[0])


def portable_llama_wheels() -> list[Path]:
    """install.sh's portable llama-cpp-python wheel (GGML_NATIVE=OFF) and pip's fastecdsa wheel, where cached."""
    cache = Path(os.environ.get("COMPUTE_NODE_WHEEL_CACHE", Path.home() / ".cache" / "compute-node" / "wheels"))
    llama = sorted(cache.glob("llama-cpp-python-*-cpython-311-*-portable/llama_cpp_python-*.whl"))
    fastecdsa = sorted((Path.home() / ".cache" / "pip" / "wheels").glob("**/fastecdsa-*-cp311-*.whl"))
    return llama[-1:] + fastecdsa[-1:]


def stage_wheels(wheels: list[Path]) -> list[Path]:
    """Copies the wheels into deploy/docker/wheels/ (git-ignored), over a different file of the same name.

    Returns the files it wrote.
    """
    written = []
    for wheel in wheels:
        target = WHEELS_DIR / wheel.name
        if not target.exists() or target.read_bytes() != wheel.read_bytes():
            shutil.copy2(wheel, target)
            written.append(target)
    return written


def avx512_instructions(binary: Path) -> int:
    """How many instructions of `binary` use AVX-512 registers (zmm, opmasks): 0 in a portable AVX2 build."""
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(binary)], capture_output=True, text=True)
    return len(re.findall(r"%zmm\d|\{%k[1-7]\}", out.stdout))


def copy_out_llama_libraries(docker: Docker, tag: str, target: Path) -> list[Path]:
    """The image's llama.cpp libraries (the files, not their symlinks), copied to `target`."""
    container = docker.run("create", tag).stdout.strip()
    try:
        lib_dir = "/opt/venv/lib/python3.11/site-packages/llama_cpp/lib"
        docker.run("cp", f"{container}:{lib_dir}", str(target))
    finally:
        docker.run("rm", container, check=False)
    return sorted(p for p in (target / "lib").iterdir() if p.is_file() and not p.is_symlink())
