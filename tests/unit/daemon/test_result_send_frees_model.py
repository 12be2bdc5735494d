"""A task gives its model's run place back when its execution ends, before its result is written: a publisher that
reads its stream slowly (the write may wait `write_timeout_s`, 10 s, after the answer and progress waits) held the
model idle meanwhile, and every task queued behind it waited. Real Admission and TaskRunner; the execution process
and the outbox stand in (an instant answer; a send that waits until the test lets it go)."""

from __future__ import annotations

import asyncio
import time

from node.daemon.admission import Admission
from node.daemon.runner import TaskRunner
from node.execution.protocol import RunTask, TaskDone
from node.ops.metrics import NodeMetrics
from node.wire.results import ResultBody
from tests.support.accepted_tasks import accepted_task
from workflows.options import DEFAULT_MAX_TIME_S

MODEL = "m"


class InstantPool:
    """An execution process that answers every task at once, recording the order it got them in."""

    def __init__(self) -> None:
        self.ran: list[str] = []

    async def run(self, model: str, request: RunTask, on_delta: object) -> TaskDone:
        self.ran.append(request.task_id)
        return TaskDone(task_id=request.task_id, text="done", steps=1, prompt_tokens=1, completion_tokens=1)


class SlowStreamOutbox:
    """Writes each result to a publisher that reads it only when the test says so."""

    def __init__(self) -> None:
        self.routes: set[str] = set()
        self.sending: list[str] = []
        self.read = asyncio.Event()

    async def send(self, body: ResultBody, ledger_entry: str | None = None) -> None:
        self.sending.append(body.task_id)
        await self.read.wait()


async def test_a_result_waiting_for_its_reader_leaves_the_model_to_the_next_task() -> None:
    pool, outbox = InstantPool(), SlowStreamOutbox()
    runner = TaskRunner(pool, outbox, NodeMetrics(), DEFAULT_MAX_TIME_S, cancel_grace_s=1.0)  # type: ignore[arg-type]
    admission = Admission(runner.run, runner.abandon, {MODEL: 1}, max_queue=2)
    for task_id in ("slow-reader", "next", "after"):
        admission.admit(accepted_task(task_id))
    try:
        deadline = time.monotonic() + 5
        while len(outbox.sending) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert pool.ran == ["slow-reader", "next", "after"]  # was: ["slow-reader"] until its result was read
        assert admission.capacity() == (0, 3)  # each still holds its place until its result is out
    finally:
        outbox.read.set()
    assert await admission.drain(timeout=5) == 0
    assert admission.pending == 0


async def test_a_task_still_runs_within_its_models_places() -> None:
    running, most = 0, 0
    release = asyncio.Event()

    class HeldPool(InstantPool):
        async def run(self, model: str, request: RunTask, on_delta: object) -> TaskDone:
            nonlocal running, most
            running += 1
            most = max(most, running)
            await release.wait()
            running -= 1
            return await super().run(model, request, on_delta)

    outbox = SlowStreamOutbox()
    outbox.read.set()
    runner = TaskRunner(HeldPool(), outbox, NodeMetrics(), DEFAULT_MAX_TIME_S, cancel_grace_s=1.0)  # type: ignore[arg-type]
    admission = Admission(runner.run, runner.abandon, {MODEL: 2}, max_queue=4)
    for i in range(6):
        admission.admit(accepted_task(f"t{i}"))
    await asyncio.sleep(0.2)
    assert running == 2
    release.set()
    assert await admission.drain(timeout=5) == 0
    assert most == 2 and len(outbox.sending) == 6
