"""A first start's speed measured after `ready`, while the model has no task.

The startup benchmark (models/benchmark.py: ~128 prompt tokens, 48 generated) takes a
second or more on a CPU, and its result is cached per model file, build and settings.
Without a cached result the node need not wait for it to serve: the execution process
answers `ready` first and measures here, once no task has run for `IDLE_S`. A task that
starts meanwhile cancels the measurement (sharing the batch with it would skew the
figure that gets cached and advertised); it starts again after the next idle spell,
each one twice as long as the last. After `MAX_INTERRUPTIONS` it no longer waits:
it measures at once and lets tasks run beside it, and the figure is advertised but
not cached (the next start measures again). So tasks never wait for it, and no
stream of tasks (any peer may send them, with keys of its own) keeps the node from
advertising a speed, or makes a skewed one stick. Only a node serving one model measures this way: two
models' processes measuring at once would slow each other, so those start one after
the other, measured before `ready` (node/execution/model_setup.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from models.benchmark import BenchResult

log = structlog.get_logger(__name__)

IDLE_S = 0.5  # no task for this long before the first measurement starts (twice as long after each interruption)
MAX_INTERRUPTIONS = 3  # then measured at once, beside the tasks, and not cached


class IdleBenchmark:
    """Runs `measure` once the host has been idle long enough; `task_started` interrupts it."""

    def __init__(
        self,
        model: str,
        measure: Callable[[], Coroutine[Any, Any, BenchResult]],
        idle: asyncio.Event,
        report: Callable[[BenchResult], None],
        keep: Callable[[BenchResult], None],
    ) -> None:
        self._model = model
        self._measure = measure
        self._idle = idle  # set while the host runs no task
        self._report = report  # every result (to the daemon: advertised)
        self._keep = keep  # a result measured with no task beside it (cached)
        self._task_came = asyncio.Event()
        self._measuring: asyncio.Task[BenchResult] | None = None
        self._beside_a_task = False
        self.interruptions = 0

    def task_started(self) -> None:
        """A task came: a measurement under way is cancelled (while interruptions may), the idle wait starts over."""
        self._task_came.set()
        if self._measuring is None or self._measuring.done():
            return
        if self.interruptions < MAX_INTERRUPTIONS:
            self._measuring.cancel()
        else:
            self._beside_a_task = True

    async def run(self) -> BenchResult:
        """Measure once; the result goes to `report` (and to `keep` if no task ran beside it), and is returned."""
        wait_s = IDLE_S
        while True:
            if self.interruptions < MAX_INTERRUPTIONS:
                await self._idle_for(wait_s)
            self._beside_a_task = not self._idle.is_set()
            self._measuring = asyncio.create_task(self._measure(), name=f"benchmark-{self._model}")
            try:
                await asyncio.wait({self._measuring})
            except asyncio.CancelledError:
                self._measuring.cancel()
                raise
            if not self._measuring.cancelled():
                return self._done(self._measuring.result())  # a ModelError propagates: the caller logs it
            self.interruptions += 1
            wait_s *= 2
            log.info("model benchmark interrupted by a task", model=self._model, interruptions=self.interruptions)

    def _done(self, result: BenchResult) -> BenchResult:
        self._report(result)
        if self._beside_a_task:
            log.warning("model benchmarked beside tasks: advertised, not cached", model=self._model)
        else:
            self._keep(result)
        return result

    async def _idle_for(self, seconds: float) -> None:
        """Return once no task has come for `seconds` and none is running."""
        while True:
            await self._idle.wait()
            self._task_came.clear()
            try:
                async with asyncio.timeout(seconds):
                    await self._task_came.wait()
            except TimeoutError:
                if self._idle.is_set():
                    return
