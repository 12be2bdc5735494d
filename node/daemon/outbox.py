"""The result outbox: every result is journalled before it is published, so none is lost.

A result is published at once when the node has peers; otherwise (or when the
publish fails) it stays in the journal and `run()` publishes it when peers
return, as long as the task's deadline plus a grace period has not passed.
Results are re-sealed at publish time, so a late envelope is never stale.
Journal entries whose deadline plus that grace has passed are pruned hourly
(the journal bounds itself in between; see its docstring).

A task that came on a direct-delivery stream gets its result envelope on that stream
(`DirectRoutes`, node/daemon/routes.py), the same envelope gossip would carry; when
the stream is gone the result is published on `results` as any other; also there when
the stream's peer did not sign the task (`DirectRoute.forwarded`: a relay, so the
publisher may be listening on gossip only). Never twice: while `send` holds a result (on its stream, which can take seconds
on a loaded node, or on gossip), the retry loop leaves its journal entry alone. Sends
never wait for each other or for a flush: results of concurrent tasks go out side by
side, each stamped and encoded once.

When the journal refuses a write (a full disk, an I/O error), the result is not lost:
it is held in memory (`UnjournalledResults`, node/daemon/unjournalled.py), delivered as
any other, and journalled by the retry loop once the journal takes writes again.

A result whose envelope would pass the gossip size limit is sent as a `result
too large` error instead. A result that cannot be sent for any other reason than
a missing peer is logged and marked dropped in the journal, so that neither this
loop nor a restart retries it forever; the loop itself never stops on one result.
"""

from __future__ import annotations

import asyncio
import time

import structlog

from node.daemon.journal import Journal
from node.daemon.journal_file import JournalEntry, JournalError, TaskState
from node.daemon.routes import DirectRoutes
from node.daemon.unjournalled import UnjournalledResults
from node.p2p.errors import NoMeshPeersError, P2PError
from node.p2p.host import P2PHost
from node.wire.envelope import seal, sealed_size
from node.wire.identity import Identity
from node.wire.messages import MessageError, ResultBody, decode_result, encode_body
from node.wire.results import as_error
from node.wire.topics import MAX_MESSAGE_BYTES, RESULTS_TOPIC

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
        prune_interval_s: float = 3600.0,
        routes: DirectRoutes | None = None,
    ) -> None:
        self._identity = identity
        self._host = host
        self._journal = journal
        self._grace_ns = int(grace_s * 1e9)
        self._retry_interval_s = retry_interval_s
        self._prune_interval_s = prune_interval_s
        self._flush_lock = asyncio.Lock()  # one flush at a time; sends never take it
        self.routes = routes if routes is not None else DirectRoutes()
        self._in_hand: set[str] = set()  # task ids whose result `send` is delivering now: flush leaves them alone
        self.unjournalled = UnjournalledResults()

    async def send(self, body: ResultBody, ledger_entry: str | None = None) -> bool:
        """Journal the result and publish it if the node has peers; True if published now.

        The body is stamped and encoded once: the journal keeps the bytes that are published,
        unless its stream took them and failed, which stamps it again for gossip. `ledger_entry`:
        the task's ledger row (JSON), journalled with it (`Journal.record_finished`).
        """
        body, encoded = _fitting(_stamped(body))
        try:
            self._journal.record_finished(body.task_id, encoded, ledger_entry)
        except JournalError as exc:
            log.error(
                "result not journalled; held in memory until the journal takes it", task_id=body.task_id, error=str(exc)
            )
            self.unjournalled.hold_finished(body, encoded, ledger_entry)
        self._in_hand.add(body.task_id)  # nothing awaited since the journal write: no flush has seen it
        try:
            if body.task_id in self.routes:
                forwarded = self.routes.forwarded(body.task_id)
                if await self._send_direct(body, encoded):
                    if forwarded:  # its publisher may be waiting on gossip (routes.py, DirectRoute.forwarded)
                        await self._copy_to_gossip(body, encoded)
                    return True
                return await self._publish_if_unpublished(body)  # as a kept one: time has passed on the stream
            return await self._publish(body, encoded, journalled=body.task_id not in self.unjournalled)
        finally:
            self._in_hand.discard(body.task_id)
            self.routes.drop(body.task_id)  # delivered, or gone to gossip: never left waiting

    async def _send_direct(self, body: ResultBody, stamped: bytes) -> bool:
        """Write the result on its task's stream (a slow stream holds up no other result).

        `stamped`: the body's encoding, stamped just before.
        """
        try:
            sealed = seal(self._identity, RESULTS_TOPIC, stamped)
        except Exception as exc:  # noqa: BLE001 - gossip's path reports it
            log.warning("result not sealed for its stream", task_id=body.task_id, error=str(exc))
            self.routes.drop(body.task_id)
            return False
        if not await self.routes.deliver(body.task_id, sealed):
            return False
        self._mark_published(body.task_id)
        log.info("result delivered on its stream", task_id=body.task_id, ok=body.error is None)
        return True

    async def _copy_to_gossip(self, body: ResultBody, stamped: bytes) -> None:
        """Publish a result already delivered on its stream (best effort: it is not kept for a retry)."""
        try:
            await self._host.publish(RESULTS_TOPIC, seal(self._identity, RESULTS_TOPIC, stamped), require_mesh=True)
        except Exception as exc:  # noqa: BLE001 - delivered already: a copy that fails costs nothing more
            log.info("result not copied to gossip", task_id=body.task_id, error=f"{type(exc).__name__}: {exc}")
            return
        log.info("result published", task_id=body.task_id, ok=body.error is None)

    async def flush(self) -> int:
        """Publish every journalled result still in time that no `send` holds; returns how many went out."""
        async with self._flush_lock:
            self.unjournalled.settle(self._journal)
            entries = self._journal.unpublished()
            held = [body for body in self.unjournalled.to_publish() if body.task_id not in self._in_hand]
            if not (entries or held) or not await self._has_peers():
                return 0
            sent = 0
            for held_body in held:  # not in the journal: published from memory, journalled when it can be
                if await self._publish(held_body, encode_body(_stamped(held_body))):
                    sent += 1
            now = time.time_ns()
            for entry in entries:
                if entry.deadline_ns + self._grace_ns < now:
                    continue  # too late to matter; pruned with the old entries
                if entry.task_id in self._in_hand or entry.task_id in self.unjournalled:
                    continue  # `send` is delivering it, or it went out and only its journal mark is owed
                try:
                    body = self._body_of(entry)
                    if body is not None and await self._publish_if_unpublished(body):
                        sent += 1
                except JournalError as exc:
                    log.error("kept result not published: journal failed", task_id=entry.task_id, error=str(exc))
            return sent

    async def run(self) -> None:
        """Retry unpublished results and prune old journal entries, forever (cancel to stop)."""
        loop = asyncio.get_running_loop()
        next_prune = loop.time() + self._prune_interval_s
        while True:
            try:
                if self.unjournalled or self._journal.backlog():
                    sent = await self.flush()
                    if sent:
                        log.info("kept results published", count=sent)
                if loop.time() >= next_prune:
                    next_prune = loop.time() + self._prune_interval_s
                    if pruned := self._journal.prune(time.time_ns() - self._grace_ns):
                        log.info("journal pruned", entries=pruned)
            except JournalError as exc:
                log.error("outbox round failed; retried in the next round", error=str(exc))
            except Exception:  # noqa: BLE001 - the outbox loop outlives any one failure
                log.exception("outbox round failed; retried in the next round")
            await asyncio.sleep(self._retry_interval_s)

    async def _publish_if_unpublished(self, body: ResultBody) -> bool:
        """Publish a kept result (from `flush`, or one its stream failed), checked for size and stamped now,
        unless it went out or was dropped meanwhile."""
        if body.task_id in self.unjournalled:
            return await self._publish(body, encode_body(_stamped(body)))
        if self._journal.state(body.task_id) != TaskState.FINISHED:
            return False  # published, or dropped for room, since it was journalled
        if (fitting := _fitting(body))[0] is not body:  # kept before this check existed
            self._journal.replace_result(body.task_id, fitting[1])
            body = fitting[0]
        return await self._publish(body, encode_body(_stamped(body)))

    async def _publish(self, body: ResultBody, data: bytes, journalled: bool = False) -> bool:
        """Seal `data` (the stamped encoding of `body`), publish it on gossip and mark it published.

        `journalled`: `data` are the very bytes journalled with the result (its size is known).
        """
        try:
            # The mesh check rides on the publish call: a separate one costs a thread crossing per result.
            sealed = seal(self._identity, RESULTS_TOPIC, data)
            await self._host.publish(RESULTS_TOPIC, sealed, require_mesh=True)
        except NoMeshPeersError:
            log.warning("no peers: result kept until peers return", task_id=body.task_id)
            return False
        except P2PError as exc:
            log.warning("result publish failed; kept for retry", task_id=body.task_id, error=str(exc))
            return False
        except Exception as exc:  # noqa: BLE001 - EnvelopeError or any other: one result must never stop the outbox
            log.error("result cannot be published; dropped", task_id=body.task_id, error=f"{type(exc).__name__}: {exc}")
            if not self.unjournalled.discard(body.task_id):
                self._journal.mark_dropped(body.task_id)
            return False
        self._mark_published(body.task_id, result_bytes=len(data) if journalled else None)
        log.info("result published", task_id=body.task_id, ok=body.error is None)
        return True

    def _mark_published(self, task_id: str, result_bytes: int | None = None) -> None:
        """Note in the journal that a result went out; if it cannot, hold that note so it is never sent twice."""
        if task_id in self.unjournalled:
            self.unjournalled.hold_published(task_id)  # journalled, with its publication, once the journal can
            return
        try:
            self._journal.mark_published(task_id, result_bytes=result_bytes)
        except JournalError as exc:  # dropped for room while it was on its way, or SQLite failed: it went out
            log.error("result published but not marked in the journal", task_id=task_id, error=str(exc))
            self.unjournalled.hold_published(task_id)

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
            self._journal.mark_dropped(entry.task_id)
            return None


def _stamped(body: ResultBody) -> ResultBody:
    """`body` with `publishedAt` now (never before its execution ended)."""
    stats = body.stats.model_copy(update={"published_at": max(time.time_ns(), body.stats.execution_ended_at)})
    return body.model_copy(update={"stats": stats})


def _fitting(body: ResultBody) -> tuple[ResultBody, bytes]:
    """`body`, or a `result too large` error in its place when its envelope would pass the gossip limit,
    with its encoding.

    The error names sizes only, never the task's data (error bodies are not encrypted).
    """
    encoded = encode_body(body)
    size = sealed_size(RESULTS_TOPIC, encoded)
    if size <= MAX_MESSAGE_BYTES:
        return body, encoded
    log.warning("result too large; sent as an error", task_id=body.task_id, envelope_bytes=size)
    reason = f"result too large: its envelope would be {size} bytes, over the {MAX_MESSAGE_BYTES}-byte gossip limit"
    error = as_error(body, reason)
    return error, encode_body(error)
