"""Admission: per-model capacity, a bounded queue, and the drain at shutdown.

Each hosted model runs at most its `concurrency` of tasks at once (by default
its batched runtime's sequence slots) with at most `max_queue` more waiting; a
task beyond that is busy at once (`BusyError`, which the caller turns into a
"busy: ..." error result, never silence; intake ignores a busy gossip task instead
while `MAX_BUSY_ANSWERS` busy answers wait to be published, `busy_backlog`). Free capacity, as heartbeats report
it, is the free running places plus the queue room; none while paused or draining.
Each model has places of its own, so heartbeats report them per model too (`capacity_by_model`).
A task's run place is given back when its execution is over, before its result is written
(`AcceptedTask.release_run_place`): a publisher that reads its stream slowly holds the task's
place until the result is out, never its model's compute.
From its admission until its result is handed out, a task holds its publisher's key in `kept_peers`:
the connection trimmer leaves that publisher's connections alone (node/p2p/kept_peers.py). The holds are as
many as the tasks admitted, so at most each model's running plus queue places.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import structlog

from node.execution.protocol import DEADLINE_BEFORE_START
from node.p2p.kept_peers import KeptPeers
from node.wire.error_kinds import ErrorKind, TaskError
from node.wire.messages import TaskBody

CANCELLED_WAIT_S = 10.0  # at shutdown, what tasks cancelled after the drain get to send their error results


class BusyError(Exception):
    """No room to run or queue a task for this model, or the node is paused or draining; `error`: the busy
    error result the task gets."""

    def __init__(self, detail: str) -> None:
        self.error = TaskError.of(ErrorKind.BUSY, detail)
        super().__init__(self.error.text)


@dataclass
class AcceptedTask:
    """A task this node accepted, from admission to its result."""

    task: TaskBody
    publisher: str
    model: str
    received_at_ns: int
    log: Any = field(default_factory=lambda: structlog.get_logger("node.task"))
    # The signer's compressed public key, its libp2p host key too: its connections are kept while the task is
    # here (`kept_peers`). Empty for a task recovered from the journal (its publisher's connection is a new one).
    publisher_key: bytes = b""
    started: bool = False
    reruns: int = 0  # times it ran again after its execution process died (at most once)
    crashes: int = 0  # times its execution process crashed under it (twice: poison)
    stalls: int = 0  # times it was inside a native call that stalled its model (see processes/stall.py)
    # Gives the task's run place back once its execution is over (set by Admission, called by the runner before
    # the result goes out): a result written to a slow stream holds its queue place, not its model.
    release_run_place: Callable[[], None] = field(default=lambda: None, repr=False)


RunAccepted = Callable[[AcceptedTask], Awaitable[None]]
AbandonAccepted = Callable[[AcceptedTask, TaskError], Awaitable[None]]


class Admission:
    """Admits accepted tasks per model and runs each as an asyncio task."""

    def __init__(
        self,
        run: RunAccepted,
        abandon: AbandonAccepted,
        concurrency: dict[str, int],
        max_queue: int,
        paused: Callable[[], bool] = lambda: False,
        kept_peers: KeptPeers | None = None,
    ) -> None:
        self._run = run
        self._abandon = abandon
        self._concurrency = dict(concurrency)
        self._max_queue = max_queue
        self._run_permits = {model: asyncio.Semaphore(limit) for model, limit in concurrency.items()}
        self._admitted = {model: 0 for model in concurrency}
        self._running: dict[asyncio.Task[None], AcceptedTask] = {}
        self.draining = False  # set by `drain` (and by shutdown before it): admits nothing more
        self._paused = paused
        self._kept_peers = kept_peers

    @property
    def paused(self) -> bool:
        """The operator (or idle_only) paused the node: it takes nothing new, finishes what it has."""
        return self._paused()

    def capacity(self, models: Collection[str] | None = None) -> tuple[int, int]:
        """(free, max) task places over all models, or over `models` only; 0 free while paused or draining."""
        names = list(self._run_permits) if models is None else [m for m in self._run_permits if m in models]
        total = sum(self._concurrency[m] for m in names) + self._max_queue * len(names)
        if self.draining or self.paused:
            return 0, total
        return total - sum(self._admitted[m] for m in names), total

    def capacity_by_model(self, models: Collection[str] | None = None) -> dict[str, tuple[int, int]]:
        """(free, max) task places of each model (of `models` only, when given): what `capacity` sums."""
        names = list(self._run_permits) if models is None else [m for m in self._run_permits if m in models]
        stopped = self.draining or self.paused
        places = {m: self._concurrency[m] + self._max_queue for m in names}
        return {m: (0 if stopped else total - self._admitted[m], total) for m, total in places.items()}

    def hosts(self, model: str) -> bool:
        """Whether this node serves `model`."""
        return model in self._run_permits

    @property
    def pending(self) -> int:
        """Tasks admitted and not finished (running or queued)."""
        return sum(self._admitted.values())

    def would_admit(self, model: str) -> bool:
        """Whether `admit` would admit a task for `model` now (asks, admits nothing)."""
        return (
            not self.draining
            and not self.paused
            and model in self._run_permits
            and self._admitted[model] < self._concurrency[model] + self._max_queue
        )

    def admit(self, accepted: AcceptedTask) -> None:
        """Admit the task or raise BusyError saying why."""
        if self.draining:
            raise BusyError("node is shutting down")
        if self.paused:
            raise BusyError("node is paused")
        running = self._concurrency[accepted.model]
        if self._admitted[accepted.model] >= running + self._max_queue:
            raise BusyError(f"model {accepted.model} has {running} running and {self._max_queue} queued tasks")
        self._admitted[accepted.model] += 1
        task = asyncio.create_task(self._execute(accepted), name=f"task-{accepted.task.task_id}")
        self._running[task] = accepted
        task.add_done_callback(self._running.pop)
        if (kept := self._kept_peers) is not None and (key := accepted.publisher_key):
            kept.hold(key)  # given back when the task ends, however it ends (even cancelled before it started)
            task.add_done_callback(lambda _: kept.release(key))

    async def _execute(self, accepted: AcceptedTask) -> None:
        permit = self._run_permits[accepted.model]
        try:
            try:
                # A task whose deadline passes while it waits is answered then, and gives its queue place back.
                async with asyncio.timeout((accepted.task.deadline - time.time_ns()) / 1e9):
                    await permit.acquire()
            except TimeoutError:
                await self._abandon(accepted, TaskError.failed(DEADLINE_BEFORE_START))
                return
            released = False

            def release_run_place() -> None:
                nonlocal released
                if not released:
                    released = True
                    permit.release()

            accepted.release_run_place = release_run_place
            try:
                accepted.started = True
                await self._run(accepted)
            finally:
                release_run_place()
        except asyncio.CancelledError:
            if not accepted.started:
                shutdown = TaskError.of(ErrorKind.INTERRUPTED, "node shutting down before the task started")
                await self._abandon(accepted, shutdown)
            raise
        finally:
            self._admitted[accepted.model] -= 1

    async def drain(self, timeout: float) -> int:
        """Stop admitting; wait up to `timeout` s for admitted tasks, then cancel the rest.

        Cancelled tasks publish their own error results. Returns how many were cancelled.
        """
        self.draining = True
        if not self._running:
            return 0
        _, still_running = await asyncio.wait(set(self._running), timeout=timeout)
        for task in still_running:
            task.cancel()
        if still_running:
            await asyncio.wait(still_running, timeout=CANCELLED_WAIT_S)
        return len(still_running)
