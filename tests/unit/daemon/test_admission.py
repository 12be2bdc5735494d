"""Admission: capacity per model, busy answers, drain on shutdown."""

import asyncio
import time

import pytest

from node.daemon.admission import AcceptedTask, Admission, BusyError
from node.execution.protocol import DEADLINE_BEFORE_START
from node.wire.error_kinds import ErrorKind, TaskError
from tests.support.accepted_tasks import accepted_task as accepted


class Recorder:
    """Runs accepted tasks until released, recording what happened to each."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started: list[str] = []
        self.finished: list[str] = []
        self.abandoned: list[tuple[str, str]] = []
        self.kinds: dict[str, ErrorKind] = {}  # of the abandoned

    async def run(self, j: AcceptedTask) -> None:
        self.started.append(j.task.task_id)
        try:
            await self.release.wait()
            self.finished.append(j.task.task_id)
        except asyncio.CancelledError:
            self.abandoned.append((j.task.task_id, "cancelled while running"))
            raise

    async def abandon(self, j: AcceptedTask, reason: TaskError) -> None:
        self.abandoned.append((j.task.task_id, reason.text))
        self.kinds[j.task.task_id] = reason.kind


async def test_third_task_is_busy_with_one_run_permit_and_one_queue_place() -> None:
    rec = Recorder()
    admission = Admission(rec.run, rec.abandon, {"m": 1}, max_queue=1)
    admission.admit(accepted("a"))
    admission.admit(accepted("b"))
    with pytest.raises(BusyError, match="busy: model m") as busy:
        admission.admit(accepted("c"))
    assert busy.value.error == TaskError(ErrorKind.BUSY, "busy: model m has 1 running and 1 queued tasks")
    await asyncio.sleep(0.01)
    assert rec.started == ["a"]
    assert admission.capacity() == (0, 2)
    rec.release.set()
    await admission.drain(timeout=5)
    assert rec.finished == ["a", "b"]
    assert admission.pending == 0


async def test_capacity_is_per_model() -> None:
    rec = Recorder()
    admission = Admission(rec.run, rec.abandon, {"m": 1, "n": 1}, max_queue=0)
    admission.admit(accepted("a", "m"))
    admission.admit(accepted("b", "n"))
    with pytest.raises(BusyError):
        admission.admit(accepted("c", "m"))
    assert admission.capacity() == (0, 2)
    rec.release.set()
    await admission.drain(timeout=5)


async def test_drain_cancels_after_timeout_and_answers_new_work_busy() -> None:
    rec = Recorder()
    admission = Admission(rec.run, rec.abandon, {"m": 1}, max_queue=2)
    admission.admit(accepted("running"))
    admission.admit(accepted("queued"))
    await asyncio.sleep(0.01)
    started = time.monotonic()
    cancelled = await admission.drain(timeout=0.2)
    assert time.monotonic() - started < 2
    assert cancelled == 2
    assert ("running", "cancelled while running") in rec.abandoned
    assert any(task_id == "queued" and "before the task started" in reason for task_id, reason in rec.abandoned)
    assert rec.kinds["queued"] is ErrorKind.INTERRUPTED
    with pytest.raises(BusyError, match="shutting down"):
        admission.admit(accepted("late"))
    assert admission.capacity()[0] == 0


async def test_a_task_whose_deadline_passes_in_the_queue_is_answered_then_and_gives_its_place_back() -> None:
    # It waited for a run place however long the task before it ran, holding a queue place all along.
    rec = Recorder()
    admission = Admission(rec.run, rec.abandon, {"m": 1}, max_queue=1)
    admission.admit(accepted("long"))
    admission.admit(accepted("short", deadline_s=0.3))
    await asyncio.sleep(0.6)
    assert rec.abandoned == [("short", DEADLINE_BEFORE_START)]
    assert rec.kinds["short"] is ErrorKind.FAILED
    assert admission.capacity() == (1, 2) and admission.pending == 1
    admission.admit(accepted("next"))  # the place is free again
    rec.release.set()
    await admission.drain(timeout=5)
    assert rec.started == ["long", "next"] and rec.finished == ["long", "next"]
