"""Runs one accepted task: workflow -> its model's execution process -> encrypted result, or an error result.

Every failure after a task was accepted produces an error result, never silence:
an invalid workflow, a workflow error, the deadline or max_time passing, a model
failure, the execution process dying under it, or the node shutting down.

Time limits are the daemon's: past the task's max_time or deadline it sends
cancel, and a process that does not answer within `exec_cancel_grace` is killed (its
other tasks may run once more). A task whose process died runs once more if its
deadline leaves time; one that crashes its execution process twice is poison. When the stall
watchdog killed the process (processes/stall.py), only the tasks inside the stalled
native call are suspects: a sole suspect (the call was its own sampling) or a
suspect for the second time gets `Invalid prompt: `; every other task is innocent
and runs once more. A suspect runs once more alone on its model (rerun_gate.py), so
an innocent task is never in a stalled batch with it twice.

A task with `"stream": true` that arrived on a stream runs streaming: the text deltas
of its final step go to its route (node/daemon/routes.py) as progress frames. A rerun
after its process died does not stream again (what was streamed cannot be taken back;
the publisher checks the result against it).
"""

from __future__ import annotations

import asyncio
import time
from functools import partial
from typing import Any

from node.daemon.admission import AcceptedTask
from node.daemon.ledger import Ledger, LedgerEntry, outcome_of
from node.daemon.outbox import ResultOutbox
from node.daemon.processes.exits import ExecutionProcessExitError
from node.daemon.processes.pool import ExecutionPool, ModelUnavailableError
from node.daemon.rerun_gate import RerunGate
from node.execution.protocol import DEADLINE_BEFORE_START, DEADLINE_WHILE_RUNNING, RunTask, TaskDone, TaskFailed
from node.ops.activity import NodeActivity
from node.ops.metrics import NodeMetrics
from node.wire.error_kinds import ErrorKind, TaskError, parse_error
from node.wire.proof import MAX_PROOF_STEPS, Proof, ProofGeneration
from node.wire.results import Output, clamp_count, result_body
from workflows.errors import max_time_exceeded
from workflows.options import capped

# A task the crash interrupted runs again only with at least this much of its deadline left.
RERUN_MIN_TIME_LEFT_S = 10.0
# The error result that replaces a result whose body could not be built.
RESULT_NOT_BUILT = "internal error: the result could not be built"
# Past max_time the engine in the process stops the task itself; the daemon cancels after this margin.
MAX_TIME_MARGIN_S = 2.0


class TaskRunner:
    """Runs the tasks admission admits on their models' execution processes; hands each result to the outbox."""

    def __init__(
        self,
        pool: ExecutionPool,
        outbox: ResultOutbox,
        metrics: NodeMetrics,
        max_time_cap: float | None,
        cancel_grace_s: float,
        ledger: Ledger | None = None,
        activity: NodeActivity | None = None,
    ) -> None:
        self._pool = pool
        self._ledger = ledger
        self._activity = activity or NodeActivity()
        self._outbox = outbox
        self._metrics = metrics
        self._max_time_cap = max_time_cap
        self._cancel_grace_s = cancel_grace_s
        self._gates: dict[str, RerunGate] = {}

    async def run(self, accepted: AcceptedTask) -> None:
        """Run the task to a result (success or error) handed to the outbox."""
        started = time.time_ns()
        self._metrics.task_queue_wait_seconds.observe(max(0, started - accepted.received_at_ns) / 1e9)
        accepted.log.info("task started", model=accepted.model)
        while True:
            try:
                output = await self._execute(accepted)
            except asyncio.CancelledError:
                await self._finish(accepted, started, error=TaskError.of(ErrorKind.INTERRUPTED, "node shutting down"))
                raise
            except ExecutionProcessExitError as exit_error:
                error = self._after_process_exit(accepted, exit_error)
                if error is None:
                    continue
                await self._finish(accepted, started, error=error)
            except _TaskFailure as failure:
                await self._finish(accepted, started, error=failure.error)
            except Exception as exc:  # noqa: BLE001 - any bug still answers the publisher
                accepted.log.exception("task crashed")
                await self._finish(accepted, started, error=TaskError.failed(f"internal error: {type(exc).__name__}"))
            else:
                await self._finish(accepted, started, output=output)
            return

    async def abandon(self, accepted: AcceptedTask, reason: TaskError) -> None:
        """Send an error for a task that never started (cancelled while queued, or busy)."""
        await self._finish(accepted, time.time_ns(), error=reason)

    def _after_process_exit(self, accepted: AcceptedTask, exit_error: ExecutionProcessExitError) -> TaskError | None:
        """None if the task runs once more, else its error."""
        if accepted.task.task_id in exit_error.suspects:
            accepted.stalls += 1
            if exit_error.sole_suspect or accepted.stalls >= 2:
                accepted.log.error(
                    "task stalled its execution process: poison",
                    sole_suspect=exit_error.sole_suspect,
                    stalls=accepted.stalls,
                    reason=exit_error.reason,
                )
                stalled = "the task stalled its execution process (no progress in its native calls)"
                return TaskError.of(ErrorKind.INVALID_PROMPT, stalled)
        if exit_error.crash:
            accepted.crashes += 1
        if accepted.crashes >= 2:
            accepted.log.error("task crashed its execution process twice: poison", cause=exit_error.cause)
            crashed = f"the task crashed its execution process twice ({exit_error.cause})"
            return TaskError.of(ErrorKind.INVALID_PROMPT, crashed)
        time_left = (accepted.task.deadline - time.time_ns()) / 1e9
        if accepted.reruns == 0 and time_left > RERUN_MIN_TIME_LEFT_S:
            accepted.reruns += 1
            accepted.log.warning(
                "task runs again after its execution process ended",
                cause=exit_error.cause,
                time_left_s=round(time_left, 1),
            )
            return None
        return exit_error.error

    async def _execute(self, accepted: AcceptedTask) -> Output:
        remaining = (accepted.task.deadline - time.time_ns()) / 1e9
        if remaining <= 0:
            raise _TaskFailure(TaskError.failed(DEADLINE_BEFORE_START))
        # The workflow is validated (and its error answered) in the execution process; here
        # only its max_time matters, to stop a process that does not stop by itself.
        max_time = _max_time(accepted.task.input.workflow)
        if max_time is not None:
            max_time = capped(max_time, self._max_time_cap)
        if max_time is not None and max_time + MAX_TIME_MARGIN_S < remaining:
            limit, reason = max_time + MAX_TIME_MARGIN_S, max_time_exceeded(max_time)
        else:
            limit, reason = remaining, DEADLINE_WHILE_RUNNING
        request = RunTask(
            task_id=accepted.task.task_id,
            workflow=accepted.task.input.workflow,
            prompt=accepted.task.input.prompt,
            deadline_ns=accepted.task.deadline,
            proof=bool(accepted.task.proof),
            stream=self._streams(accepted),
        )
        if request.stream:
            accepted.log.info("task streams its progress")
        outcome = await self._run_within(accepted, request, limit, reason)
        if isinstance(outcome, TaskFailed):
            raise _TaskFailure(parse_error(outcome.error))  # the execution process's text: its kind read here
        return Output(
            outcome.text,
            accepted.task.public_key,
            outcome.prompt_tokens,
            outcome.completion_tokens,
            proof_of(outcome),
            outcome.finish_reason,
        )

    async def _run_within(
        self, accepted: AcceptedTask, request: RunTask, limit: float, reason: str
    ) -> TaskDone | TaskFailed:
        """The process's answer within `limit` s; past it cancel, and kill a process that ignores the cancel."""
        run = asyncio.ensure_future(self._gated_run(accepted, request))
        try:
            done, _ = await asyncio.wait({run}, timeout=limit)
            if done:
                return _outcome(run)
            if not self._pool.cancel(accepted.model, request.task_id, reason):
                run.cancel()  # still waiting for a process to come up
                raise _TaskFailure(TaskError.failed(f"{reason} (waiting for the execution process to restart)"))
            done, _ = await asyncio.wait({run}, timeout=self._cancel_grace_s)
            if done:
                return _outcome(run)
            accepted.log.error(
                "task did not stop after cancel; killing its execution process", grace_s=self._cancel_grace_s
            )
            self._pool.kill(
                accepted.model, f"task {request.task_id} did not stop {self._cancel_grace_s:g} s after cancel"
            )
            await asyncio.wait({run}, timeout=10)
            if run.done() and not run.cancelled():
                run.exception()  # this task's answer is `reason`, whatever the dying process said
            run.cancel()
            raise _TaskFailure(TaskError.failed(reason))
        except asyncio.CancelledError:
            run.cancel()
            raise

    def _streams(self, accepted: AcceptedTask) -> bool:
        """Whether the run sends progress: asked for, on a stream, and the first run."""
        task_id = accepted.task.task_id
        return accepted.task.stream is True and task_id in self._outbox.routes and accepted.reruns == 0

    async def _gated_run(self, accepted: AcceptedTask, request: RunTask) -> TaskDone | TaskFailed:
        """Run on the model's process: beside other tasks, or alone for a stall or crash suspect's rerun."""
        gate = self._gates.setdefault(accepted.model, RerunGate())
        routes = self._outbox.routes
        on_delta = partial(routes.progress, request.task_id) if request.stream else None
        # A task whose process stalled or crashed under it runs again alone: then a second stall or crash is
        # its own, never that of a task that ran beside it (which would make an honest task poison).
        async with gate.alone() if accepted.stalls or accepted.crashes else gate.shared():
            return await self._pool.run(accepted.model, request, on_delta)

    async def _finish(
        self, accepted: AcceptedTask, started_ns: int, *, output: Output | None = None, error: TaskError | None = None
    ) -> None:
        """Hand the task's result (or error) to the outbox; a result that cannot be built becomes an error result."""
        accepted.release_run_place()  # the model may run the next task while this result is written
        ended = time.time_ns()
        task = accepted.task
        text = error.text if error is not None else None  # the error result's, and the log's and the ledger's
        outcome: Output | str = output if output is not None else text or "unknown error"
        times = {"received_at_ns": accepted.received_at_ns, "started_at_ns": started_ns, "ended_at_ns": ended}
        try:
            body = result_body(task.task_id, accepted.model, outcome, **times, publisher=accepted.publisher)
        except Exception as exc:  # noqa: BLE001 - the publisher still gets an answer
            accepted.log.exception("result could not be built; an error result goes in its place")
            output, error = None, TaskError.failed(f"{RESULT_NOT_BUILT} ({type(exc).__name__})")
            text = error.text
            body = result_body(task.task_id, accepted.model, text, **times, publisher=accepted.publisher)
        if output is not None:
            self._metrics.tasks_completed.inc()
            self._metrics.tokens_generated.labels(model=accepted.model).inc(clamp_count(output.completion_tokens))
        else:
            self._metrics.tasks_failed.inc()
        self._metrics.task_latency_seconds.observe(max(0, ended - accepted.received_at_ns) / 1e9)
        self._activity.record(
            task_id=task.task_id,
            publisher=accepted.publisher,
            model=accepted.model,
            error=None if output is not None else text,
            completion_tokens=clamp_count(output.completion_tokens) if output is not None else 0,
            received_at_ns=accepted.received_at_ns,
            ended_at_ns=ended,
        )
        accepted.log.info(
            "task finished",
            ok=error is None,
            error=text,
            completion_tokens=output.completion_tokens if output is not None else None,
            elapsed_ms=(ended - started_ns) // 1_000_000,
        )
        journalled_row: str | None = None
        if self._ledger is not None:
            row = LedgerEntry(
                task_id=task.task_id,
                publisher=accepted.publisher,
                model=accepted.model,
                received_at=accepted.received_at_ns / 1e9,
                started_at=started_ns / 1e9,
                ended_at=ended / 1e9,
                prompt_tokens=clamp_count(output.prompt_tokens) if output else 0,
                completion_tokens=clamp_count(output.completion_tokens) if output else 0,
                outcome=outcome_of(
                    None if output is not None else error.kind if error is not None else ErrorKind.FAILED
                ),
                error=None if output is not None else text,
            )
            self._ledger.record(row)
            journalled_row = row.journal_form()  # the ledger writes in a few seconds; a kill before is undone
        try:
            await self._outbox.send(body, ledger_entry=journalled_row)
        except Exception:  # noqa: BLE001 - the journal keeps it; the outbox retries
            accepted.log.exception("result not sent")


def proof_of(done: TaskDone) -> Proof | None:
    """The proof built from the execution process's traces (None when the task asked for none)."""
    if done.traces is None:
        return None
    kept = done.traces[-MAX_PROOF_STEPS:]
    steps = [ProofGeneration.model_validate(trace.model_dump()) for trace in kept]
    return Proof(steps=steps, omitted=len(done.traces) - len(kept))


class _TaskFailure(Exception):
    """A failure that becomes the task's error result, `error`."""

    def __init__(self, error: TaskError) -> None:
        super().__init__(error.text)
        self.error = error


def _outcome(run: asyncio.Future[TaskDone | TaskFailed]) -> TaskDone | TaskFailed:
    try:
        return run.result()
    except ModelUnavailableError as exc:
        raise _TaskFailure(TaskError.failed(str(exc))) from None


def _max_time(workflow: dict[str, Any]) -> float | None:
    """The workflow's config.max_time if it is a positive number (else the process reports the error)."""
    config = workflow.get("config")
    value = config.get("max_time") if isinstance(config, dict) else None
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        try:
            return float(value)
        except OverflowError:  # an integer past float's range: the engine refuses it as an invalid workflow
            return None
    return None
