"""Execution processes: a native crash or a runaway workflow costs one process, never the node.

Real nodes (in this test process) with real execution processes running the real
SmolLM2 model, a real client over TCP on 127.0.0.1, and real signals.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import structlog

from node.daemon.processes.pool import NoUsableModelError
from node.daemon.server import NodeServer
from node.execution.process import TEST_WRAPPER_ENV
from node.publisher.client import Client, Task
from tests.support.cluster import node_settings, running_node
from tests.support.exec_harness import MODEL, STORY, alive, children, harness, misbehave
from tests.support.exec_wrappers import (
    BOMB,
    FORGE_LOG,
    FORK,
    FORKED_PIDS_ENV,
    GRAMMAR_CRASH,
    SPIN,
)
from tests.support.model_file import SMOLLM2
from tests.support.nodeproc import NodeProcess, cli_env
from workflows import Simple


@pytest.fixture
def wrapped(monkeypatch: pytest.MonkeyPatch) -> None:
    misbehave(monkeypatch)


@pytest.mark.slow
@pytest.mark.asyncio
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSEGV], ids=["SIGKILL", "SIGSEGV"])
async def test_signal_mid_task_errors_its_tasks_restarts_and_serves_the_next(
    tmp_path: Path, sig: signal.Signals
) -> None:
    settings = node_settings(tmp_path, exec_crash_limit=2, heartbeat_interval=1.0)
    with structlog.testing.capture_logs() as logs:
        async with harness(settings) as h:
            long_id = await h.submit(STORY, timeout=120)  # time left to run again after one crash
            short_id = await h.submit(STORY, timeout=8)  # too little left: answered with the crash
            pid = await h.running(2)
            os.kill(pid, sig)
            assert await h.failure(short_id) == f"execution process crashed ({sig.name})"

            # The long task runs once more on the restarted process; crashing it again makes it poison.
            pid2 = await h.running(1, not_pid=pid)
            os.kill(pid2, sig)
            # Two crashes in the window: out of heartbeats.
            await h.until(lambda: h.server.running.pool.available() == [])
            assert h.server.running.parts.heartbeat.body().models == []
            reason = await h.failure(long_id)
            assert reason.startswith("Invalid prompt: ") and sig.name in reason

            await h.until(lambda: h.server.running.pool.available() == [MODEL])  # back once a restart holds
            result = await h.wait(await h.submit("Say hello.", timeout=60, max_tokens=16))
            assert result.text.strip()
            assert h.crashes(sig.name) == 2
            assert h.server.running.pool.process(MODEL).pid not in (pid, pid2)
            status = h.server._status()["execution"][MODEL]  # what /status shows
            assert status["up"] and status["pid"] == h.process().pid and status["crashes_in_window"] == 2
            h.assert_journal_all_ended([long_id, short_id])
    events = [entry["event"] for entry in logs]
    assert "model leaves the heartbeats: its execution process crashed too often" in events
    assert "model back in the heartbeats: its execution process restarted" in events
    ended = [entry for entry in logs if entry["event"] == "execution process ended"]
    assert [entry["cause"] for entry in ended] == [sig.name, sig.name]


@pytest.mark.slow
@pytest.mark.asyncio
async def test_interrupted_task_runs_once_more_and_succeeds(tmp_path: Path) -> None:
    async with harness(node_settings(tmp_path)) as h:
        task_id = await h.submit(STORY, timeout=120, max_tokens=64)
        os.kill(await h.running(1), signal.SIGKILL)
        result = await h.wait(task_id)
        assert result.text.strip()
        h.assert_journal_all_ended([task_id])


@pytest.mark.slow
@pytest.mark.asyncio
async def test_cpu_loop_is_stopped_at_max_time_while_heartbeats_keep_their_interval(
    tmp_path: Path, wrapped: None
) -> None:
    settings = node_settings(tmp_path, heartbeat_interval=1.0, exec_cancel_grace=2.0)
    async with harness(settings) as h:
        heartbeat = h.server.running.parts.heartbeat
        assert heartbeat is not None
        sent: list[float] = []
        publish = heartbeat.publish_once

        async def recording_publish() -> None:
            sent.append(time.monotonic())
            await publish()

        heartbeat.publish_once = recording_publish  # type: ignore[method-assign]
        spin_id = await h.submit(f"{SPIN} forever", timeout=60, max_time=2)
        pid = await h.running(1)
        reason = await h.failure(spin_id)
        assert reason.startswith("max_time exceeded")
        assert not alive(pid)  # it ignored the cancel: killed
        assert len(sent) >= 4
        gaps = [b - a for a, b in zip(sent, sent[1:])]
        assert max(gaps) < 4.0, gaps  # the spin lasts ~6 s (max_time + margin + grace)
        result = await h.wait(await h.submit("Say hello.", timeout=60, max_tokens=16))
        assert result.text.strip()
        h.assert_journal_all_ended([spin_id])


@pytest.mark.slow
@pytest.mark.asyncio
async def test_memory_bomb_is_killed_at_the_rss_limit(tmp_path: Path, wrapped: None) -> None:
    async with harness(node_settings(tmp_path, exec_max_rss_mb=700)) as h:
        bomb_id = await h.submit(f"{BOMB} now", timeout=120)
        pid = await h.running(1)
        reason = await h.failure(bomb_id)  # killed at the limit, ran once more, killed again: poison
        assert reason.startswith("Invalid prompt: ") and "memory" in reason
        assert h.crashes("memory") == 2
        assert not alive(pid)
        result = await h.wait(await h.submit("Say hello.", timeout=60, max_tokens=16))
        assert result.text.strip()


@pytest.mark.slow
@pytest.mark.asyncio
async def test_memory_bomb_on_default_settings_is_killed_by_the_derived_limit(tmp_path: Path, wrapped: None) -> None:
    settings = node_settings(tmp_path)
    assert settings.exec_max_rss_mb is None and settings.exec_address_space_mb is None  # "auto"
    async with harness(settings) as h:
        limit = h.process().ready.max_rss_mb
        # SmolLM2's file twice and its KV cache (n_ctx 1024 x 5 contexts), a quarter more, + 512 MiB.
        assert 700 < limit < 1200, limit
        pid = h.process().pid
        bomb_id = await h.submit(f"{BOMB} now", timeout=120)
        reason = await h.failure(bomb_id)  # killed at the limit, ran once more, killed again: poison
        assert reason.startswith("Invalid prompt: ") and "memory" in reason
        assert h.crashes("memory") == 2
        assert not alive(pid)
        await h.until(lambda: h.process() is not None and h.process().pid != pid)  # the model restarted
        result = await h.wait(await h.submit("Say hello.", timeout=60, max_tokens=16))
        assert result.text.strip()


@pytest.mark.slow
@pytest.mark.asyncio
async def test_a_task_that_crashes_its_process_twice_is_poison_and_the_task_beside_it_is_not(
    tmp_path: Path, wrapped: None
) -> None:
    # Both tasks are on the process each time the bomb kills it. Before, every task on it counted both crashes:
    # the honest one was answered "Invalid prompt: ... crashed its execution process twice" too.
    async with harness(node_settings(tmp_path)) as h:
        honest_id = await h.submit(STORY, timeout=180, max_tokens=800)
        await h.running(1)
        bomb_id = await h.submit(f"{BOMB} now", timeout=180)
        reason = await h.failure(bomb_id, timeout=180)
        assert reason.startswith("Invalid prompt: ") and "twice (memory)" in reason
        result = await h.wait(honest_id, timeout=180)
        assert result.text.strip()
        assert h.crashes("memory") == 2


@pytest.mark.slow
@pytest.mark.asyncio
async def test_an_exit_is_seen_though_a_forked_process_keeps_the_socket(
    tmp_path: Path, wrapped: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unconfined (the sandbox refuses fork): a process that forks, and leaves the fork holding its socket to the
    daemon, still ends as an exit; its task is answered and the next task runs on a new process."""
    pids = tmp_path / "forked.pids"
    monkeypatch.setenv(FORKED_PIDS_ENV, str(pids))
    try:
        async with harness(node_settings(tmp_path / "node", sandbox="off")) as h:
            first = h.process().pid
            reason = await h.failure(await h.submit(f"{FORK} now", timeout=60), timeout=60)
            assert "crashed" in reason and "exit code 3" in reason, reason
            result = await h.wait(await h.submit("Say hi.", timeout=60, max_tokens=8), timeout=60)
            assert result.text.strip() and h.process().pid != first
    finally:
        for pid in pids.read_text().split() if pids.exists() else []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.asyncio
async def test_memory_bomb_fails_at_the_address_space_limit_and_the_process_lives_on(
    tmp_path: Path, wrapped: None
) -> None:
    # The RSS guard off: this is the address-space limit's test alone.
    async with harness(node_settings(tmp_path, exec_address_space_mb=1536, exec_max_rss_mb=0)) as h:
        pid = h.process().pid
        bomb_id = await h.submit(f"{BOMB} now", timeout=120)
        assert (await h.failure(bomb_id)).startswith("out of memory")
        result = await h.wait(await h.submit("Say hello.", timeout=60, max_tokens=16))
        assert result.text.strip()
        assert h.process().pid == pid  # the limit failed the allocation; nothing had to be killed


@pytest.mark.slow
@pytest.mark.asyncio
async def test_grammar_that_crashes_llama_cpp_costs_one_restart(tmp_path: Path, wrapped: None) -> None:
    async with harness(node_settings(tmp_path)) as h:
        crash_id = await h.submit(f"{GRAMMAR_CRASH} please", timeout=8)
        pid = h.process().pid
        assert await h.failure(crash_id) == "execution process crashed (SIGABRT)"
        assert h.crashes("SIGABRT") == 1
        await h.until(lambda: h.process() is not None and h.process().pid != pid)
        result = await h.wait(await h.submit("Say hello.", timeout=60, max_tokens=16))
        assert result.text.strip()
        h.assert_journal_all_ended([crash_id])


@pytest.mark.slow
@pytest.mark.asyncio
async def test_an_execution_process_that_crashes_at_start_names_the_model_and_the_signal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TEST_WRAPPER_ENV, "tests.support.exec_wrappers:crash_at_start")
    registry = {"crashy": {"path": str(SMOLLM2)}}
    with structlog.testing.capture_logs() as logs:
        async with running_node(node_settings(tmp_path / "a", models=[MODEL, "crashy"], registry=registry)) as server:
            assert server.running.pool.hosted == [MODEL]  # started without the crashing model
            assert server.running.parts.heartbeat.body().models == [MODEL]
    skipped = [entry for entry in logs if entry["event"] == "model skipped"]
    assert [entry["error"] for entry in skipped] == [
        "model crashy: the execution process crashed while loading (SIGSEGV)"
    ]

    server = NodeServer(node_settings(tmp_path / "b", models=["crashy"], registry=registry))
    try:
        with pytest.raises(
            NoUsableModelError, match=r"model crashy: the execution process crashed while loading \(SIGSEGV\)"
        ):
            await server.startup()
    finally:
        await server.shutdown()


@pytest.mark.slow
def test_daemon_holds_no_llama_cpp_and_its_execution_process_dies_with_it(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path)
    try:
        spawned = children(node.proc.pid)
        assert len(spawned) == 1  # one model, one execution process
        # llama.cpp lives in the execution process only; the daemon never loads it.
        assert "libllama" not in Path(f"/proc/{node.proc.pid}/maps").read_text()
        assert "libllama" in Path(f"/proc/{spawned[0]}/maps").read_text()
        node.proc.kill()
        node.proc.wait(30)
        deadline = time.monotonic() + 30
        while alive(spawned[0]):
            assert time.monotonic() < deadline, "execution process outlived its daemon"
            time.sleep(0.05)
    finally:
        if node.proc.poll() is None:
            node.stop()


@pytest.mark.slow
async def test_a_line_a_taken_over_process_writes_to_stderr_is_logged_as_that_process_s(tmp_path: Path) -> None:
    """The execution process's stderr goes through the daemon: a line dressed as the daemon's ("node stopped") is
    logged with the process named (`exec_pid`, set by the daemon), and the node serves on."""
    node = NodeProcess(tmp_path, env=cli_env(**{TEST_WRAPPER_ENV: "tests.support.exec_wrappers:misbehave"}))
    try:
        child = children(node.proc.pid)[0]
        async with Client(peers=[node.addr]) as client:
            task = Task(workflow=Simple().workflow(f"{FORGE_LOG} Hi", max_tokens=4), models=[MODEL])
            assert (await client.execute(task, timeout=60)).text
        forged = await asyncio.to_thread(node.wait_for_log, "node stopped", 30)
        assert forged["exec_pid"] == child and forged["exec_model"] == MODEL and forged["forged"] == "\x1b[2J"
        ready = node.wait_for_log("execution process ready")  # the child's own lines carry it too
        assert ready["exec_pid"] == child == ready["pid"]
        assert node.proc.poll() is None
    finally:
        node.stop()


# Run as PID 1 of a fresh PID namespace, as a container runs the daemon: spawn an execution
# process the way handle.py does and ask it to configure a model that does not exist.
_AS_PID_1 = """
import os, socket, subprocess, sys
from node.execution.protocol import Configure, decode_from_child, encode
parent, child = socket.socketpair()
proc = subprocess.Popen(
    [sys.executable, "-m", "node.execution.process", "--fd", str(child.fileno()),
     "--parent-pid", str(os.getpid())],
    pass_fds=(child.fileno(),), start_new_session=True,
)
child.close()
parent.sendall(encode(Configure(model="no-such-model", settings={"data_dir": sys.argv[1]})))
answer = parent.makefile("rb").readline()
print(os.getpid(), decode_from_child(answer).kind if answer else "nothing", proc.wait(30))
"""


@pytest.mark.slow
def test_an_execution_process_under_a_pid_1_daemon_does_not_take_itself_for_an_orphan(tmp_path: Path) -> None:
    """Its parent's pid is 1 (a container): it serves all the same, and ends at the socket's end."""
    unshare = ["unshare", "--pid", "--fork", "--mount-proc"]
    if subprocess.run([*unshare, "true"], capture_output=True).returncode != 0:
        pytest.skip("no PID namespaces here (unshare needs CAP_SYS_ADMIN)")
    run = subprocess.run(
        [*unshare, sys.executable, "-c", _AS_PID_1, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert run.stdout.split() == ["1", "load_failed", "0"], run.stderr[-2000:]
