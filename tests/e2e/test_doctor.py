"""`compute-node doctor` as an operator runs it: 0 beside a healthy running node, 1 naming each problem."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from node.wire.identity import Identity
from tests.support.nodeproc import CLI, ROOT, NodeProcess, cli_env, free_port

pytestmark = pytest.mark.slow
QUICK = ["--skip", "runtime", "--skip", "models", "--skip", "memory", "--skip", "remote"]


def doctor(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "doctor", *args], capture_output=True, text=True, env=env or cli_env(), cwd=ROOT, timeout=300
    )


def test_doctor_beside_a_healthy_running_node_exits_0(tmp_path: Path) -> None:
    data, http_port = tmp_path / "node", free_port()
    env = cli_env(COMPUTE_NODE_HTTP_ENABLED="true", COMPUTE_NODE_HTTP_PORT=str(http_port))
    node = NodeProcess(data, env=env)
    try:
        listen = node.addr.split("/p2p/")[0]
        done = doctor("--data-dir", str(data), "--listen", listen, "--bootstrap", node.addr, "--hear", "20", env=env)
    finally:
        node.stop()
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "OK    runtime: selfcheck ok" in out
    assert f"OK    listen port: 127.0.0.1:{listen.split('/')[-1]} is held by the node running" in out
    assert f"OK    http port: 127.0.0.1:{http_port} is held by the node running" in out
    assert "OK    identity key:" in out and "OK    model smollm2:135m:" in out and "OK    memory:" in out
    assert f"OK    bootstrap: {node.addr} answered" in out
    assert "clock: peers' clocks are" in out  # measured from the node's signed heartbeat
    assert "WARN  public address:" in out and "NAT" in out
    assert "0 problem(s)" in out


def test_doctor_names_each_broken_setup_and_exits_1(tmp_path: Path) -> None:
    data = tmp_path / "node"
    data.mkdir()
    key = data / "identity.key"
    Identity.from_secret_or_file(None, key)
    key.chmod(0o640)
    bad_key = doctor("--data-dir", str(data), "--listen", "/ip4/127.0.0.1/tcp/0", "--http-port", "0", *QUICK)
    assert bad_key.returncode == 1
    assert "FAIL  identity key:" in bad_key.stdout and f"fix: chmod 600 {key}" in bad_key.stdout
    key.chmod(0o600)

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy_port = doctor(
            "--data-dir", str(data), "--listen", f"/ip4/127.0.0.1/tcp/{port}", "--http-port", "0", *QUICK
        )
    assert busy_port.returncode == 1
    assert f"FAIL  listen port: 127.0.0.1:{port} is in use by another process" in busy_port.stdout

    gone = NodeProcess(tmp_path / "gone")  # a real peer id whose node then stops: its port answers no more
    gone.stop()
    unreachable = doctor(
        "--data-dir",
        str(data),
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--http-port",
        "0",
        "--bootstrap",
        gone.addr,
        *QUICK,
    )
    assert unreachable.returncode == 1
    assert f"FAIL  bootstrap: {gone.addr} did not answer" in unreachable.stdout
