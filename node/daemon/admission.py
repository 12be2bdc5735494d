"""Execution scheduling: per-model capacity, a bounded queue, and drain on shutdown.

Each hosted model runs at most its `concurrency` of tasks at once (by default
its batched runtime's sequence slots) with at most `max_queue` more waiting; a
task beyond that is refused at once (`BusyError`, which the caller turns into a
"busy: ..." error result, never silence). Free capacity, as heartbeats report
it, is the free slots plus the queue room.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from node.wire.messages import TaskBody


class BusyError(Exception):
    """No slot and no queue room for this model, or the node is draining."""


@dataclass
class Job:
    """A task this node took, on its way through the executor."""

    task: TaskBody
    publisher: str
    model: str
    received_at_ns: int
    log: Any = field(default_factory=lambda: structlog.get_logger("node.task"))
    started: bool = False
    reruns: int = 0  # times it ran again after its execution process died (at most once)
    crashes: int = 0  # times its execution process crashed under it (twice: poison)


RunJob = Callable[[Job], Awaitable[None]]
AbandonJob = Callable[[Job, str], Awaitable[None]]


class Executor:
    """Admits jobs per model and runs them as asyncio tasks."""

    def __init__(self, run: RunJob, abandon: AbandonJob, concurrency: dict[str, int], max_queue: int) -> None:
        self._run = run
        self._abandon = abandon
        self._concurrency = dict(concurrency)
        self._max_queue = max_queue
        self._slots = {model: asyncio.Semaphore(limit) for model, limit in concurrency.items()}
        self._admitted = {model: 0 for model in concurrency}
        self._running: dict[asyncio.Task[None], Job] = {}
        self.accepting = True

    def capacity(self) -> tuple[int, int]:
        """(free, max) task places over all models; 0 free while draining."""
        total = sum(self._concurrency.values()) + self._max_queue * len(self._slots)
        if not self.accepting:
            return 0, total
        return total - sum(self._admitted.values()), total

    def hosts(self, model: str) -> bool:
        return model in self._slots

    @property
    def pending(self) -> int:
        """Jobs admitted and not finished (running or queued)."""
        return sum(self._admitted.values())

    def admits(self, model: str) -> bool:
        """Whether `submit` would admit a job for `model` now (asks, admits nothing)."""
        return (
            self.accepting
            and model in self._slots
            and self._admitted[model] < self._concurrency[model] + self._max_queue
        )

    def submit(self, job: Job) -> None:
        """Admit the job or raise BusyError saying why."""
        if not self.accepting:
            raise BusyError("busy: node is shutting down")
        running = self._concurrency[job.model]
        if self._admitted[job.model] >= running + self._max_queue:
            raise BusyError(f"busy: model {job.model} has {running} running and {self._max_queue} queued tasks")
        self._admitted[job.model] += 1
        task = asyncio.create_task(self._execute(job), name=f"task-{job.task.task_id}")
        self._running[task] = job
        task.add_done_callback(self._running.pop)

    async def _execute(self, job: Job) -> None:
        try:
            async with self._slots[job.model]:
                job.started = True
                await self._run(job)
        except asyncio.CancelledError:
            if not job.started:
                await self._abandon(job, "interrupted: node shutting down before the task started")
            raise
        finally:
            self._admitted[job.model] -= 1

    async def drain(self, timeout: float) -> int:
        """Stop admitting; wait up to `timeout` s for admitted jobs, then cancel the rest.

        Cancelled jobs publish their own error results. Returns how many were cancelled.
        """
        self.accepting = False
        if not self._running:
            return 0
        _, still_running = await asyncio.wait(set(self._running), timeout=timeout)
        for task in still_running:
            task.cancel()
        if still_running:
            await asyncio.wait(still_running, timeout=10)
        return len(still_running)
