"""Result envelopes of posted tasks the SDK store refused (a full disk, an I/O error), held until it takes them.

The node sends a result once: one the store could not queue would never reach the SDK's poll. Held by
network id (the first result of each, as the store keeps), written every `UNSAVED_RETRY_S`, and once more
within `FINAL_SAVE_S` at a graceful stop. Bounded by the pending caps: one per task posted.
"""

from __future__ import annotations

import asyncio
import time

import structlog

from node.gateway import unsaved
from node.gateway.database import DatabaseError
from node.gateway.dria_sdk.store import SdkStore

log = structlog.get_logger(__name__)


class UnqueuedResults:
    """Results the SDK store refused, by network id, queued once it takes writes again."""

    def __init__(self, store: SdkStore) -> None:
        self._store = store
        self._held: dict[str, str] = {}  # network id -> the item `SdkStore.add_result` queues
        self._saver: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._held)

    def add(self, network_id: str, item: str) -> bool:
        """Queue a task's first result, or hold it for the retry loop; False if the task already has one."""
        if network_id in self._held:
            return False
        try:
            return self._store.add_result(network_id, item)
        except DatabaseError as exc:
            log.error("result not queued; kept until the store takes it", task_id=network_id, error=str(exc))
            self._held[network_id] = item
            if self._saver is None or self._saver.done():
                self._saver = asyncio.create_task(self._retry(), name="gateway-unqueued-results")
            return True

    def save(self, until: float | None = None) -> bool:
        """Queue what is held, until the store refuses one or `until` (monotonic) passes; True if none is left."""
        return unsaved.write_held(self._held, self._store.add_result, until)

    async def close(self) -> None:
        """Stop the retry loop and try once more (within FINAL_SAVE_S); what is still refused is lost."""
        if self._saver is not None:
            self._saver.cancel()
            await asyncio.gather(self._saver, return_exceptions=True)
        if self._held and not self.save(until=time.monotonic() + unsaved.FINAL_SAVE_S):
            log.error("sdk results lost at stop: the store refused them", task_ids=list(self._held))

    async def _retry(self) -> None:
        while self._held:
            await asyncio.sleep(unsaved.UNSAVED_RETRY_S)
            self.save()
        log.info("unqueued sdk results stored")
