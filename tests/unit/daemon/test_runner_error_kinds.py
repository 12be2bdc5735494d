"""The runner's error results: the text each sends (as before the kinds) and the ledger outcome its kind gives. The
kind is the daemon's where it made the error (busy, a shutdown, a poison task, its process stopped) and read once
from the execution process's text. Real TaskRunner and Ledger rows; the process, the outbox and the ledger's store
stand in."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from node.daemon.admission import BusyError
from node.daemon.ledger import LedgerEntry
from node.daemon.processes.exits import ExecutionProcessExitError
from node.daemon.runner import TaskRunner
from node.execution.protocol import RunTask, TaskDone, TaskFailed
from node.ops.metrics import NodeMetrics
from node.wire.error_kinds import ErrorKind, TaskError
from node.wire.results import ResultBody
from tests.support.accepted_tasks import accepted_task
from workflows.options import DEFAULT_MAX_TIME_S

Answer = Callable[[RunTask], TaskDone | TaskFailed]


class ScriptedPool:
    """An execution process whose answer to each run is the next of `answers` (an exception is raised)."""

    def __init__(self, *answers: Answer | BaseException) -> None:
        self.answers = list(answers)

    async def run(self, model: str, request: RunTask, on_delta: object) -> TaskDone | TaskFailed:
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer(request)


class Outbox:
    def __init__(self) -> None:
        self.routes: set[str] = set()
        self.errors: list[str | None] = []

    async def send(self, body: ResultBody, ledger_entry: str | None = None) -> None:
        self.errors.append(body.error)


class Rows:
    def __init__(self) -> None:
        self.rows: list[LedgerEntry] = []

    def record(self, row: LedgerEntry) -> None:
        self.rows.append(row)


def failed(error: str) -> Answer:
    return lambda request: TaskFailed(task_id=request.task_id, error=error)


def exited(error: TaskError, crash: bool) -> ExecutionProcessExitError:
    return ExecutionProcessExitError(error, crash=crash, cause="SIGSEGV" if crash else "stopped")


def runner_of(pool: ScriptedPool) -> tuple[TaskRunner, Outbox, Rows]:
    outbox, rows = Outbox(), Rows()
    runner = TaskRunner(pool, outbox, NodeMetrics(), DEFAULT_MAX_TIME_S, 1.0, ledger=rows)  # type: ignore[arg-type]
    return runner, outbox, rows


@pytest.mark.parametrize(
    ("answers", "error", "outcome"),
    [
        (
            (failed("Invalid prompt: invalid workflow: tasks: empty"),),
            "Invalid prompt: invalid workflow: tasks: empty",
            "invalid_prompt",
        ),
        (
            (failed("interrupted: execution process stopping"),),
            "interrupted: execution process stopping",
            "interrupted",
        ),
        ((failed("model error: out of memory"),), "model error: out of memory", "error"),
        (
            (exited(TaskError.of(ErrorKind.INTERRUPTED, "execution process stopped"), crash=False),) * 2,
            "interrupted: execution process stopped",  # ran once more, then stopped again: no more reruns
            "interrupted",
        ),
        (
            (exited(TaskError(ErrorKind.FAILED, "execution process crashed (SIGSEGV)"), crash=True),) * 2,
            "Invalid prompt: the task crashed its execution process twice (SIGSEGV)",
            "invalid_prompt",
        ),
        ((RuntimeError("a bug"),), "internal error: RuntimeError", "error"),
    ],
    ids=["child-invalid-prompt", "child-interrupted", "child-failed", "process-stopped", "poison", "bug"],
)
async def test_each_failure_sends_its_text_and_records_its_kinds_outcome(
    answers: tuple[Answer | BaseException, ...], error: str, outcome: str
) -> None:
    runner, outbox, rows = runner_of(ScriptedPool(*answers))
    await runner.run(accepted_task("t"))
    assert outbox.errors == [error]
    assert [(row.outcome, row.error) for row in rows.rows] == [(outcome, error)]


async def test_a_busy_task_abandoned_is_busy_in_the_ledger() -> None:
    runner, outbox, rows = runner_of(ScriptedPool())
    await runner.abandon(accepted_task("t"), BusyError("node is paused").error)
    assert outbox.errors == ["busy: node is paused"]
    assert [(row.outcome, row.error) for row in rows.rows] == [("busy", "busy: node is paused")]


async def test_a_task_cancelled_by_the_shutdown_is_interrupted() -> None:
    started = asyncio.Event()

    class Hanging(ScriptedPool):
        async def run(self, model: str, request: RunTask, on_delta: object) -> TaskDone | TaskFailed:
            started.set()
            await asyncio.Event().wait()  # until cancelled
            raise AssertionError("not reached")

    runner, outbox, rows = runner_of(Hanging())
    running = asyncio.create_task(runner.run(accepted_task("t")))
    await started.wait()
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert outbox.errors == ["interrupted: node shutting down"]
    assert [row.outcome for row in rows.rows] == ["interrupted"]
