"""A first start's speed measured after `ready`, while the model has no task.

The startup benchmark (models/benchmark.py: ~128 prompt tokens, 48 generated) takes a
second or more on a CPU, and its result is cached per model file, build and settings.
Without a cached result the node need not wait for it to serve: the execution process
answers `ready` first and measures here, once no task has come for an idle spell
(`IDLE_S`). A task that starts meanwhile cancels the measurement (sharing the batch
with it would skew the figure that gets cached and advertised), and the next idle spell
asked for is twice as long (at most `MAX_IDLE_S`), so a busy model is not interrupted
over and over.

Tasks may never leave such a spell (any peer may send them, with keys of its own, or
the node is simply busy): with nothing measured `BESIDE_TASKS_AFTER_S` after `ready`, a
measurement runs beside the tasks, uncancelled (it holds one slot for a second or two),
and its figure is advertised as provisional and never cached. Tasks can only lower such a
figure, so while no idle spell comes another one is measured every `BESIDE_TASKS_EVERY_S`
(at most `MAX_PROVISIONAL` in all) and reported when it is higher; the first clean
measurement replaces them and is cached. A measurement that fails (the runtime failed a
batch) is tried again after the next spell, `MAX_FAILURES` times. So a node advertises a
speed ~30 s after READY at the latest whatever comes, and no figure skewed by tasks is
ever cached.

Only a node serving one model (without `min_tps` or `idle_only`) measures this way: two
models' processes measuring at once would slow each other, so those start one after the
other, measured before `ready` (node/execution/model_setup.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from models.benchmark import BenchResult
from models.requests import ModelClosedError
from node.execution.protocol import MAX_PROVISIONAL_SPEEDS

log = structlog.get_logger(__name__)

IDLE_S = 0.5  # no task for this long before the first measurement (twice as long after each interruption)
MAX_IDLE_S = 8.0  # the longest idle spell asked for
BESIDE_TASKS_AFTER_S = 30.0  # after `ready` with nothing measured: a provisional measurement beside the tasks
BESIDE_TASKS_EVERY_S = 60.0  # then another while no idle spell came, reported if higher
MAX_PROVISIONAL = MAX_PROVISIONAL_SPEEDS  # measurements beside tasks at most, so provisional figures reported
MAX_FAILURES = 5  # measurements that failed before the benchmark gives up (the model serves on, unadvertised)


class IdleBenchmark:
    """Runs `measure` in idle spells; `task_started` interrupts a clean measurement.

    `report(result, provisional)` gets the figures to advertise: provisional ones (each higher than the last,
    at most `MAX_PROVISIONAL`), then the clean one; `keep(result)` offers the clean one for the cache, before it
    is reported.
    """

    def __init__(
        self,
        model: str,
        measure: Callable[[], Coroutine[Any, Any, BenchResult]],
        idle: asyncio.Event,
        report: Callable[[BenchResult, bool], None],
        keep: Callable[[BenchResult], None],
        beside_tasks_after_s: float = BESIDE_TASKS_AFTER_S,
        beside_tasks_every_s: float = BESIDE_TASKS_EVERY_S,
    ) -> None:
        self._model = model
        self._measure = measure
        self._idle = idle  # set while the host runs no task
        self._report = report
        self._keep = keep
        self._beside_after_s = beside_tasks_after_s
        self._beside_every_s = beside_tasks_every_s
        self._task_came = asyncio.Event()
        self._measuring: asyncio.Task[BenchResult] | None = None
        self._cancellable = True
        self._task_beside = False
        self.interruptions = 0
        self.failures = 0
        self.beside = 0  # measurements run beside tasks
        self.provisional: list[BenchResult] = []  # the provisional figures reported

    def task_started(self) -> None:
        """A task came: the idle spell starts over, and a clean measurement under way is cancelled."""
        self._task_came.set()
        if self._measuring is None or self._measuring.done():
            return
        self._task_beside = True
        if self._cancellable:
            self._measuring.cancel()

    async def run(self) -> BenchResult:
        """Measure until a clean figure is kept and reported (provisional ones first while tasks leave no idle
        spell); the clean figure is returned. Raises ModelClosedError if the model closes first."""
        loop = asyncio.get_running_loop()
        beside_at = loop.time() + self._beside_after_s
        wait_s = IDLE_S
        while True:
            limit = max(beside_at - loop.time(), 0.0) if self.beside < MAX_PROVISIONAL else None
            idle = await self._idle_for(wait_s, limit)
            if not idle:
                self.beside += 1
                beside_at = loop.time() + self._beside_every_s
            try:
                result = await self._attempt(cancellable=idle)
            except ModelClosedError:
                raise
            except Exception as exc:  # a batch the runtime failed: tried again after a spell, a few times
                self.failures += 1
                if self.failures >= MAX_FAILURES:
                    raise
                wait_s = min(wait_s * 2, MAX_IDLE_S)
                log.warning("model benchmark failed; measured again later", model=self._model, error=repr(exc))
                continue
            if result is None:
                self.interruptions += 1
                wait_s = min(wait_s * 2, MAX_IDLE_S)
                log.info("model benchmark interrupted by a task", model=self._model, interruptions=self.interruptions)
            elif not self._task_beside:
                self._keep(result)
                self._report(result, False)
                return result
            elif not self.provisional or result.generation_tps > self.provisional[-1].generation_tps:
                self.provisional.append(result)
                self._report(result, True)
                log.warning(
                    "model benchmarked beside tasks: advertised until measured idle, not cached", model=self._model
                )

    async def _attempt(self, cancellable: bool) -> BenchResult | None:
        """One measurement; None if a task cancelled it."""
        self._cancellable, self._task_beside = cancellable, not self._idle.is_set()
        measuring = self._measuring = asyncio.create_task(self._measure(), name=f"benchmark-{self._model}")
        try:
            await asyncio.wait({measuring})
        except asyncio.CancelledError:  # the process is stopping: the measurement ends before the model closes
            measuring.cancel()
            await asyncio.gather(measuring, return_exceptions=True)
            raise
        return None if measuring.cancelled() else measuring.result()

    async def _idle_for(self, seconds: float, limit: float | None) -> bool:
        """True once no task has come for `seconds` and none runs; False if `limit` seconds pass first."""
        try:
            async with asyncio.timeout(limit):
                while True:
                    await self._idle.wait()
                    self._task_came.clear()
                    try:
                        async with asyncio.timeout(seconds):
                            await self._task_came.wait()
                    except TimeoutError:
                        if self._idle.is_set():
                            return True
        except TimeoutError:
            return False
