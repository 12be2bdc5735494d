"""Suspects run again alone: the gate that keeps a suspect's rerun away from other tasks.

A task inside a stalled batch decode shares the suspicion with every task of that
batch (processes/stall.py), and every task on a process that crashed (its memory
limit, a signal) shares the crash. To learn which one stalls or crashes it, a
suspect's rerun runs alone on its model: it waits until no other task runs there, and while it runs new tasks
wait for it. Tasks run side by side otherwise. A suspect does not hold others back
while it waits (it may wait until its deadline under steady load); tasks wait for a
running suspect at most until the stall watchdog kills it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class RerunGate:
    """One model's gate: many `shared` holders, or one `alone` holder."""

    def __init__(self) -> None:
        self._changed = asyncio.Condition()
        self._shared = 0
        self._alone = False

    @asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        """Run beside other tasks (waits while a suspect runs alone)."""
        async with self._changed:
            await self._changed.wait_for(lambda: not self._alone)
            self._shared += 1
        try:
            yield
        finally:
            async with self._changed:
                self._shared -= 1
                self._changed.notify_all()

    @asynccontextmanager
    async def alone(self) -> AsyncIterator[None]:
        """Run with no other task on the model."""
        async with self._changed:
            await self._changed.wait_for(lambda: not self._alone and self._shared == 0)
            self._alone = True
        try:
            yield
        finally:
            async with self._changed:
                self._alone = False
                self._changed.notify_all()
