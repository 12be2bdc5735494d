"""The command line as a user runs it: `compute-node start` and `compute-node run-task`
as real subprocesses against each other, stopped with real signals."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "node.cli"]
ROOT = Path(__file__).resolve().parent.parent


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPUTE_NODE_")}
    env["PYTHONPATH"] = str(ROOT)
    env["COMPUTE_NODE_N_THREADS"] = "1"
    env["COMPUTE_NODE_N_CTX"] = "1024"
    env["COMPUTE_NODE_HTTP_ENABLED"] = "false"
    env["COMPUTE_NODE_STARTUP_BENCHMARK"] = "false"
    return env


class NodeProcess:
    def __init__(self, data_dir: Path, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [*CLI, "start", "--listen", "/ip4/127.0.0.1/tcp/0", "--data-dir", str(data_dir), *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(),
            cwd=ROOT,
        )
        self.addr = self._wait_for_listen_line()

    def _wait_for_listen_line(self, timeout: float = 90) -> str:
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            match = re.match(r"listening on (/ip4/127\.0\.0\.1/tcp/\d+/p2p/16Uiu2\w+)", line.strip())
            if match:
                return match.group(1)
        self.proc.kill()
        raise AssertionError(f"node did not print its address; stderr:\n{self.proc.stderr.read()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeProcess]:
    process = NodeProcess(tmp_path / "node")
    yield process
    if process.proc.poll() is None:
        process.stop(signal.SIGKILL)


def run_task(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "run-task", *args], capture_output=True, text=True, env=cli_env(), cwd=ROOT, timeout=timeout
    )


def test_start_then_run_task_prints_the_result_and_sigterm_exits_0(node: NodeProcess, tmp_path: Path) -> None:
    done = run_task("--peer", node.addr, "--model", "smollm2:135m", "--prompt", "Hey there!", "--max-tokens", "24")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()
    assert node.stop(signal.SIGTERM) == 0
    # The identity was created once with mode 0600 and is reused on the next start.
    key = tmp_path / "node" / "identity.key"
    assert key.stat().st_mode & 0o777 == 0o600
    again = NodeProcess(tmp_path / "node")
    try:
        assert again.addr.split("/p2p/")[1] == node.addr.split("/p2p/")[1]
    finally:
        assert again.stop(signal.SIGINT) == 0


def test_run_task_with_a_workflow_file(node: NodeProcess) -> None:
    workflow = ROOT.parent / "shared" / "protocol" / "examples" / "simple_omitted.json"
    if not workflow.exists():
        pytest.skip("shared protocol examples are not beside the checkout")
    done = run_task(
        "--peer", node.addr, "--model", "*", "--workflow", str(workflow), "--input", "What is the capital of France?"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()


def test_run_task_timeout_and_error_are_one_line_and_non_zero(node: NodeProcess) -> None:
    timed_out = run_task("--peer", node.addr, "--model", "gemma3:270m", "--prompt", "Hi", "--timeout", "3")
    assert timed_out.returncode == 2
    assert re.fullmatch(r"compute-node: task [\w-]+: no result within 3 s\n", timed_out.stderr)
    bad = run_task("--peer", node.addr, "--model", "*", "--workflow", "/nonexistent.json")
    assert bad.returncode == 1
    assert "cannot read workflow" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_invalid_setting_fails_at_start_naming_it(tmp_path: Path) -> None:
    done = subprocess.run(
        [*CLI, "start", "--data-dir", str(tmp_path), "--max-queue", "-3"],
        capture_output=True, text=True, env=cli_env(), cwd=ROOT, timeout=60,
    )
    assert done.returncode == 1
    assert "invalid setting 'max_queue'" in done.stderr


def test_unknown_model_fails_at_start_with_known_names(tmp_path: Path) -> None:
    done = subprocess.run(
        [*CLI, "start", "--data-dir", str(tmp_path), "--listen", "/ip4/127.0.0.1/tcp/0", "--model", "nope:1b"],
        capture_output=True, text=True, env=cli_env(), cwd=ROOT, timeout=60,
    )
    assert done.returncode == 1
    assert "nope:1b" in done.stderr and "smollm2:135m" in done.stderr
