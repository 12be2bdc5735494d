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
from node.messages import ResultBody, Stats
from node.results import ResultPublisher, error_body, success_body
from workflows import EngineOptions, ToolSettings, WorkflowError, parse_workflow, run_workflow
from workflows.backend import ModelBackend


class TaskRunner:
    """Executes jobs handed over by the executor and publishes their results."""

    def __init__(
        self,
        models: dict[str, ModelBackend],
        publisher: ResultPublisher,
        tools: ToolSettings,
        options: EngineOptions,
        embedder: ModelBackend | None = None,
    ) -> None:
        self._models = models
        self._publisher = publisher
        self._tools = tools
        self._options = options
        self._embedder = embedder

    async def run(self, job: Job) -> None:
        """Run the job to a published result (success or error)."""
        started = time.time_ns()
        job.log.info("task started", model=job.model)
        try:
            text = await self._execute(job)
        except asyncio.CancelledError:
            await self._finish(job, started, error="interrupted: node shutting down")
            raise
        except _TaskFailure as failure:
            await self._finish(job, started, error=str(failure))
        except Exception as exc:  # noqa: BLE001 - any bug still answers the publisher
            job.log.exception("task crashed")
            await self._finish(job, started, error=f"internal error: {type(exc).__name__}")
        else:
            await self._finish(job, started, text=text)

    async def abandon(self, job: Job, reason: str) -> None:
        """Publish an error for a job that never started (cancelled while queued)."""
        await self._finish(job, time.time_ns(), error=reason)

    async def refuse(self, job: Job, reason: str) -> None:
        """Publish an error for a job the executor could not admit ("busy: ...")."""
        await self._finish(job, time.time_ns(), error=reason)

    async def _execute(self, job: Job) -> str:
        try:
            workflow = parse_workflow(job.task.input.workflow)
        except WorkflowError as exc:
            raise _TaskFailure(f"invalid workflow: {exc}") from None
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
            raise _TaskFailure(str(exc)) from None
        except ModelError as exc:
            raise _TaskFailure(f"model error: {exc}") from None
        job.log.info("workflow finished", steps=result.steps, completion_tokens=result.completion_tokens)
        return result.text

    async def _finish(self, job: Job, started_ns: int, *, text: str | None = None, error: str | None = None) -> None:
        ended = time.time_ns()
        stats = Stats(
            received_at=job.received_at_ns,
            execution_started_at=started_ns,
            execution_ended_at=ended,
            published_at=ended,
        )
        task = job.task
        body: ResultBody
        if error is None and text is not None:
            body = success_body(task.task_id, job.model, text, task.public_key, stats)
        else:
            body = error_body(task.task_id, job.model, error or "unknown error", stats)
        try:
            await self._publisher.publish(body)
        except Exception:  # noqa: BLE001 - publishing failures are logged; the journal retries them
            job.log.exception("result publish failed")
            return
        job.log.info("result published", ok=error is None, error=error, elapsed_ms=(ended - started_ns) // 1_000_000)


class _TaskFailure(Exception):
    """A failure that becomes the task's error result, with its reason."""
