"""Real nodes for the execution-process tests (tests/e2e/test_execution.py, test_exec_bounds.py): a node in this
process with real execution processes on SmolLM2, a client over TCP on 127.0.0.1, and what the tests ask of them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from config.settings import Settings
from node.daemon.journal import TaskState
from node.daemon.server import NodeServer
from node.execution.process import TEST_WRAPPER_ENV
from node.publisher.client import Client, Task, TaskFailedError, TaskResult
from tests.support.cluster import dialable, running_node
from workflows import Simple

MODEL = "smollm2:135m"
STORY = "Write a long story about a dragon who learns to bake bread, with many details."


class Harness:
    """A node and a client of it."""

    def __init__(self, server: NodeServer, client: Client) -> None:
        self.server = server
        self.client = client
        self.address = server.running.identity.address

    async def submit(self, prompt: str, timeout: float, max_tokens: int = 300, max_time: float | None = None) -> str:
        workflow = Simple().workflow(prompt=prompt, max_tokens=max_tokens)
        if max_time is not None:
            workflow["config"]["max_time"] = max_time
        return await self.client.submit(Task(workflow=workflow, models=[MODEL], nodes=[self.address]), timeout)

    async def wait(self, task_id: str, timeout: float = 60) -> TaskResult:
        return await self.client.wait(task_id, timeout, nodes=[self.address])

    async def failure(self, task_id: str, timeout: float = 60) -> str:
        with pytest.raises(TaskFailedError) as failed:
            await self.wait(task_id, timeout)
        return failed.value.reason

    def process(self) -> Any:
        return self.server.running.pool.process(MODEL)

    async def until(self, condition: Callable[[], bool], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "condition not reached in time"
            await asyncio.sleep(0.02)

    async def running(self, count: int, not_pid: int | None = None) -> int:
        """Wait until the model's process (not `not_pid`) holds `count` tasks; its pid."""

        def ready() -> bool:
            process = self.process()
            return process is not None and process.pid != not_pid and process.running >= count

        await self.until(ready)
        return self.process().pid

    def crashes(self, cause: str) -> float:
        value = self.server.metrics.registry.get_sample_value(
            "compute_node_exec_crashes_total", {"model": MODEL, "cause": cause}
        )
        return value or 0.0

    def assert_journal_all_ended(self, task_ids: list[str]) -> None:
        journal = self.server.running.journal
        assert journal.interrupted() == []
        for task_id in task_ids:
            entry = journal.get(task_id)
            assert entry is not None and entry.state in (TaskState.FINISHED, TaskState.PUBLISHED), task_id


@asynccontextmanager
async def harness(settings: Settings) -> AsyncIterator[Harness]:
    async with running_node(settings) as server:
        async with Client(peers=[dialable(server)]) as client:
            yield Harness(server, client)


def misbehave(monkeypatch: pytest.MonkeyPatch) -> None:
    """Execution processes run tests/support/exec_wrappers.py's misbehaving runtime (its prompt markers)."""
    monkeypatch.setenv(TEST_WRAPPER_ENV, "tests.support.exec_wrappers:misbehave")
    monkeypatch.setenv("GGML_NO_BACKTRACE", "1")


def children(pid: int) -> list[int]:
    return [int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()]


def alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
