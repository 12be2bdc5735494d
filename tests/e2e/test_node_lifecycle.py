"""The node's lifecycle: graceful drain on SIGTERM or SIGINT (to the daemon or its whole
process group), crash recovery from the journal after SIGKILL, one node per data directory, a stop
during startup, a closed log pipe.

Real `compute-node start` subprocesses and real signals; loopback only."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from node.publisher.client import Client, Task, TaskFailedError
from node.wire.identity import Identity
from tests.support.nodeproc import CLI, ROOT, NodeProcess, cli_env, free_port
from workflows import Simple

pytestmark = pytest.mark.slow


def long_workflow(items: int = 300) -> dict:
    """A generation the schema forces to be long (hundreds of tokens), so it runs for seconds."""
    # Within the test nodes' 1024-token context (a prompt + max_tokens over it is refused).
    workflow = Simple().workflow(prompt="List booleans.", max_tokens=min(8 * items, 980))
    schema = {"type": "array", "items": {"type": "boolean"}, "minItems": items, "maxItems": items}
    workflow["tasks"][0]["schema"] = json.dumps(schema)
    return workflow


def items_in(text: str) -> int:
    """How many booleans the result holds (one memory entry that is a JSON array returns as compact JSON)."""
    items = json.loads(text)
    assert isinstance(items, list) and all(isinstance(item, bool) for item in items), text[:200]
    return len(items)


def node_address(node: NodeProcess) -> str:
    return node.wait_for_log("node started")["address"]


async def long_task_started(client: Client, node: NodeProcess, address: str, timeout: float, items: int = 300) -> str:
    """The id of a long task (`long_workflow(items)`) submitted to the node at `address`, once `node` started it."""
    task_id = await client.submit(Task(workflow=long_workflow(items), models=["*"], nodes=[address]), timeout=timeout)
    await asyncio.to_thread(node.wait_for_log, "task started", 30, task_id=task_id)
    return task_id


@pytest.mark.parametrize(("drain_timeout", "expect_result"), [("60", True), ("0.5", False)])
async def test_sigterm_drains_the_running_task_then_exits_0(
    tmp_path: Path, drain_timeout: str, expect_result: bool
) -> None:
    node = NodeProcess(tmp_path / "node", "--drain-timeout", drain_timeout)
    try:
        address = node_address(node)
        async with Client(peers=[node.addr]) as client:
            task_id = await long_task_started(client, node, address, 90)
            node.proc.send_signal(signal.SIGTERM)
            if expect_result:
                result = await client.wait(task_id, timeout=90, nodes=[address])
                assert items_in(result.text) == 300
            else:
                with pytest.raises(TaskFailedError, match="interrupted: node shutting down"):
                    await client.wait(task_id, timeout=30, nodes=[address])
            assert await asyncio.to_thread(node.proc.wait, 60) == 0
    finally:
        node.stop(signal.SIGKILL)


def _execution_pids(pid: int) -> list[int]:
    return [int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()]


def _signal_node(node: NodeProcess, sig: signal.Signals, target: str) -> None:
    """`group`: the node's process group, as Ctrl-C in a terminal does (SIGINT) or `kill -- -PGID`;
    `every`: each process of the node, as systemd's KillMode=control-group does."""
    if target == "group":
        os.killpg(node.proc.pid, sig)
        return
    pids = [node.proc.pid, *_execution_pids(node.proc.pid)]
    assert len(pids) == 2  # the daemon and its one execution process
    for pid in pids:
        os.kill(pid, sig)


@pytest.mark.parametrize(
    ("sig", "target"),
    [(signal.SIGINT, "group"), (signal.SIGTERM, "group"), (signal.SIGTERM, "every")],
    ids=["SIGINT-group", "SIGTERM-group", "SIGTERM-every-process"],
)
async def test_signal_to_the_whole_node_drains_like_a_signal_to_the_daemon(
    tmp_path: Path, sig: signal.Signals, target: str
) -> None:
    node = NodeProcess(tmp_path / "node", "--drain-timeout", "120", own_group=True)
    try:
        address = node_address(node)
        async with Client(peers=[node.addr]) as client:
            task_id = await long_task_started(client, node, address, 90)
            _signal_node(node, sig, target)
            result = await client.wait(task_id, timeout=150, nodes=[address])
            assert items_in(result.text) == 300  # finished, not interrupted, not rerun after a crash
            assert await asyncio.to_thread(node.proc.wait, 60) == 0
        await asyncio.to_thread(node.wait_for_log, "stopped", 10)
        assert node.wait_for_log("signal received")["signal"] == sig.name
        ended = [entry for entry in node.logs if entry.get("event") == "execution process ended"]
        assert ended == []  # the daemon ended its runtime itself, after the drain
        assert not [entry for entry in node.logs if "crashed" in json.dumps(entry)]
        assert [entry["event"] for entry in node.logs if entry.get("task_id") == task_id].count("task started") == 1
    finally:
        node.stop(signal.SIGKILL)


async def test_kill_9_mid_task_then_restart_answers_interrupted(tmp_path: Path) -> None:
    port, key = free_port(), Identity.generate().secret
    node = NodeProcess(tmp_path / "node", port=port)
    try:
        address = node_address(node)
        async with Client(peers=[node.addr], secret_key=key) as client:
            task_id = await long_task_started(client, node, address, 120)
            node.stop(signal.SIGKILL)
        node = NodeProcess(tmp_path / "node", port=port)
        async with Client(peers=[node.addr], secret_key=key) as client:
            with pytest.raises(TaskFailedError, match="interrupted: node restarted"):
                await client.wait(task_id, timeout=30, nodes=[address])
    finally:
        node.stop(signal.SIGKILL)


async def test_result_finished_without_peers_survives_kill_9_and_is_published_after_restart(tmp_path: Path) -> None:
    port, key = free_port(), Identity.generate().secret
    node = NodeProcess(tmp_path / "node", port=port)
    try:
        address = node_address(node)
        async with Client(peers=[node.addr], secret_key=key) as client:
            task_id = await long_task_started(client, node, address, 120, items=150)
        # The publisher left: the node finishes with no peers and keeps the result in its journal.
        await asyncio.to_thread(node.wait_for_log, "no peers: result kept until peers return", 60, task_id=task_id)
        node.stop(signal.SIGKILL)
        node = NodeProcess(tmp_path / "node", port=port)
        async with Client(peers=[node.addr], secret_key=key) as client:
            result = await client.wait(task_id, timeout=30, nodes=[address])
        assert items_in(result.text) == 150
        await asyncio.to_thread(node.wait_for_log, "result published", 10, task_id=task_id)
    finally:
        node.stop(signal.SIGKILL)


async def test_a_second_node_on_the_same_data_dir_is_refused_and_the_first_keeps_its_task(tmp_path: Path) -> None:
    """Without the lock, the second node's recovery answered the first one's running task as interrupted."""
    node = NodeProcess(tmp_path / "node")
    try:
        address = node_address(node)
        async with Client(peers=[node.addr], secret_key=Identity.generate().secret) as client:
            task_id = await long_task_started(client, node, address, 120)
            second = await asyncio.to_thread(
                subprocess.run,
                [*CLI, "start", "--listen", "/ip4/127.0.0.1/tcp/0", "--data-dir", str(tmp_path / "node")],
                env=cli_env(),
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert second.returncode == 1, second.stderr[-2000:]
            assert f"another node is running on the data directory {tmp_path / 'node'} (pid {node.proc.pid})" in (
                second.stderr
            )
            result = await client.wait(task_id, timeout=120, nodes=[address])
            assert items_in(result.text) == 300
    finally:
        node.stop(signal.SIGKILL)


def lines_until(proc: subprocess.Popen[str], event: str) -> list[str]:
    """The process's stderr lines up to and with its first log line of `event` (all of them, if it ends first)."""
    assert proc.stderr is not None
    lines: list[str] = []
    while line := proc.stderr.readline():
        lines.append(line)
        if line.startswith("{") and json.loads(line).get("event") == event:
            break
    return lines


async def test_a_stop_during_startup_ends_the_node_at_once_and_it_never_says_ready(tmp_path: Path) -> None:
    """A model that takes a minute to load: SIGTERM waited for it, then started the node, then stopped it
    (and systemd's stop timeout would have killed it first)."""
    env = cli_env(COMPUTE_NODE_TEST_EXEC_WRAPPER="tests.support.exec_wrappers:slow_start")
    command = [*CLI, "start", "--listen", "/ip4/127.0.0.1/tcp/0", "--data-dir", str(tmp_path / "node")]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        # Stopped once its P2P host listens: logged after its signal handlers are in place, while the model
        # loads. (A fixed 5 s sleep raced the daemon's start: 3 s to get there beside 4 CPU hogs on 2 cores,
        # and a SIGTERM before its handlers ends it at once, exit code -15.)
        early = await asyncio.wait_for(asyncio.to_thread(lines_until, proc, "p2p host listening"), 30)
        assert proc.poll() is None, "".join(early)[-2000:]
        asked = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.to_thread(proc.communicate, timeout=30)
        err = "".join(early) + err
        assert time.monotonic() - asked < 20
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-2000:]
    assert "listening on" not in out
    events = [json.loads(line).get("event") for line in err.splitlines() if line.startswith("{")]
    assert "stop asked for during startup" in events and "node started" not in events


def children_of(pid: int) -> list[int]:
    """The pids whose parent is `pid` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
        except (OSError, ValueError, IndexError):  # gone meanwhile
            continue
    return found


async def test_a_stop_before_the_daemons_imports_end_is_kept_for_it(tmp_path: Path) -> None:
    """The launcher spawns the execution process, then imports the daemon (a second or more); a SIGTERM
    meanwhile ended the process at once with -15 (no handler yet). Now it is kept: a stop during startup."""
    command = [*CLI, "start", "--listen", "/ip4/127.0.0.1/tcp/0", "--data-dir", str(tmp_path / "node")]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(), cwd=ROOT)
    try:
        deadline = time.monotonic() + 30
        while not children_of(proc.pid):  # the execution process: spawned before the daemon's imports
            assert proc.poll() is None and time.monotonic() < deadline, "no execution process was spawned"
            await asyncio.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.to_thread(proc.communicate, timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-2000:]  # was -15
    assert "listening on" not in out
    events = [json.loads(line).get("event") for line in err.splitlines() if line.startswith("{")]
    assert "signal received" in events and "node started" not in events


async def test_a_node_whose_stderr_pipe_closed_still_stops_on_sigterm(tmp_path: Path) -> None:
    """`compute-node start 2>&1 | tee log`, then tee ends: every log line is a broken pipe, and the one the
    signal handler wrote before asking to stop kept the node running until SIGKILL."""
    command = [*CLI, "start", "--listen", "/ip4/127.0.0.1/tcp/0", "--data-dir", str(tmp_path / "node")]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(), cwd=ROOT)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = await asyncio.to_thread(proc.stdout.readline)
        assert line.startswith("listening on"), line
        proc.stderr.close()  # the reader of its log is gone
        await asyncio.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("damage", ["scratch_a_file", "lock_unwritable"])
def test_a_data_dir_the_node_cannot_write_stops_it_with_one_line_that_names_it(tmp_path: Path, damage: str) -> None:
    """A full or read-only data dir (a reviewer's tmpfs and bind mount): each failed with a bare traceback, the
    execution process's scratch folder from the launcher, the lock file's pid write from the server."""
    data = tmp_path / "node"
    data.mkdir()
    if damage == "scratch_a_file":
        (data / "scratch").write_text("a file where the scratch folders go")
        expected = f"cannot make an execution process's scratch folder in {data / 'scratch'}"
        preexec = None
    else:  # every write fails as on a full disk (EFBIG here), after the files are opened
        expected = f"cannot write {data / 'node.lock'}: File too large"

        def preexec() -> None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            import resource

            resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))

    started = subprocess.run(
        [*CLI, "start", "--listen", "/ip4/127.0.0.1/tcp/0", "--data-dir", str(data), "--http-port", "0"],
        env=cli_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        preexec_fn=preexec,
    )
    assert started.returncode == 1, started.stderr[-3000:]
    assert "Traceback" not in started.stderr, started.stderr[-3000:]
    last = started.stderr.strip().splitlines()[-1]
    assert last.startswith("compute-node: ") and expected in last, started.stderr[-3000:]
