"""Task intake: where a task enters the node, from gossip or from a direct-delivery stream.

For each task that decodes: the acceptance rules decide (`acceptance.py`); an
accepted task is recorded in the journal, then admitted to run, or answered
busy (an error result "busy: ..."). A task that cannot be journalled (full
disk, a locked file) is not accepted; the journal itself never runs out of
room (see its docstring), so no number of publishers' keys makes it turn
one away. One failing task never stops the intake.
A task that came on a stream (`take(..., direct=True)`) and finds no capacity is
answered `busy` on its stream instead: it is not journalled and its id is
forgotten, so that it may come back; it is never run twice either way.
A busy task from gossip gets its error result only while fewer than `MAX_BUSY_ANSWERS` wait for
their publish (a slow mesh can hold publishes back, and valid tasks from fresh keys cost their
sender nothing); past that it is ignored as `busy_backlog`, its id forgotten, as on a stream.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from dataclasses import dataclass, replace
from typing import Any

import structlog

from node.daemon.acceptance import Acceptance, Ignore
from node.daemon.admission import AcceptedTask, Admission, BusyError
from node.daemon.journal import Journal
from node.daemon.journal_file import JournalError
from node.daemon.runner import TaskRunner
from node.ops.metrics import NodeMetrics
from node.p2p.handoff import GossipMessage
from node.wire.direct import AnswerStatus
from node.wire.inbound import Inbound, LogWindow, consume
from node.wire.messages import TaskBody
from node.wire.topics import TASK_TOPIC

log = structlog.get_logger(__name__)

MAX_BUSY_ANSWERS = 256  # busy error results waiting for their publish, at most


@dataclass(frozen=True)
class IntakeAnswer:
    """What the intake did with one task: the status a stream answer carries, and a short reason code."""

    status: AnswerStatus
    reason: str = ""


ACCEPTED = IntakeAnswer(AnswerStatus.ACCEPTED)


class TaskIntake:
    """Decide -> journal -> admit (or answer busy), for every task the node receives."""

    def __init__(
        self,
        acceptance: Acceptance,
        admission: Admission,
        journal: Journal,
        runner: TaskRunner,
        metrics: NodeMetrics,
        log_window_s: float,
    ) -> None:
        self.acceptance = acceptance
        self._admission = admission
        self._journal = journal
        self._runner = runner
        self._metrics = metrics
        self._journal_log = LogWindow(log_window_s)  # a full disk fails every task: log it once a window
        self._busy_log = LogWindow(log_window_s)  # a busy stream costs its peer nothing: once a window too
        self._busy_answers: set[asyncio.Task[None]] = set()  # busy error results on their way to the outbox

    async def run(self, queue: asyncio.Queue[GossipMessage]) -> None:
        """Receive every task from the topic's queue, until cancelled."""
        await consume(queue, TASK_TOPIC, self.receive, self._on_error)

    async def close(self) -> None:
        """Cancel the busy error results still being sent (their results stay in the journal)."""
        for answer in self._busy_answers:
            answer.cancel()
        await asyncio.gather(*self._busy_answers, return_exceptions=True)

    def receive(self, inbound: Inbound) -> None:
        """One task from gossip, verified and decoded: accept it (journal, admit) or say why not."""
        self.take(inbound)

    def take(self, inbound: Inbound, direct: bool = False) -> IntakeAnswer:
        """One task, verified and decoded: accept it (journal, admit) or say why not.

        `direct`: it came on a stream, whose answer says busy (no error result is sent).
        """
        now = time.time_ns()
        task = inbound.body
        assert isinstance(task, TaskBody)
        self._metrics.tasks_received.inc()
        task_log = log.bind(task_id=task.task_id)
        task_log.debug("task received", publisher=inbound.sender)
        decision = self.acceptance.decide(inbound.sender, task, now)
        if isinstance(decision, Ignore):
            self._metrics.ignore(decision.reason)
            task_log.debug("task ignored", reason=decision.reason, detail=decision.detail)
            return IntakeAnswer(AnswerStatus.IGNORED, decision.reason)
        # Only a task that will run is journalled with its body; a busy one keeps
        # just its row, so that its error result still goes through the outbox. The body is
        # kept as it was signed (decoded and checked already, and again on recovery), not re-encoded.
        runs = self._admission.would_admit(decision.model)
        if not runs and not direct and len(self._busy_answers) >= MAX_BUSY_ANSWERS:
            self.acceptance.seen.discard(task.task_id)
            self._metrics.ignore("busy_backlog")
            if (not_logged := self._busy_log.may_log("busy_backlog")) is not None:
                task_log.warning("task ignored", reason="busy_backlog", not_logged_since=not_logged)
            return IntakeAnswer(AnswerStatus.IGNORED, "busy_backlog")
        if direct and not runs:
            self.acceptance.seen.discard(task.task_id)
            reason = _busy_reason(self._admission)
            self._metrics.tasks_busy.labels(reason=reason).inc()  # received, and neither accepted nor ignored
            if (not_logged := self._busy_log.may_log(reason)) is not None:
                task_log.info("task busy", reason=reason, direct=True, not_logged_since=not_logged)
            return IntakeAnswer(AnswerStatus.BUSY, reason)
        try:
            journalled = self._journal.record_accepted(
                task.task_id, inbound.sender, task.deadline, decision.model, inbound.signed.body if runs else b"", now
            )
        except JournalError as exc:
            self.acceptance.seen.discard(task.task_id)
            reason = "journal_error"
            self._metrics.ignore(reason)
            if (not_logged := self._journal_log.may_log(reason)) is not None:
                task_log.error("task ignored", reason=reason, detail=str(exc), not_logged_since=not_logged)
            return IntakeAnswer(AnswerStatus.IGNORED, reason)
        if not journalled:
            self._metrics.ignore("duplicate")
            task_log.debug("task ignored", reason="duplicate", detail="already in the journal")
            return IntakeAnswer(AnswerStatus.IGNORED, "duplicate")
        self._metrics.tasks_accepted.inc()
        accepted = AcceptedTask(
            task=task,
            publisher=inbound.sender,
            model=decision.model,
            received_at_ns=now,
            log=task_log,
            publisher_key=inbound.signed.sender_key,
        )
        task_log.info("task accepted", model=decision.model, publisher=inbound.sender, direct=direct)
        try:
            self._admission.admit(accepted)
        except BusyError as exc:
            task_log.warning("task busy", reason=str(exc))
            self._spawn(self._runner.abandon(_without_workflow(accepted), exc.error))
            return IntakeAnswer(AnswerStatus.BUSY, _busy_reason(self._admission))
        return ACCEPTED

    def _on_error(self, exc: Exception) -> None:
        self._metrics.ignore("internal_error")
        log.exception("task intake failed; the next task goes through as usual")

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        answer = asyncio.create_task(coro)
        self._busy_answers.add(answer)
        answer.add_done_callback(self._busy_answers.discard)


def _without_workflow(accepted: AcceptedTask) -> AcceptedTask:
    """The task as its error result needs it: a workflow may be megabytes of decoded JSON, and a busy
    answer can wait seconds for its publish."""
    task = accepted.task
    return replace(accepted, task=task.model_copy(update={"input": task.input.model_copy(update={"workflow": {}})}))


def _busy_reason(admission: Admission) -> str:
    """The reason code of a `busy` answer: draining, paused or no_capacity."""
    if admission.draining:
        return "draining"
    return "paused" if admission.paused else "no_capacity"
