"""The command line as a user runs it: `compute-node start` and `compute-node run-task`
as real subprocesses against each other, stopped with real signals."""

from __future__ import annotations

import json
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.nodeproc import CLI, ROOT, NodeProcess, cli_env
from tests.support.protocol_files import EXAMPLES

pytestmark = pytest.mark.slow


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeProcess]:
    process = NodeProcess(tmp_path / "node")
    yield process
    if process.proc.poll() is None:
        process.stop(signal.SIGKILL)


def compute_node(*args: str, timeout: float | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    """`compute-node *args` run to its end in a test node's environment (`env` over it), its output captured."""
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=cli_env(**env), cwd=ROOT, timeout=timeout)


def run_task(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return compute_node("run-task", *args, timeout=timeout)


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


def test_run_task_sends_on_a_stream_by_default_and_on_gossip_when_asked(node: NodeProcess, tmp_path: Path) -> None:
    publisher = tmp_path / "publisher"
    for delivery in ("direct", "gossip"):
        args = ("--peer", node.addr, "--model", "smollm2:135m", "--prompt", "Hi", "--max-tokens", "8")
        done = run_task(*args, "--delivery", delivery, "--data-dir", str(publisher))
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip()
    node.wait_for_log("task accepted", direct=False)
    assert [e["direct"] for e in node.logs if e.get("event") == "task accepted"] == [True, False]
    # Both runs measured the node, in one table that outlives them: `compute-node nodes` prints it.
    listed = compute_node("nodes", "--data-dir", str(publisher), "--json")
    assert listed.returncode == 0, listed.stderr
    (row,) = json.loads(listed.stdout)["nodes"]
    assert row["answered"] > 1.99 and row["errors"] == 0 and row["mean_result_s"] > 0


def test_run_task_verifies_the_result_against_a_bf16_scoring_copy(node: NodeProcess, tmp_path: Path) -> None:
    publisher = tmp_path / "publisher"
    args = ("--peer", node.addr, "--model", "smollm2:135m", "--prompt", "Name a river.", "--max-tokens", "16")
    done = compute_node(
        "run-task",
        *args,
        "--verify",
        "1",
        "--data-dir",
        str(publisher),
        timeout=180,
        COMPUTE_NODE_VERIFY_PRECISION="bf16",
    )
    assert done.returncode == 0, done.stderr  # a failed check exits 1 (VerificationFailedTaskError)
    assert done.stdout.strip()
    assert [p.name for p in (publisher / "scoring").glob("*.bf16.gguf")]  # re-scored with the copy made here
    listed = compute_node("nodes", "--data-dir", str(publisher), "--json")
    (row,) = json.loads(listed.stdout)["nodes"]
    assert row["verify_passed"] > 0.99 and row["verify_failed"] == 0


def test_run_task_warns_when_a_result_it_was_to_verify_could_not_be(tmp_path: Path) -> None:
    # A model this publisher has no scorer for (an alias only the node knows): it exited 0, silent, unverified.
    registry = json.dumps({"tiny:1b": {"alias": "smollm2:135m"}})
    node = NodeProcess(tmp_path / "node", env=cli_env(COMPUTE_NODE_REGISTRY=registry, COMPUTE_NODE_MODELS="tiny:1b"))
    try:
        args = ("--peer", node.addr, "--model", "tiny:1b", "--prompt", "Hi", "--max-tokens", "8", "--verify", "1")
        done = run_task(*args, "--data-dir", str(tmp_path / "publisher"))
        assert done.returncode == 0 and done.stdout.strip(), done.stderr
        assert "compute-node: warning: the result of 'tiny:1b' is not verified" in done.stderr, done.stderr
    finally:
        assert node.stop(signal.SIGTERM) == 0


def test_run_task_with_a_workflow_file(node: NodeProcess) -> None:
    workflow = EXAMPLES / "simple_omitted.json"
    done = run_task(
        "--peer", node.addr, "--model", "*", "--workflow", str(workflow), "--input", "What is the capital of France?"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()


def test_run_task_timeout_and_error_are_one_line_and_non_zero(node: NodeProcess) -> None:
    timed_out = run_task("--peer", node.addr, "--model", "gemma3:270m", "--prompt", "Hi", "--timeout", "3")
    assert timed_out.returncode == 2
    assert re.fullmatch(
        r"compute-node: no live node hosting any of \['gemma3:270m'\] seen within 3 s .*\n", timed_out.stderr
    )
    bad = run_task("--peer", node.addr, "--model", "*", "--workflow", "/nonexistent.json")
    assert bad.returncode == 1
    assert "cannot read workflow" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_invalid_setting_fails_at_start_naming_it(tmp_path: Path) -> None:
    done = compute_node("start", "--data-dir", str(tmp_path), "--max-queue", "-3", timeout=60)
    assert done.returncode == 1
    assert "invalid setting 'max_queue'" in done.stderr


def test_a_data_dir_that_is_a_file_fails_at_start_naming_it(tmp_path: Path) -> None:
    for data_dir in (tmp_path / "a-file", tmp_path / "a-file" / "below"):
        (tmp_path / "a-file").write_text("")
        done = compute_node("start", "--data-dir", str(data_dir), "--listen", "/ip4/127.0.0.1/tcp/0", timeout=60)
        assert done.returncode == 1
        assert done.stderr == f"compute-node: invalid setting 'data_dir': {data_dir} is not a directory\n"


def test_unknown_model_fails_at_start_with_known_names(tmp_path: Path) -> None:
    done = compute_node(
        "start", "--data-dir", str(tmp_path), "--listen", "/ip4/127.0.0.1/tcp/0", "--model", "nope:1b", timeout=60
    )
    assert done.returncode == 1
    assert "nope:1b" in done.stderr and "smollm2:135m" in done.stderr
