"""The loop supervisor: restart with backoff, escalate what cannot continue."""

from __future__ import annotations

import asyncio
import threading

import pytest

from node.daemon.supervisor import Supervisor, thread_alive


class Fatal:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def __call__(self, name: str, reason: str) -> None:
        self.calls.append((name, reason))


async def test_a_loop_that_raises_is_restarted_with_backoff() -> None:
    fatal = Fatal()
    supervisor = Supervisor(fatal, base_backoff_s=0.05)
    runs: list[float] = []
    ticks = asyncio.Event()

    async def flaky() -> None:
        runs.append(asyncio.get_running_loop().time())
        if len(runs) <= 2:
            raise RuntimeError(f"boom {len(runs)}")
        ticks.set()
        await asyncio.Event().wait()

    task = supervisor.start("flaky", flaky)
    await asyncio.sleep(0.01)
    assert supervisor.failed() == ["flaky (restarting: RuntimeError: boom 1)"]
    await asyncio.wait_for(ticks.wait(), 5)
    assert supervisor.failed() == [] and fatal.calls == [] and len(runs) == 3
    # The second wait doubled the first.
    assert runs[2] - runs[1] >= 1.8 * (runs[1] - runs[0]) > 0
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_loop_that_keeps_failing_is_fatal_once() -> None:
    fatal = Fatal()
    supervisor = Supervisor(fatal, max_failures=3, base_backoff_s=0.01)

    async def broken() -> None:
        raise OSError("disk full")

    await asyncio.wait_for(supervisor.start("journal", broken), 5)
    assert fatal.calls == [("journal", "OSError: disk full")]
    assert supervisor.failed() == ["journal (failed: OSError: disk full)"]
    assert supervisor.fatal == "journal: OSError: disk full"


async def test_a_loop_that_returns_counts_as_a_failure() -> None:
    fatal = Fatal()
    supervisor = Supervisor(fatal, max_failures=1)

    async def quits() -> None:
        return

    await asyncio.wait_for(supervisor.start("quitter", quits), 5)
    assert fatal.calls == [("quitter", "LoopStoppedError: the loop returned")]


async def test_a_dead_thread_is_fatal() -> None:
    fatal = Fatal()
    supervisor = Supervisor(fatal)
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, name="watched-thread", daemon=True)
    thread.start()
    watcher = supervisor.watch_thread("p2p-thread", lambda: thread_alive("watched-thread"), interval_s=0.02)
    await asyncio.sleep(0.1)
    assert supervisor.failed() == [] and fatal.calls == []
    stop.set()
    thread.join()
    await asyncio.wait_for(watcher, 5)
    assert fatal.calls == [("p2p-thread", "ThreadDiedError: thread p2p-thread is no longer running")]
    assert supervisor.failed() == ["p2p-thread (failed: ThreadDiedError: thread p2p-thread is no longer running)"]


async def test_stop_cancels_every_loop_started_and_waits_for_them() -> None:
    supervisor = Supervisor(Fatal())
    ended: list[str] = []

    async def forever(name: str) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            ended.append(name)

    tasks = [supervisor.start(name, lambda name=name: forever(name)) for name in ("a", "b")]  # type: ignore[misc]
    await asyncio.sleep(0.01)
    await supervisor.stop()
    assert sorted(ended) == ["a", "b"] and all(task.cancelled() for task in tasks)
