"""Supervision of the daemon's background loops and of the libp2p thread.

A loop that raises (or returns: loops run until cancelled) is restarted after
a backoff that doubles with each failure. A loop that fails `max_failures`
times within `window_s`, a loop started with `restart=False`, or a watched
thread that dies is fatal: `on_fatal(name, reason)` is called once, and the
daemon exits non-zero so systemd or Docker restarts it. `failed()` names every
loop that is not running right now (restarting or dead): health checks report
it and the systemd watchdog is not pinged while it is non-empty.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

import structlog

from node.daemon.failures import RecentFailures

log = structlog.get_logger(__name__)

LoopFactory = Callable[[], Awaitable[None]]
OnFatal = Callable[[str, str], None]


class LoopStoppedError(Exception):
    """A supervised loop returned; loops are meant to run until cancelled."""


class ThreadDiedError(Exception):
    """A watched thread is no longer alive."""


@dataclass
class LoopState:
    """What the supervisor knows about one loop."""

    name: str
    restart: bool
    state: Literal["running", "restarting", "failed"] = "running"
    last_error: str | None = None
    failures: RecentFailures = field(default_factory=RecentFailures)


class Supervisor:
    """Runs named loops as asyncio tasks and restarts or escalates their failures."""

    def __init__(
        self,
        on_fatal: OnFatal,
        *,
        max_failures: int = 5,
        window_s: float = 60.0,
        base_backoff_s: float = 0.5,
        max_backoff_s: float = 10.0,
    ) -> None:
        self._on_fatal = on_fatal
        self.max_failures = max_failures
        self.window_s = window_s
        self.base_backoff_s = base_backoff_s
        self.max_backoff_s = max_backoff_s
        self._loops: dict[str, LoopState] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._fatal: str | None = None

    def start(self, name: str, factory: LoopFactory, *, restart: bool = True) -> asyncio.Task[None]:
        """Run `factory()` as the loop `name`; restart it on failure if `restart`."""
        state = LoopState(name, restart)
        self._loops[name] = state
        task = asyncio.create_task(self._supervise(state, factory), name=name)
        self._tasks.append(task)
        return task

    def watch_thread(self, name: str, alive: Callable[[], bool], interval_s: float = 0.5) -> asyncio.Task[None]:
        """A loop that fails (fatally) once `alive()` turns false."""

        async def watch() -> None:
            while alive():
                await asyncio.sleep(interval_s)
            raise ThreadDiedError(f"thread {name} is no longer running")

        return self.start(name, watch, restart=False)

    def failed(self) -> list[str]:
        """Loops not running now, as 'name (state: error)'."""
        return [f"{s.name} ({s.state}: {s.last_error})" for s in self._loops.values() if s.state != "running"]

    @property
    def fatal(self) -> str | None:
        """Why the node must exit, once a fatal failure happened."""
        return self._fatal

    async def stop(self) -> None:
        """Cancel every loop started so far and wait for them to end."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _supervise(self, state: LoopState, factory: LoopFactory) -> None:
        while True:
            try:
                await factory()
                raise LoopStoppedError("the loop returned")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - every failure is handled below
                reason = f"{type(exc).__name__}: {exc}"[:300]
            state.last_error = reason
            failures = state.failures.record(time.monotonic(), self.window_s)
            if not state.restart or failures >= self.max_failures:
                state.state = "failed"
                log.error("loop failed", loop=state.name, error=reason, failures=failures)
                self._escalate(state.name, reason)
                return
            backoff = state.failures.backoff(self.base_backoff_s, self.max_backoff_s)
            state.state = "restarting"
            log.error("loop crashed, restarting", loop=state.name, error=reason, backoff_s=backoff)
            await asyncio.sleep(backoff)
            state.state = "running"

    def _escalate(self, name: str, reason: str) -> None:
        if self._fatal is not None:
            return
        self._fatal = f"{name}: {reason}"
        try:
            self._on_fatal(name, reason)
        except Exception:  # noqa: BLE001 - the callback must not kill the supervisor
            log.exception("fatal-loop callback failed", loop=name)


def thread_alive(name: str) -> bool:
    """Whether a thread with this name is running in this process."""
    return any(thread.name == name and thread.is_alive() for thread in threading.enumerate())
