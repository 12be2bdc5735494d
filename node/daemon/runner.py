"""Runs one taken task: workflow -> its model's execution process -> encrypted result, or an error result.

Every failure after a task was taken produces an error result, never silence:
an invalid workflow, a workflow error, the deadline or max_time passing, a model
failure, the execution process dying under it, or the node shutting down.

Time limits are the daemon's: past the task's max_time or deadline it sends
cancel, and a process that does not answer within `cancel_grace` is killed (its
other tasks may run once more). A task whose process died runs once more if its
deadline leaves time; one that crashes the runtime twice is poison.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from node.daemon.admission import Job
from node.daemon.execution.handle import RuntimeExitError
from node.daemon.execution.pool import ExecutionPool, ModelUnavailableError
from node.daemon.execution.protocol import RunTask, TaskDone, TaskFailed
from node.daemon.journal import Journal, JournalError
from node.daemon.outbox import ResultOutbox
from node.ops.metrics import NodeMetrics
from node.wire.messages import ResultBody, Stats
from node.wire.results import error_body, success_body
from workflows import EngineOptions, WorkflowResult
from workflows.errors import INVALID_PROMPT

# A task the crash interrupted runs again only with at least this much of its deadline left.
RERUN_MIN_TIME_LEFT_S = 10.0
# Past max_time the engine in the process stops the task itself; the daemon cancels after this margin.
MAX_TIME_MARGIN_S = 2.0


class TaskRunner:
    """Executes jobs handed over by the executor and sends their results to the outbox."""

    def __init__(
        self,
        pool: ExecutionPool,
        outbox: ResultOutbox,
        journal: Journal,
        metrics: NodeMetrics,
        options: EngineOptions,
        cancel_grace_s: float,
    ) -> None:
        self._pool = pool
        self._outbox = outbox
        self._journal = journal
        self._metrics = metrics
        self._options = options
        self._cancel_grace_s = cancel_grace_s

    async def run(self, job: Job) -> None:
        """Run the job to a result (success or error) handed to the outbox."""
        started = time.time_ns()
        self._mark_running(job)
        self._metrics.task_queue_wait_seconds.observe(max(0, started - job.received_at_ns) / 1e9)
        job.log.info("task started", model=job.model)
        while True:
            try:
                result = await self._execute(job)
            except asyncio.CancelledError:
                await self._finish(job, started, error="interrupted: node shutting down")
                raise
            except RuntimeExitError as exit_error:
                error = self._after_runtime_exit(job, exit_error)
                if error is None:
                    self._mark_running(job)
                    continue
                await self._finish(job, started, error=error)
            except _TaskFailure as failure:
                await self._finish(job, started, error=str(failure))
            except Exception as exc:  # noqa: BLE001 - any bug still answers the publisher
                job.log.exception("task crashed")
                await self._finish(job, started, error=f"internal error: {type(exc).__name__}")
            else:
                await self._finish(job, started, result=result)
            return

    def _mark_running(self, job: Job) -> None:
        # A journal that cannot be written (full disk) must not cost the task its result:
        # it runs and is answered; only a crash of the daemon meanwhile would forget it.
        try:
            self._journal.mark_running(job.task.task_id)
        except JournalError as exc:
            job.log.error("task not marked running in the journal", error=str(exc))

    async def abandon(self, job: Job, reason: str) -> None:
        """Send an error for a job that never started (cancelled while queued, or refused as busy)."""
        await self._finish(job, time.time_ns(), error=reason)

    def _after_runtime_exit(self, job: Job, exit_error: RuntimeExitError) -> str | None:
        """None if the job runs once more, else its error text."""
        if exit_error.crash:
            job.crashes += 1
        if job.crashes >= 2:
            job.log.error("task crashed the model runtime twice: poison", cause=exit_error.cause)
            return f"{INVALID_PROMPT}the task crashed the model runtime twice ({exit_error.cause})"
        time_left = (job.task.deadline - time.time_ns()) / 1e9
        if job.reruns == 0 and time_left > RERUN_MIN_TIME_LEFT_S:
            job.reruns += 1
            job.log.warning(
                "task runs again after its model runtime ended", cause=exit_error.cause, time_left_s=round(time_left, 1)
            )
            return None
        return exit_error.reason

    async def _execute(self, job: Job) -> WorkflowResult:
        remaining = (job.task.deadline - time.time_ns()) / 1e9
        if remaining <= 0:
            raise _TaskFailure("deadline passed before the task started")
        # The workflow is validated (and its error answered) in the execution process; here
        # only its max_time matters, to stop a process that does not stop by itself.
        max_time = _max_time(job.task.input.workflow)
        if max_time is not None and self._options.max_time_cap is not None:
            max_time = min(max_time, self._options.max_time_cap)
        if max_time is not None and max_time + MAX_TIME_MARGIN_S < remaining:
            limit, reason = (
                max_time + MAX_TIME_MARGIN_S,
                f"max_time exceeded: the workflow ran longer than {max_time:g} s",
            )
        else:
            limit, reason = remaining, "deadline passed while the task was running"
        request = RunTask(
            task_id=job.task.task_id,
            workflow=job.task.input.workflow,
            prompt=job.task.input.prompt,
            deadline_ns=job.task.deadline,
        )
        outcome = await self._run_within(job, request, limit, reason)
        if isinstance(outcome, TaskFailed):
            raise _TaskFailure(outcome.error)
        job.log.info("workflow finished", steps=outcome.steps, completion_tokens=outcome.completion_tokens)
        return WorkflowResult(outcome.text, outcome.steps, outcome.prompt_tokens, outcome.completion_tokens)

    async def _run_within(self, job: Job, request: RunTask, limit: float, reason: str) -> TaskDone | TaskFailed:
        """The process's answer within `limit` s; past it cancel, and kill a process that ignores the cancel."""
        run = asyncio.ensure_future(self._pool.run(job.model, request))
        try:
            done, _ = await asyncio.wait({run}, timeout=limit)
            if done:
                return _outcome(run)
            if not self._pool.cancel(job.model, request.task_id, reason):
                run.cancel()  # still waiting for a process to come up
                raise _TaskFailure(f"{reason} (waiting for the model runtime to restart)")
            done, _ = await asyncio.wait({run}, timeout=self._cancel_grace_s)
            if done:
                return _outcome(run)
            job.log.error("task did not stop after cancel; killing its execution process", grace_s=self._cancel_grace_s)
            self._pool.kill(job.model, f"task {request.task_id} did not stop {self._cancel_grace_s:g} s after cancel")
            await asyncio.wait({run}, timeout=10)
            if run.done() and not run.cancelled():
                run.exception()  # this task's answer is `reason`, whatever the dying process said
            run.cancel()
            raise _TaskFailure(reason)
        except asyncio.CancelledError:
            run.cancel()
            raise

    async def _finish(
        self, job: Job, started_ns: int, *, result: WorkflowResult | None = None, error: str | None = None
    ) -> None:
        ended = time.time_ns()
        task = job.task
        body: ResultBody
        if result is not None:
            stats = Stats(
                received_at=job.received_at_ns,
                execution_started_at=started_ns,
                execution_ended_at=ended,
                published_at=ended,
                promptTokens=result.prompt_tokens,
                completionTokens=result.completion_tokens,
            )
            body = success_body(task.task_id, job.model, result.text, task.public_key, stats)
            self._metrics.tasks_completed.inc()
            self._metrics.tokens_generated.labels(model=job.model).inc(result.completion_tokens)
        else:
            stats = Stats(
                received_at=job.received_at_ns,
                execution_started_at=started_ns,
                execution_ended_at=ended,
                published_at=ended,
            )
            body = error_body(task.task_id, job.model, error or "unknown error", stats)
            self._metrics.tasks_failed.inc()
        self._metrics.task_latency_seconds.observe(max(0, ended - job.received_at_ns) / 1e9)
        job.log.info("task finished", ok=error is None, error=error, elapsed_ms=(ended - started_ns) // 1_000_000)
        try:
            await self._outbox.send(body)
        except Exception:  # noqa: BLE001 - the journal keeps it; the outbox retries
            job.log.exception("result not sent")


class _TaskFailure(Exception):
    """A failure that becomes the task's error result, with its reason."""


def _outcome(run: asyncio.Future[TaskDone | TaskFailed]) -> TaskDone | TaskFailed:
    try:
        return run.result()
    except ModelUnavailableError as exc:
        raise _TaskFailure(str(exc)) from None


def _max_time(workflow: dict[str, Any]) -> float | None:
    """The workflow's config.max_time if it is a positive number (else the process reports the error)."""
    config = workflow.get("config")
    value = config.get("max_time") if isinstance(config, dict) else None
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None
