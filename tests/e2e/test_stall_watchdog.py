"""The stall watchdog: a decode loop stuck in a native call costs its own task, not the model.

Real nodes (in this test process) with real execution processes running SmolLM2
through the test wrapper `tests.support.exec_wrappers:misbehave`, whose markers make
the decode loop's thread block in libc's sleep() (the GIL released, as llama.cpp's
grammar engine does): while sampling the marked task's token (#stall), or while
decoding a batch holding its tokens (#stall-decode). Default watchdog settings.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import structlog

from config.settings import Settings
from node.daemon.server import NodeServer
from node.execution.process import TEST_WRAPPER_ENV
from node.publisher.client import Client, Task, TaskFailedError, TaskResult
from tests.support.cluster import dialable, node_settings, running_node
from tests.support.exec_wrappers import SPIN, STALL, STALL_DECODE
from workflows import Simple

MODEL = "smollm2:135m"


class Node:
    def __init__(self, server: NodeServer, client: Client) -> None:
        self.server = server
        self.client = client
        self.address = server.running.identity.address
        self.pool = server.running.pool
        self.parts = server.running.parts

    async def submit(self, prompt: str, timeout: float, max_tokens: int = 16, max_time: float | None = None) -> str:
        workflow = Simple().workflow(prompt=prompt, max_tokens=max_tokens)
        if max_time is not None:
            workflow["config"]["max_time"] = max_time
        return await self.client.submit(Task(workflow=workflow, models=[MODEL], nodes=[self.address]), timeout)

    async def wait(self, task_id: str, timeout: float = 90) -> TaskResult:
        return await self.client.wait(task_id, timeout, nodes=[self.address])

    async def failure(self, task_id: str, timeout: float = 90) -> str:
        with pytest.raises(TaskFailedError) as failed:
            await self.wait(task_id, timeout)
        return failed.value.reason

    def pid(self) -> int | None:
        process = self.pool.process(MODEL)
        return process.pid if process is not None else None

    async def until(self, condition: Callable[[], bool], timeout: float = 60) -> float:
        """Wait for `condition`; the monotonic time it held."""
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "condition not reached in time"
            await asyncio.sleep(0.05)
        return time.monotonic()

    def stalled(self) -> bool:
        """Out of the heartbeats and /healthz: what a stalling model must look like."""
        heartbeat = self.parts.heartbeat.body()
        return heartbeat.models == [] and heartbeat.capacity.max == 0 and not self.parts.monitor.health().ok

    def metric(self, name: str, labels: dict[str, str]) -> float:
        return self.server.metrics.registry.get_sample_value(name, labels) or 0.0


@asynccontextmanager
async def _node(settings: Settings) -> AsyncIterator[Node]:
    async with running_node(settings) as server:
        async with Client(peers=[dialable(server)]) as client:
            yield Node(server, client)


@pytest.fixture
def wrapped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TEST_WRAPPER_ENV, "tests.support.exec_wrappers:misbehave")


def _stall_logs(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == "execution process stalled; killing it"]


@pytest.mark.slow
@pytest.mark.asyncio
async def test_task_stalling_its_sampler_gets_invalid_prompt_and_its_co_runner_is_answered(
    tmp_path: Path, wrapped: None
) -> None:
    settings = node_settings(tmp_path, heartbeat_interval=1.0)
    bound = settings.exec_stall_timeout
    with structlog.testing.capture_logs() as logs:
        async with _node(settings) as node:
            first_pid = node.pid()
            assert node.parts.heartbeat.body().models == [MODEL] and node.parts.monitor.health().ok
            submitted_at = time.monotonic()
            stall_id = await node.submit(f"{STALL} say yes", timeout=120)
            stalled_at = await node.until(node.stalled)
            honest_id = await node.submit("Say hello.", timeout=60)
            sent_at = time.monotonic()
            killed_at = await node.until(lambda: node.pid() != first_pid)
            restarted_at = await node.until(lambda: node.pid() not in (None, first_pid))
            reason = await node.failure(stall_id)
            answer = await node.wait(honest_id)
            answered_at = time.monotonic()
            assert answer.text.strip()
            assert reason == "Invalid prompt: the task stalled its execution process (no progress in its native calls)"
            await node.until(lambda: not node.stalled())  # back in the heartbeats once restarted
            assert node.metric("compute_node_exec_stalls_total", {"model": MODEL, "call": "sample"}) == 1
            assert node.metric("compute_node_exec_crashes_total", {"model": MODEL, "cause": "stalled"}) == 0
            assert node.pool.available() == [MODEL]
    [stall] = _stall_logs(logs)
    assert stall["suspects"] == [stall_id] and stall["sole_suspect"] and stall["call"] == "sample"
    assert bound <= stall["stalled_s"] < bound + 5  # past the bound (rounded to 0.1 s), probed every second
    reruns = [e["task_id"] for e in logs if e["event"] == "task runs again after its execution process ended"]
    assert reruns == [honest_id]  # the co-runner ran again; the suspect did not
    print(  # for the record: -s shows how long each part took
        f"\nstall task sent at 0 s: out of heartbeats {stalled_at - submitted_at:.1f} s, process killed"
        f" {killed_at - submitted_at:.1f} s ({stall['stalled_s']} s into the stalled call),"
        f" restarted {restarted_at - killed_at:.1f} s later; honest task sent at {sent_at - submitted_at:.1f} s,"
        f" answered {answered_at - sent_at:.1f} s after it was sent"
    )


@pytest.mark.slow
@pytest.mark.asyncio
async def test_task_stalling_a_batch_decode_twice_gets_invalid_prompt_and_the_innocent_is_never_blamed(
    tmp_path: Path, wrapped: None
) -> None:
    with structlog.testing.capture_logs() as logs:
        async with _node(node_settings(tmp_path, heartbeat_interval=1.0)) as node:
            # One honest task first: the decode bound comes from measured decodes (no benchmark in tests).
            assert (await node.wait(await node.submit("Say hi.", timeout=60))).text.strip()
            first_pid = node.pid()
            stall_id = await node.submit(f"{STALL_DECODE} say yes", timeout=120)
            await node.until(node.stalled)
            honest_id = await node.submit("Say hello.", timeout=90)  # queued behind the stalled batch
            await node.until(lambda: node.pid() not in (None, first_pid))
            # The suspect runs again alone, after the innocent co-runner; stalling again is its second strike.
            answer = await node.wait(honest_id)
            assert answer.text.strip()
            reason = await node.failure(stall_id)
            assert reason == "Invalid prompt: the task stalled its execution process (no progress in its native calls)"
            assert node.metric("compute_node_exec_stalls_total", {"model": MODEL, "call": "decode"}) == 2
            await node.until(lambda: not node.stalled())
            result = await node.wait(await node.submit("Say hi.", timeout=60))
            assert result.text.strip()
    stalls = _stall_logs(logs)
    assert [(s["call"], s["suspects"], s["sole_suspect"]) for s in stalls] == [("decode", [stall_id], False)] * 2
    print(f"\ndecode stalls (seconds, bound): {[(s['stalled_s'], s['bound_s']) for s in stalls]}")
    reruns = [e["task_id"] for e in logs if e["event"] == "task runs again after its execution process ended"]
    assert sorted(reruns) == sorted([honest_id, stall_id])


@pytest.mark.slow
@pytest.mark.asyncio
async def test_task_past_max_time_that_does_not_stop_is_killed_and_its_co_runner_runs_again(
    tmp_path: Path, wrapped: None
) -> None:
    settings = node_settings(tmp_path)
    with structlog.testing.capture_logs() as logs:
        async with _node(settings) as node:
            first_pid = node.pid()
            submitted_at = time.monotonic()
            spin_id = await node.submit(f"{SPIN} forever", timeout=120, max_time=2)  # holds the child's event loop
            honest_id = await node.submit("Say hello.", timeout=90)
            killed_at = await node.until(lambda: node.pid() != first_pid)
            assert (await node.failure(spin_id)).startswith("max_time exceeded")
            answer = await node.wait(honest_id)
            assert answer.text.strip()
    # max_time + the daemon's margin + exec_cancel_grace, then the kill (generous: a loaded machine)
    assert killed_at - submitted_at < 2 + 2 + settings.exec_cancel_grace + 10
    reruns = [e["task_id"] for e in logs if e["event"] == "task runs again after its execution process ended"]
    assert reruns == [honest_id]
