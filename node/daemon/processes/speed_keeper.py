"""Which speeds an execution process measures the daemon keeps in its cache (<data_dir>/speeds.json).

The daemon cannot check a measurement, and a process a workflow took over could report any figure; a kept
one would outlive that process and set the advertised tokens/s and the stall watchdog's first bound at
every later start. So a figure is kept only from a process that has been sent no task yet (MAX_MEASURED_SPEEDS
at most: past them the process says what it likes). One measured after a task is not kept: under the key the
process named in `ready` (before any task), the store asks the next start to measure before it serves
instead, once, unless it holds a valid figure already.

The speed a process measures after `ready` (`benchmarked`, advertised, never cached) is taken only as `ready`
announced it: for its model, a clean figure after at most MAX_PROVISIONAL_SPEEDS provisional ones.
"""

from __future__ import annotations

import structlog

from models.benchmark import MEASURE_BEFORE_READY, SpeedStore, stored_result
from node.execution.protocol import MAX_MEASURED_SPEEDS, MAX_PROVISIONAL_SPEEDS, Benchmarked, Measured, Ready

log = structlog.get_logger(__name__)


class SpeedKeeper:
    """One execution process's side of the daemon's speed cache, and of the speed it advertises after `ready`."""

    def __init__(self, model: str, store: SpeedStore | None) -> None:
        self._model = model
        self._store = store
        self._measured = 0  # `measured` messages received
        self._tasks_sent = 0
        self._asked_before_ready = False  # the next start is asked to measure before ready
        self._provisional = 0  # provisional `benchmarked` speeds taken

    def entries(self) -> dict[str, dict[str, object]]:
        """What `configure` carries to the process."""
        return self._store.entries() if self._store is not None else {}

    def task_sent(self) -> None:
        """A task went to the process: what it reports from now on is not kept."""
        self._tasks_sent += 1

    def offer(self, message: Measured, ready: Ready | None) -> bool:
        """Keep what may be kept of a measured speed; False when the message was not the process's to send."""
        self._measured += 1
        if self._measured > MAX_MEASURED_SPEEDS or message.model != self._model:
            return False
        if self._store is None:
            return True
        if not self._tasks_sent:
            if self._put(message.key, message.model_dump(mode="json", exclude={"kind", "key"})):
                log.info("model speed cached", model=self._model, generation_tps=round(message.generation_tps, 1))
            return True
        key = ready.speed_key if ready is not None else None  # said before any task: never a key the process names
        if key is None or self._asked_before_ready or stored_result(self._store.entries().get(key)) is not None:
            return True
        self._asked_before_ready = True
        log.info("model speed not cached: a task came first", model=self._model, next_start="measured before ready")
        self._put(key, {"model": self._model, MEASURE_BEFORE_READY: True})
        return True

    def takes_benchmark(self, message: Benchmarked, ready: Ready | None, latest: Benchmarked | None) -> bool:
        """Whether a `benchmarked` is to be taken (`latest`: the one taken before): for its model, after a `ready`
        that said the speed comes later; a clean figure, after at most MAX_PROVISIONAL_SPEEDS provisional ones,
        and none after the clean one."""
        if ready is None or not ready.benchmark_later or message.model != self._model:
            return False
        if latest is not None and not latest.provisional:
            return False
        if message.provisional and self._provisional >= MAX_PROVISIONAL_SPEEDS:
            return False
        self._provisional += message.provisional
        return True

    def _put(self, key: str, entry: dict[str, object]) -> bool:
        assert self._store is not None
        try:
            self._store.put(key, entry)
        except OSError as exc:  # a full disk or a read-only data dir: measured again at the next start
            log.warning("model benchmark not cached", model=self._model, error=str(exc))
            return False
        return True
