"""idle_only with a real node and real CPU load: busy loops of other processes pause it; it resumes after."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from node.daemon.idle import CpuSampler
from tests.support.nodeproc import NodeProcess, cli_env, free_port

pytestmark = pytest.mark.slow
THRESHOLD = 0.6


def machine_busy_share(seconds: float = 3.0) -> float:
    """The share of all CPUs busy over `seconds` (no node tree to take out: the node is idle)."""
    sampler = CpuSampler(os.getpid())
    busy0, total0 = sampler.machine()
    time.sleep(seconds)
    busy1, total1 = sampler.machine()
    return (busy1 - busy0) / max(1, total1 - total0)


def paused_state(port: int) -> tuple[bool, bool, int]:
    """(paused, paused by idle_only, free capacity) from the node's /status."""
    status = httpx.get(f"http://127.0.0.1:{port}/status", timeout=10).json()
    return status["paused"]["paused"], status["paused"]["idle_only"], status["capacity"]["free"]


def wait_until(condition, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"not within {timeout:g} s: {what}")


def test_other_processes_cpu_load_pauses_the_node_and_it_resumes_when_they_stop(tmp_path: Path) -> None:
    port = free_port()
    env = cli_env(
        COMPUTE_NODE_HTTP_ENABLED="true",
        COMPUTE_NODE_HTTP_PORT=str(port),
        COMPUTE_NODE_IDLE_ONLY="true",
        COMPUTE_NODE_IDLE_CPU_THRESHOLD=str(THRESHOLD),
        COMPUTE_NODE_IDLE_CHECK_INTERVAL="1",
    )
    node = NodeProcess(tmp_path / "node", env=env)
    loops: list[subprocess.Popen[bytes]] = []
    try:
        wait_until(lambda: not paused_state(port)[0], 120, "the node takes tasks before the load starts")
        loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)]
        wait_until(lambda: paused_state(port) == (True, True, 0), 60, "paused by the busy loops")
        for loop in loops:
            loop.kill()
            loop.wait()
        node.wait_for_log("node paused: machine busy")
        try:
            wait_until(lambda: not paused_state(port)[0], 120, "resumed once the loops stopped")
        except AssertionError:
            others = machine_busy_share()
            if others > THRESHOLD:  # a shared machine others keep busy: the node is right to stay paused
                pytest.skip(f"other processes keep {others:.0%} of the CPUs busy: the resume cannot be observed")
            raise
        assert paused_state(port)[2] > 0
        node.wait_for_log("node resumed: machine idle")
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()
        node.stop()
