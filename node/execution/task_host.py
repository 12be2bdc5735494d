"""TaskHost: the daemon's tasks on one model, run concurrently, each answered once.

A `run` message starts a task (process.py hands it over); the workflow engine runs it under the task's
deadline, with this task's id on every line logged while it runs, and its answer (`done` or `failed`, a
streaming task's `delta` messages first) goes back to the daemon. `cancel` ends one, `stop` all.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

from models.progress import request_owner
from models.requests import ModelError
from models.tracing import GenerationTrace, generation_traces
from node.execution.delta_coalescer import DeltaCoalescer
from node.execution.model_setup import ServedModel
from node.execution.protocol import (
    DEADLINE_BEFORE_START,
    DEADLINE_WHILE_RUNNING,
    Cancel,
    Message,
    RunTask,
    TaskDelta,
    TaskDone,
    TaskFailed,
    Trace,
)
from workflows import EngineOptions, ToolSettings, WorkflowError, parse_workflow, run_workflow
from workflows.backend import ModelBackend
from workflows.errors import public_error_text
from workflows.tool_http import ToolHttp

log = structlog.get_logger("node.execution")


class TaskHost:
    """Runs the daemon's tasks on one model, concurrently, and sends one answer per task."""

    def __init__(
        self,
        model: ServedModel,
        embedder: ModelBackend,
        tools: ToolSettings,
        options: EngineOptions,
        send: Callable[[Message], None],
        http: ToolHttp,
    ) -> None:
        self._model = model
        self._embedder = embedder
        self._tools = tools
        self._http = http  # the tools' requests go to the daemon (tool_channel.py)
        self._options = options
        self._send = send
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._cancel_reasons: dict[str, str] = {}
        self.idle = asyncio.Event()  # set while no task runs
        self.idle.set()
        self.on_task_start: Callable[[], None] | None = None  # an idle-time benchmark's interruption

    def start(self, request: RunTask) -> None:
        """Start running the task (failed at once if its id is already running)."""
        if request.task_id in self._tasks:
            self._send(TaskFailed(task_id=request.task_id, error="internal error: task already running"))
            return
        if self.on_task_start is not None:
            self.on_task_start()
        task = asyncio.create_task(self._run(request), name=f"task-{request.task_id}")
        self._tasks[request.task_id] = task
        self.idle.clear()
        task.add_done_callback(lambda _: self._ended(request.task_id))

    def _ended(self, task_id: str) -> None:
        self._tasks.pop(task_id, None)
        if not self._tasks:
            self.idle.set()

    def cancel(self, request: Cancel) -> None:
        """Cancel the task, keeping the reason for its answer."""
        task = self._tasks.get(request.task_id)
        if task is not None:
            self._cancel_reasons[request.task_id] = request.reason
            task.cancel()

    async def stop(self) -> None:
        """Cancel every running task and wait for them."""
        for task_id, task in list(self._tasks.items()):
            self._cancel_reasons[task_id] = "interrupted: execution process stopping"
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def _run(self, request: RunTask) -> None:
        # This asyncio task's context: every line logged while it runs (workflow, model, grammar, tools) names the
        # task, and the decode loop learns whose request it runs.
        structlog.contextvars.bind_contextvars(task_id=request.task_id, model=self._model.name)
        request_owner.set(request.task_id)
        try:
            self._send(await self._execute(request))
        except asyncio.CancelledError:
            reason = self._cancel_reasons.pop(request.task_id, "cancelled")
            self._send(TaskFailed(task_id=request.task_id, error=reason))
        except MemoryError:
            log.error("task ran out of memory")
            self._send(
                TaskFailed(
                    task_id=request.task_id,
                    error="out of memory: the task exceeded its execution process's memory limit",
                )
            )
        except Exception as exc:  # noqa: BLE001 - any failure still answers the publisher
            if not isinstance(exc, WorkflowError | ModelError):
                log.exception("task crashed")
            # The public text: `Invalid prompt: ` for deterministic errors; never the task's data
            # (error results are not encrypted).
            self._send(TaskFailed(task_id=request.task_id, error=public_error_text(exc)))

    async def _execute(self, request: RunTask) -> TaskDone | TaskFailed:
        workflow = parse_workflow(request.workflow)  # WorkflowValidationError: answered by _run
        remaining = (request.deadline_ns - time.time_ns()) / 1e9
        if remaining <= 0:
            return TaskFailed(task_id=request.task_id, error=DEADLINE_BEFORE_START)
        traces: list[GenerationTrace] | None = [] if request.proof else None
        generation_traces.set(traces)  # this task's context: the runtime records its generations
        deltas = None
        if request.stream:
            deltas = DeltaCoalescer(
                lambda text: self._send(TaskDelta(task_id=request.task_id, text=sendable_text(text)))
            )
        try:
            async with asyncio.timeout(remaining):
                result = await run_workflow(
                    workflow,
                    self._model,
                    prompt=request.prompt,
                    tools=self._tools,
                    http=self._http,
                    options=self._options,
                    embedder=self._embedder,
                    on_text=None if deltas is None else deltas.add,
                )
        except TimeoutError:
            return TaskFailed(task_id=request.task_id, error=DEADLINE_WHILE_RUNNING)
        finally:
            if deltas is not None:
                deltas.close()  # the last delta goes before the answer
        return TaskDone(
            task_id=request.task_id,
            text=sendable_text(result.text),
            steps=result.steps,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            finish_reason=result.finish_reason,
            traces=None if traces is None else [Trace.model_validate(t.model_dump()) for t in traces],
        )


def sendable_text(text: str) -> str:
    """`text` as it can travel: a lone surrogate (a remote engine's JSON may hold one) becomes "?"."""
    return text.encode("utf-8", "replace").decode("utf-8")
