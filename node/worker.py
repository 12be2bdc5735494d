"""Runs one taken task: workflow -> model -> encrypted result, or an error result.

Every failure after a task was taken produces an error result, never silence:
an invalid workflow, a workflow error, the deadline passing while running, a
model failure, an unexpected exception, or the node shutting down.
"""

from __future__ import annotations

import asyncio
import time

from models.requests import ModelError
from node.executor import Job
from node.journal import Journal
from node.messages import ResultBody, Stats
from node.metrics import NodeMetrics
from node.outbox import ResultOutbox
from node.results import error_body, success_body
from workflows import EngineOptions, ToolSettings, WorkflowError, WorkflowResult, parse_workflow, run_workflow
from workflows.errors import public_error_text
from workflows.backend import ModelBackend


class TaskRunner:
    """Executes jobs handed over by the executor and sends their results to the outbox."""

    def __init__(
        self,
        models: dict[str, ModelBackend],
        outbox: ResultOutbox,
        journal: Journal,
        metrics: NodeMetrics,
        tools: ToolSettings,
        options: EngineOptions,
        embedder: ModelBackend | None = None,
    ) -> None:
        self._models = models
        self._outbox = outbox
        self._journal = journal
        self._metrics = metrics
        self._tools = tools
        self._options = options
        self._embedder = embedder

    async def run(self, job: Job) -> None:
        """Run the job to a result (success or error) handed to the outbox."""
        started = time.time_ns()
        self._journal.mark_running(job.task.task_id)
        self._metrics.task_queue_wait_seconds.observe(max(0, started - job.received_at_ns) / 1e9)
        job.log.info("task started", model=job.model)
        try:
            result = await self._execute(job)
        except asyncio.CancelledError:
            await self._finish(job, started, error="interrupted: node shutting down")
            raise
        except _TaskFailure as failure:
            await self._finish(job, started, error=str(failure))
        except Exception as exc:  # noqa: BLE001 - any bug still answers the publisher
            job.log.exception("task crashed")
            await self._finish(job, started, error=f"internal error: {type(exc).__name__}")
        else:
            await self._finish(job, started, result=result)

    async def abandon(self, job: Job, reason: str) -> None:
        """Send an error for a job that never started (cancelled while queued, or refused as busy)."""
        await self._finish(job, time.time_ns(), error=reason)

    async def _execute(self, job: Job) -> WorkflowResult:
        try:
            workflow = parse_workflow(job.task.input.workflow)
        except WorkflowError as exc:
            raise _TaskFailure(public_error_text(exc)) from None
        remaining = (job.task.deadline - time.time_ns()) / 1e9
        if remaining <= 0:
            raise _TaskFailure("deadline passed before the task started")
        model = self._models[job.model]
        try:
            async with asyncio.timeout(remaining):
                result = await run_workflow(
                    workflow,
                    model,
                    prompt=job.task.input.prompt,
                    tools=self._tools,
                    options=self._options,
                    embedder=self._embedder or model,
                )
        except TimeoutError:
            raise _TaskFailure("deadline passed while the task was running") from None
        except WorkflowError as exc:
            raise _TaskFailure(public_error_text(exc)) from None
        except ModelError as exc:
            raise _TaskFailure(f"model error: {exc}") from None
        job.log.info("workflow finished", steps=result.steps, completion_tokens=result.completion_tokens)
        return result

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
