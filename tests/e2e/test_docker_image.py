"""The CPU image, built and run as the README says, on a real dockerd.

Opt-in (`-m docker`; pyproject's addopts leave it out of the default run and
.ci/run): it makes the base image from Debian packages, builds the image, runs
the README's `docker run` (free host ports, its own name and volume), waits for
the HEALTHCHECK, runs a task from the host, then `docker stop`s the container
while a second task runs: the task must finish (the drain) and the daemon exit 0
within the stop timeout. Prints the build times, the image size and the total.
Run with `-s` to see them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from models.cpu import amx_instructions
from tests.support.docker_engine import (
    BASE_TAG,
    CA_BUNDLE,
    ROOT,
    Docker,
    DockerUnavailableError,
    avx512_instructions,
    copy_out_llama_libraries,
    find_client,
    portable_llama_wheels,
    readme_command,
    stage_wheels,
)
from tests.support.nodeproc import cli_env, free_port

pytestmark = [pytest.mark.slow, pytest.mark.docker, pytest.mark.timeout(3600)]


@pytest.fixture(scope="module")
def docker() -> Docker:
    try:
        return Docker(find_client())
    except DockerUnavailableError as exc:
        pytest.skip(str(exc))


def make_base_image(docker: Docker) -> float:
    """deploy/docker/make-base-image.sh (root and debootstrap); returns its seconds."""
    start = time.monotonic()
    proc = subprocess.run(
        ["bash", str(ROOT / "deploy" / "docker" / "make-base-image.sh")],
        capture_output=True,
        text=True,
        timeout=1200,
        env=dict(os.environ, PATH=f"{Path(docker.client).parent}{os.pathsep}{os.environ['PATH']}"),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return time.monotonic() - start


def build_image(docker: Docker, tag: str) -> float:
    """The README's offline build (base from make-base-image.sh, the host's CA bundle); returns its seconds."""
    argv = readme_command("docker build --network host")
    assert argv[-1] == "." and "-t" in argv
    argv[argv.index("-t") + 1] = tag
    secret = f"id=ca_bundle,src={CA_BUNDLE}"
    assert secret in argv, "the README's build passes the host's CA bundle"
    if not CA_BUNDLE.exists():
        del argv[argv.index(secret) - 1 : argv.index(secret) + 1]
    start = time.monotonic()
    docker.run(*argv[1:], timeout=3000)
    return time.monotonic() - start


def run_command(tag: str, name: str, p2p_port: int, http_port: int) -> list[str]:
    """The README's `docker run`, with this test's image, name, volume and free host ports."""
    argv = readme_command("docker run -d")
    host_ports = {"4001": str(p2p_port), "9090": str(http_port)}
    for i, arg in enumerate(argv[:-1]):
        if arg == "-p":
            *host, container = argv[i + 1].split(":")
            argv[i + 1] = ":".join([*host[:-1], host_ports[container], container])
        if arg == "-v":
            argv[i + 1] = f"{name}:{argv[i + 1].split(':', 1)[1]}"
    assert argv[-1] == "compute-node", argv
    return [*argv[1:-1], "--name", name, tag]


def run_task(peer: str, max_tokens: int, prompt: str) -> subprocess.Popen[str]:
    """`compute-node run-task` on the host, against the container's published port."""
    return subprocess.Popen(
        [sys.executable, "-m", "node.cli", "run-task", "--peer", peer, "--model", "smollm2:135m"]
        + ["--prompt", prompt, "--max-tokens", str(max_tokens), "--timeout", "180"]
        + ["--data-dir", str(ROOT / ".pytest_cache" / "docker-publisher")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
        cwd=ROOT,
    )


def event_times(events: list[dict[str, object]], name: str, **fields: object) -> list[str]:
    return [
        str(e["timestamp"]) for e in events if e.get("event") == name and all(e.get(k) == v for k, v in fields.items())
    ]


def check_portable(docker: Docker, tag: str, tmp_path: Path) -> None:
    """The image's llama.cpp runs on any x86-64 with AVX2: no AVX-512 (no -march=native) and no AMX code."""
    if shutil.which("objdump") is None:
        return
    libraries = copy_out_llama_libraries(docker, tag, tmp_path)
    assert any(lib.name.startswith("libggml-cpu") for lib in libraries), libraries
    for lib in libraries:
        assert avx512_instructions(lib) == 0, f"{lib.name} holds AVX-512 code: a native build (GGML_NATIVE=OFF?)"
        assert amx_instructions(lib) == 0, f"{lib.name} holds AMX code"


def test_image_builds_runs_healthy_answers_and_drains_on_docker_stop(docker: Docker, tmp_path: Path) -> None:
    started = time.monotonic()
    tag = f"compute-node:test-{uuid.uuid4().hex[:8]}"
    name = f"compute-node-test-{uuid.uuid4().hex[:8]}"
    staged_wheels = stage_wheels(portable_llama_wheels())
    try:
        base_s = make_base_image(docker)
        build_s = build_image(docker, tag)
        rebuild_s = build_image(docker, tag)  # all cached: what a second build costs
        size_mb = docker.image_size(tag) / 1e6
        base_mb = docker.image_size(BASE_TAG) / 1e6
        assert size_mb < 918, f"the image is {size_mb:.0f} MB, no smaller than the first attempt's 918 MB"
        check_portable(docker, tag, tmp_path)

        p2p_port, http_port = free_port(), free_port()
        docker.run(*run_command(tag, name, p2p_port, http_port))
        try:
            healthy_s = docker.wait_healthy(name, timeout=300)
            [started_event] = [e for e in docker.json_logs(name) if e.get("event") == "node started"]
            peer = f"/ip4/127.0.0.1/tcp/{p2p_port}/p2p/{started_event['peer_id']}"

            first = run_task(peer, 16, "Say hello in three words.")
            out, err = first.communicate(timeout=200)
            assert first.returncode == 0 and out.strip(), f"run-task exited {first.returncode}: {out}{err}"

            # A long task in flight when `docker stop` sends SIGTERM: the drain lets it finish.
            second = run_task(peer, 200, "Write a long story about a lighthouse keeper and a storm.")
            deadline = time.monotonic() + 120
            while not event_times(docker.json_logs(name), "task started")[1:]:
                assert time.monotonic() < deadline and second.poll() is None, docker.logs_tail(name)
                time.sleep(0.2)
            stop_timeout = int(docker.inspect(name)["Config"]["StopTimeout"])  # type: ignore[index]
            stop_started = time.monotonic()
            docker.run("stop", name, timeout=stop_timeout + 30)
            stop_s = time.monotonic() - stop_started
            out, err = second.communicate(timeout=200)

            state = docker.inspect(name)["State"]
            assert isinstance(state, dict)
            events = docker.json_logs(name)
            [signalled] = event_times(events, "signal received", signal="SIGTERM")
            finished = event_times(events, "task finished", ok=True)
            [stopped] = event_times(events, "stopped")
            assert state["ExitCode"] == 0 and not state["OOMKilled"], docker.logs_tail(name)
            assert stop_s < stop_timeout, f"docker stop took {stop_s:.1f} s (stop timeout {stop_timeout} s): SIGKILL"
            assert len(finished) == 2 and signalled < finished[1] < stopped, docker.logs_tail(name)
            assert not event_times(events, "tasks cancelled at shutdown")
            assert second.returncode == 0 and out.strip(), f"the drained task failed: {out}{err}"
        finally:
            docker.run("rm", "-f", name, check=False)
            docker.run("volume", "rm", name, check=False)
    finally:
        docker.run("rmi", tag, check=False)
        for wheel in staged_wheels:
            wheel.unlink()

    print(
        f"\ndocker image test: base image {base_mb:.0f} MB built in {base_s:.0f} s; image {size_mb:.0f} MB "
        f"built in {build_s:.0f} s ({rebuild_s:.0f} s cached); healthy after {healthy_s:.0f} s; "
        f"docker stop (draining a task) {stop_s:.1f} s; total {time.monotonic() - started:.0f} s"
    )
