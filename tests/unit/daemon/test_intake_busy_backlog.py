"""Busy error results of gossip tasks are bounded: while their publishes are held back, at most
`MAX_BUSY_ANSWERS` wait, each without its task's workflow; past that a busy task is ignored and its id
forgotten (it may come back), whatever number of keys sends them."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from node.daemon.acceptance import Acceptance, SeenTasks
from node.daemon.admission import AcceptedTask, Admission
from node.daemon.intake import MAX_BUSY_ANSWERS, TaskIntake
from node.daemon.journal import Journal
from node.ops.metrics import NodeMetrics
from node.wire.direct import AnswerStatus
from node.wire.envelope import seal
from node.wire.identity import Identity
from node.wire.inbound import Inbound, decode
from node.wire.topics import TASK_TOPIC

MODEL = "m"
# A workflow as big as a message allows in objects: what a waiting answer must not keep.
HEAVY_WORKFLOW: dict[str, object] = {"steps": [[[]] for _ in range(2_000)]}


class HeldPublishes:
    """A runner whose error results wait until `release` (a mesh that holds publishes back)."""

    def __init__(self) -> None:
        self.released = asyncio.Event()
        self.abandoned: list[AcceptedTask] = []

    async def run(self, accepted: AcceptedTask) -> None:
        raise AssertionError("a paused node runs nothing")

    async def abandon(self, accepted: AcceptedTask, reason: str) -> None:
        self.abandoned.append(accepted)
        await self.released.wait()


def task_from_a_fresh_key(task_id: str) -> Inbound:
    publisher = Identity.generate()
    body = {
        "taskId": task_id,
        "deadline": time.time_ns() + 600 * 10**9,
        "input": {"workflow": HEAVY_WORKFLOW, "model": [MODEL]},
        "publicKey": publisher.public_key_compressed.hex(),
    }
    return decode(TASK_TOPIC, seal(publisher, TASK_TOPIC, json.dumps(body).encode()))


async def test_busy_answers_waiting_for_their_publish_are_bounded_and_hold_no_workflow(tmp_path: Path) -> None:
    node = Identity.generate()
    runner = HeldPublishes()
    admission = Admission(runner.run, runner.abandon, {MODEL: 1}, 0, paused=lambda: True)  # every task is busy
    journal = Journal.open(tmp_path / "journal.sqlite3")
    acceptance = Acceptance(node.address, [MODEL], seen=SeenTasks(10_000))
    intake = TaskIntake(acceptance, admission, journal, runner, NodeMetrics(), 10.0)  # type: ignore[arg-type]
    try:
        answers = [intake.take(task_from_a_fresh_key(f"t{i}")) for i in range(MAX_BUSY_ANSWERS + 40)]
        await asyncio.sleep(0)  # the answers start and wait

        assert [a.status for a in answers[:MAX_BUSY_ANSWERS]] == [AnswerStatus.BUSY] * MAX_BUSY_ANSWERS
        assert {(a.status, a.reason) for a in answers[MAX_BUSY_ANSWERS:]} == {(AnswerStatus.IGNORED, "busy_backlog")}
        assert len(runner.abandoned) == MAX_BUSY_ANSWERS
        assert all(accepted.task.input.workflow == {} for accepted in runner.abandoned)
        assert {accepted.task.task_id for accepted in runner.abandoned} == {f"t{i}" for i in range(MAX_BUSY_ANSWERS)}
        assert journal.get(f"t{MAX_BUSY_ANSWERS}") is None  # an ignored task leaves no row

        # Once the publishes go out there is room again, and an ignored task's id was forgotten: it may come back.
        runner.released.set()
        for _ in range(100):
            await asyncio.sleep(0)
        again = intake.take(task_from_a_fresh_key(f"t{MAX_BUSY_ANSWERS}"))
        assert again.status is AnswerStatus.BUSY
        await asyncio.sleep(0)
        assert runner.abandoned[-1].task.task_id == f"t{MAX_BUSY_ANSWERS}"
    finally:
        runner.released.set()
        await intake.close()
        journal.close()


async def test_a_task_answered_busy_on_its_stream_is_counted(tmp_path: Path) -> None:
    # received = taken + ignored + busy: a busy direct task showed in no counter but `received`
    runner = HeldPublishes()
    admission = Admission(runner.run, runner.abandon, {MODEL: 1}, 0, paused=lambda: True)
    journal = Journal.open(tmp_path / "journal.sqlite3")
    metrics = NodeMetrics()
    intake = TaskIntake(  # type: ignore[arg-type]
        Acceptance(Identity.generate().address, [MODEL], seen=SeenTasks(100)), admission, journal, runner, metrics, 10.0
    )
    try:
        answer = intake.take(task_from_a_fresh_key("t1"), direct=True)
        assert (answer.status, answer.reason) == (AnswerStatus.BUSY, "paused")
        assert metrics.tasks_busy.labels(reason="paused")._value.get() == 1  # noqa: SLF001 - prometheus_client
    finally:
        runner.released.set()
        await intake.close()
        journal.close()
