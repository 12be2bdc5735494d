"""A coroutine metered against an allowance of CPU (workflows/cpu_meter.py): stopped once it is spent, its
cleanup run, a cancellation passed in, its result returned."""

from __future__ import annotations

import asyncio
import time

import pytest

from workflows.allowance import Allowance
from workflows.cpu_meter import metered
from workflows.errors import ToolError


def _burn(seconds: float) -> None:
    started = time.thread_time()
    while time.thread_time() - started < seconds:
        pass


async def test_a_coroutine_that_spends_its_allowance_is_stopped_and_still_cleans_up() -> None:
    cleaned: list[str] = []

    async def greedy() -> int:
        try:
            for _ in range(100):
                _burn(0.01)
                await asyncio.sleep(0)
            return 1
        finally:
            await asyncio.sleep(0)  # cleanup that awaits (closing a connection) still runs
            cleaned.append("closed")

    allowance = Allowance(per_second=0.0, burst=0.05)
    started = time.thread_time()
    with pytest.raises(ToolError, match="spent"):
        await metered(greedy(), allowance, ToolError("spent"))
    assert time.thread_time() - started < 0.5  # ~0.06 s, not the whole 1 s it would burn
    assert cleaned == ["closed"]
    with pytest.raises(ToolError, match="again"):  # spent: the next one is stopped at its first step
        await metered(greedy(), allowance, ToolError("again"))


async def test_an_honest_coroutine_returns_and_a_cancellation_reaches_it() -> None:
    async def quick() -> str:
        await asyncio.sleep(0)
        return "done"

    allowance = Allowance(per_second=0.0, burst=1.0)
    assert await metered(quick(), allowance, ToolError("spent")) == "done"
    assert 0.0 < allowance.left() < 1.0

    seen: list[str] = []

    async def waits() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    async def through_the_meter() -> None:
        await metered(waits(), allowance, ToolError("spent"))

    task = asyncio.create_task(through_the_meter())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == ["cancelled"]


def test_an_allowance_refills_at_its_rate_up_to_its_burst() -> None:
    now = [100.0]
    allowance = Allowance(per_second=2.0, burst=4.0, clock=lambda: now[0])
    allowance.take(5.0)
    assert allowance.left() == -1.0  # overdrawn by the last step, whose cost is known once it ran
    now[0] += 1.0
    assert allowance.left() == 1.0
    now[0] += 10.0
    assert allowance.left() == 4.0  # never past the burst


async def test_once_spent_no_further_step_runs_but_the_cleanup() -> None:
    """The step that overdraws runs (its cost is known after it); the next one gets the error instead."""
    steps: list[str] = []

    async def two_heavy_steps() -> None:
        try:
            _burn(0.05)
            steps.append("first")
            await asyncio.sleep(0)
            _burn(0.05)
            steps.append("second")
        finally:
            steps.append("cleanup")

    with pytest.raises(ToolError, match="spent"):
        await metered(two_heavy_steps(), Allowance(per_second=0.0, burst=0.01), ToolError("spent"))
    assert steps == ["first", "cleanup"]


async def test_a_cancellation_is_never_replaced_by_the_error_even_once_spent() -> None:
    """A cancellation (a deadline, the process's exit) passed in while the allowance is spent stays one."""
    seen: list[str] = []

    async def spends_then_waits() -> None:
        _burn(0.02)
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            seen.append("cancelled")
            await asyncio.sleep(0)  # cleanup that awaits
            raise

    async def through_the_meter() -> None:
        await metered(spends_then_waits(), Allowance(per_second=0.0, burst=0.01), ToolError("spent"))

    task = asyncio.create_task(through_the_meter())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == ["cancelled"] and task.cancelled()
