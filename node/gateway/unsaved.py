"""Writes the gateway's task store refused (a full disk, an I/O error), held in memory until it takes them.

Two kinds, by gateway task id: a task's outcome (served from here meanwhile) and the network task id it
was published as (a restart needs it to resume waiting for the result). A retry loop writes them every
`UNSAVED_RETRY_S`; `close` tries once more, within `FINAL_SAVE_S`, so that a graceful stop soon after the
disk has room loses none. Bounded by the pending caps: at most one of each per task followed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, TypeVar

import structlog

from node.gateway.database import DatabaseError
from node.gateway.store import TaskStore

log = structlog.get_logger(__name__)

UNSAVED_RETRY_S = 5.0  # seconds between two tries to write what the store could not take
FINAL_SAVE_S = 2.0  # at most this long for the last try at a stop

K = TypeVar("K")
V = TypeVar("V")


def write_held(held: dict[K, V], write: Callable[[K, V], object], until: float | None = None) -> bool:
    """Write and forget each of `held` in turn, until the store refuses one (DatabaseError: it and the rest stay
    for the next try) or `until` (monotonic) passes; True if none is left."""
    for key, value in list(held.items()):
        if until is not None and time.monotonic() > until:
            return False
        try:
            write(key, value)
        except DatabaseError:
            return False
        del held[key]
    return True


class UnsavedWrites:
    """Outcomes and network ids of tasks the store refused, written once it takes writes again."""

    def __init__(self, store: TaskStore) -> None:
        self._store = store
        self._outcomes: dict[str, dict[str, Any]] = {}  # task id -> status and fields of `TaskStore.finish`
        self._published: dict[str, tuple[str, str | None]] = {}  # task id -> (network id, node)
        self._saver: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._outcomes) + len(self._published)

    def outcome(self, task_id: str) -> dict[str, Any] | None:
        """The outcome of `task_id` the store has not taken yet (status and fields), if any."""
        return self._outcomes.get(task_id)

    def published(self, task_id: str, network_id: str, node: str | None) -> None:
        """Store the network id a task was published as, or keep it for the retry loop."""
        try:
            self._store.published(task_id, network_id, node)
        except DatabaseError as exc:
            log.error("network task id not stored; kept until the store takes it", id=task_id, error=str(exc))
            self._published[task_id] = (network_id, node)  # a retry's newer id replaces the older
            self._start_saver()
            return
        self._published.pop(task_id, None)

    def finish(self, task_id: str, status: str, fields: dict[str, Any]) -> None:
        """Store a task's outcome, or keep it (served from `outcome`) for the retry loop."""
        fields = {"status": status, **fields, **self._network_fields(task_id, fields)}
        try:
            self._write_outcome(task_id, fields)
        except DatabaseError as exc:
            log.error(
                "task outcome not stored; served from memory until the store takes it", id=task_id, error=str(exc)
            )
            self._outcomes[task_id] = fields
            self._start_saver()

    def save(self, until: float | None = None) -> bool:
        """Write what is held, until the store refuses one or `until` (monotonic) passes; True if none is left."""
        return write_held(
            self._published, lambda task_id, held: self._store.published(task_id, *held), until
        ) and write_held(self._outcomes, self._write_outcome, until)

    async def close(self) -> None:
        """Stop the retry loop and try once more (within FINAL_SAVE_S); what is still refused is lost."""
        if self._saver is not None:
            self._saver.cancel()
            await asyncio.gather(self._saver, return_exceptions=True)
        if not self or self.save(until=time.monotonic() + FINAL_SAVE_S):
            return
        log.error(
            "task outcomes and network ids lost at stop: the store refused them",
            outcomes=list(self._outcomes),
            network_ids=list(self._published),
        )

    def _network_fields(self, task_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        """A held network id goes with the outcome (written after it, it would overwrite the result's node)."""
        held = self._published.pop(task_id, None)
        if held is None:
            return {}
        network_id, node = held
        return {"network_id": network_id} if "node" in fields else {"network_id": network_id, "node": node}

    def _write_outcome(self, task_id: str, fields: dict[str, Any]) -> None:
        rest = dict(fields)
        self._store.finish(task_id, rest.pop("status"), **rest)

    def _start_saver(self) -> None:
        if self._saver is None or self._saver.done():
            self._saver = asyncio.create_task(self._retry(), name="gateway-unsaved-writes")

    async def _retry(self) -> None:
        """Write what is held every UNSAVED_RETRY_S, until none is left."""
        while self:
            await asyncio.sleep(UNSAVED_RETRY_S)
            self.save()
        log.info("unsaved task outcomes and network ids stored")
