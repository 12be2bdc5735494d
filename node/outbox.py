"""The result outbox: every result is journalled before it is published, so none is lost.

A result is published at once when the node has peers; otherwise (or when the
publish fails) it stays in the journal and `run()` publishes it when peers
return, as long as the task's deadline plus a grace period has not passed.
Results are re-sealed at publish time, so a late envelope is never stale.
Journal entries older than their deadline plus `retention_s` are pruned hourly.
"""

from __future__ import annotations

import asyncio
import time

import structlog

from node.envelope import seal
from node.identity import Identity
from node.inbound import RESULTS_TOPIC
from node.journal import Journal, JournalEntry, TaskState
from node.messages import MessageError, ResultBody, decode_result, encode_body
from node.p2p import P2PError, P2PHost

log = structlog.get_logger(__name__)


class ResultOutbox:
    """Journals, stamps, signs and publishes result bodies."""

    def __init__(
        self,
        identity: Identity,
        host: P2PHost,
        journal: Journal,
        *,
        grace_s: float = 300.0,
        retry_interval_s: float = 2.0,
        retention_s: float = 86400.0,
        prune_interval_s: float = 3600.0,
    ) -> None:
        self._identity = identity
        self._host = host
        self._journal = journal
        self._grace_ns = int(grace_s * 1e9)
        self._retry_interval_s = retry_interval_s
        self._retention_ns = int(retention_s * 1e9)
        self._prune_interval_s = prune_interval_s
        self._lock = asyncio.Lock()

    async def send(self, body: ResultBody) -> bool:
        """Journal the result and publish it if the node has peers; True if published now."""
        self._journal.record_finished(body.task_id, encode_body(body))
        async with self._lock:
            if not await self._has_peers():
                log.warning("no peers: result kept until peers return", task_id=body.task_id)
                return False
            return await self._publish_if_unpublished(body)

    async def flush(self) -> int:
        """Publish every journalled result still in time; returns how many went out."""
        async with self._lock:
            entries = self._journal.unpublished()
            if not entries or not await self._has_peers():
                return 0
            sent = 0
            now = time.time_ns()
            for entry in entries:
                if entry.deadline_ns + self._grace_ns < now:
                    continue  # too late to matter; pruned with the old entries
                body = self._body_of(entry)
                if body is not None and await self._publish_if_unpublished(body):
                    sent += 1
            return sent

    async def run(self) -> None:
        """Retry unpublished results and prune old journal entries, forever (cancel to stop)."""
        loop = asyncio.get_running_loop()
        next_prune = loop.time() + self._prune_interval_s
        while True:
            if self._journal.backlog():
                sent = await self.flush()
                if sent:
                    log.info("kept results published", count=sent)
            if loop.time() >= next_prune:
                next_prune = loop.time() + self._prune_interval_s
                if pruned := self._journal.prune(time.time_ns() - self._retention_ns):
                    log.info("journal pruned", entries=pruned)
            await asyncio.sleep(self._retry_interval_s)

    async def _publish_if_unpublished(self, body: ResultBody) -> bool:
        # Callers hold the lock; `send` and `flush` may both hold the same result.
        entry = self._journal.get(body.task_id)
        if entry is not None and entry.state == TaskState.PUBLISHED:
            return False
        stats = body.stats.model_copy(update={"published_at": max(time.time_ns(), body.stats.execution_ended_at)})
        sent = body.model_copy(update={"stats": stats})
        try:
            await self._host.publish(RESULTS_TOPIC, seal(self._identity, RESULTS_TOPIC, encode_body(sent)))
        except P2PError as exc:
            log.warning("result publish failed; kept for retry", task_id=body.task_id, error=str(exc))
            return False
        self._journal.mark_published(body.task_id)
        log.info("result published", task_id=body.task_id, ok=body.error is None)
        return True

    async def _has_peers(self) -> bool:
        # Peers in the results mesh, not merely connected ones: right after a
        # (re)connect the mesh is still forming and a publish would go nowhere.
        try:
            return (await self._host.mesh_sizes()).get(RESULTS_TOPIC, 0) > 0
        except P2PError:
            return False

    def _body_of(self, entry: JournalEntry) -> ResultBody | None:
        try:
            return decode_result(entry.result_body or b"")
        except MessageError as exc:
            log.error("journalled result unreadable; dropped", task_id=entry.task_id, error=str(exc))
            self._journal.mark_published(entry.task_id)
            return None
