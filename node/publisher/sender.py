"""TaskSender: a started publisher's way out, one signed task to one node (on a stream or on gossip).

Direct delivery (protocol 0.4) sends the task on a stream to the chosen node and learns at once
whether it took it; a node without `addrs`, or one whose dial was refused in the last minute,
gets it on gossip (protocol 0.3, the only way with `delivery="gossip"`). A failed dial marks its
host:ports too: keys are free and may all name one host:port (anyone's), so a node not measured serving
whose every host:port failed a dial in the last minute is declined without one. Each task sent is awaited in the
`ResultInbox` before it leaves, so a result that arrives at once is not missed. A task on gossip has no
stream to end when its node dies: `PeerWatch` (peer_watch.py) watches its node's connection instead.
A node takes at most `direct_streams_per_peer` (16 by default) streams from one publisher, and a gateway is one
publisher for all its clients: past 16 streams open to a node, after a node's `too_many_streams_from_peer`
answer, and after a stream the node reset on a live connection (its yamux cap), the task goes on gossip, where
only the node's task places count; the node is not taken for undialable.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from typing import Literal

import structlog

from node.p2p.connector import transport_of
from node.p2p.errors import P2PError
from node.p2p.host import P2PHost
from node.publisher.attempt import Attempt
from node.publisher.direct import (
    DeclinedError,
    DeclineKind,
    DirectDelivery,
    NotDialableError,
    OnDelta,
    UndialableError,
    deliver,
)
from node.publisher.errors import ClientError
from node.publisher.inbox import ResultInbox
from node.publisher.node_table import KnownNode
from node.publisher.peer_watch import PeerWatch
from node.publisher.tasks import Task, TaskResult, check_size, task_body
from node.wire.envelope import seal
from node.wire.identity import Identity
from node.wire.inbound import Inbound
from node.wire.messages import TaskBody
from node.wire.topics import TASK_TOPIC

log = structlog.get_logger(__name__)

UNDIALABLE_FOR_S = 60.0  # a node that could not be dialled gets its tasks on gossip this long
MAX_UNDIALABLE = 4096
# Streams open to one node at most (a node's default direct_streams_per_peer; a node's connection also resets a
# peer's streams past 32, which would read as a failed dial): more of its tasks go on gossip.
STREAMS_PER_NODE = 16
FULL_FOR_S = 5.0  # after a node said its streams from us are full, its tasks go on gossip this long (or until one ends)

Delivery = Literal["direct", "gossip"]
OnResult = Callable[[Inbound], None]  # a result that arrived on a task's stream


class TaskSender:
    """Sends tasks signed by `identity` from a started `host`; holds the streams of those sent direct."""

    def __init__(
        self,
        host: P2PHost,
        identity: Identity,
        inbox: ResultInbox,
        on_result: OnResult,
        delivery: Delivery,
        answer_timeout: float,
        served: Callable[[str], bool] = lambda address: False,
        watch: PeerWatch | None = None,
    ) -> None:
        """`answer_timeout`: seconds to dial a node and get its answer before it counts as declined.
        `served(address)`: whether this publisher measured the node serving (dialled even where another
        key's dial of the same host:port failed: keys are free, and may name an honest node's). `watch`: where tasks
        sent on gossip are watched (the Client's, which also marks nodes that went)."""
        self._host = host
        self._identity = identity
        self._inbox = inbox
        self._on_result = on_result
        self._delivery = delivery
        self._answer_timeout = answer_timeout
        self._deliveries: set[DirectDelivery] = set()
        self._streams_to: Counter[str] = Counter()  # node address -> streams open or opening to it
        self._full_until: dict[str, float] = {}  # node address -> until when its tasks go on gossip (STREAMS_FULL)
        self.watch = watch if watch is not None else PeerWatch(host)
        self._undialable: dict[str, float] = {}  # node address -> monotonic time its dial failure expires
        # host:port (a multiaddr without /p2p/) -> when its dial failure expires: 2,000 keys naming one host:port
        # made each task dial it until its deadline (44 connections in 5 s).
        self._failed_transports: dict[str, float] = {}
        self._served = served

    def body(self, task: Task, timeout: float, stream: bool = False, proof: bool = False) -> TaskBody:
        """A new task id with deadline now + timeout, the result encrypted to us (or to `task.public_key`)."""
        return task_body(task, timeout, self._identity.public_key_compressed.hex(), stream=stream, proof=proof)

    def undialable(self, address: str) -> bool:
        """Whether a dial of `address` failed less than UNDIALABLE_FOR_S ago."""
        until = self._undialable.get(address)
        return until is not None and until > time.monotonic()

    def _transports_failed(self, node: KnownNode) -> bool:
        """Whether every host:port `node` names failed a dial (any key's) less than UNDIALABLE_FOR_S ago."""
        now = time.monotonic()
        return bool(node.addrs) and all(self._failed_transports.get(transport_of(a), 0.0) > now for a in node.addrs)

    def _mark_undialable(self, address: str, addrs: tuple[str, ...] = ()) -> None:
        now = time.monotonic()
        _mark(self._undialable, address, now)
        for addr in addrs:
            _mark(self._failed_transports, transport_of(addr), now)

    async def send(
        self, task: Task, node: KnownNode, remaining: float, on_delta: OnDelta | None, proof: bool = False
    ) -> Attempt:
        """Send the task to `node`: on a stream when it offers one, else on gossip.

        A node whose dial fails may be dead (a killed node's heartbeat stays live for up to its
        ttl) or behind a NAT it did not tell of: this task goes to another node at once
        (NotDialableError), and for UNDIALABLE_FOR_S the node gets its tasks on gossip, which
        reaches it either way.

        DeclinedError: the node answered but did not take it (or did not answer in time).
        ClientError: it could not be published (TaskTooLargeError: no envelope can carry it).
        """
        direct = (
            self._delivery == "direct"
            and bool(node.addrs)
            and not self.undialable(node.address)
            and self._streams_to[node.address] < STREAMS_PER_NODE
            and self._full_until.get(node.address, 0.0) <= time.monotonic()
        )
        body = self.body(
            task.model_copy(update={"nodes": [node.address]}),
            remaining,
            stream=direct and on_delta is not None,
            proof=proof,
        )
        if direct and not self._served(node.address) and self._transports_failed(node):
            # Another key's dial of the same host:ports failed: none again there this minute. Declined at once as
            # a failed dial would be (chosen again, the node gets its tasks on gossip: no loop on it).
            _mark(self._undialable, node.address, time.monotonic())
            await asyncio.sleep(0)  # a run of such keys is declined without a dial: the event loop goes on meanwhile
            raise NotDialableError(
                body.task_id, "not dialable: its addresses failed a dial in the last minute", dialled=False
            )
        envelope = self._sealed(body)
        future = self._inbox.expect(body.task_id, [node.address], sealed=bool(task.public_key), models=task.models)
        try:
            return await self._send(body, envelope, node, future, on_delta, direct)
        except asyncio.CancelledError:
            self._inbox.forget(body.task_id)  # the caller is gone (an HTTP client that disconnected): nobody waits
            raise

    async def _send(
        self,
        body: TaskBody,
        envelope: bytes,
        node: KnownNode,
        future: asyncio.Future[TaskResult],
        on_delta: OnDelta | None,
        direct: bool,
    ) -> Attempt:
        if direct:
            delivery = await self._deliver(body, envelope, node)
            if isinstance(delivery, DirectDelivery):
                delivery.follow(self._on_result, on_delta)
                self._deliveries.add(delivery)
                log.debug("task sent on a stream", task_id=body.task_id, node=node.address)
                return Attempt(body.task_id, node.address, future, delivery)
            if delivery == "refused" and body.stream:  # it read nothing: the same task without `stream`, a field
                envelope = self._sealed(body.model_copy(update={"stream": None}))  # "sent only on this path" (8)
        try:
            await self._host.publish(TASK_TOPIC, envelope)
        except P2PError as exc:
            self._inbox.forget(body.task_id)
            raise ClientError(f"task {body.task_id}: could not publish: {exc}") from None
        log.debug("task published", task_id=body.task_id, node=node.address)
        attempt = Attempt(body.task_id, node.address, future, peer_id=node.peer_id)
        self.watch.watch(attempt, node.addrs)
        return attempt

    async def _deliver(
        self, body: TaskBody, envelope: bytes, node: KnownNode
    ) -> DirectDelivery | Literal["late", "refused"]:
        """The task on a stream to `node`, once it took it; else it goes on gossip: "late", its stream did not open
        in time (it may have read the task all the same: the same envelope, whose task id runs once), or "refused",
        the node takes no more streams from this publisher (it read nothing of the task). Counts its streams."""
        self._streams_to[node.address] += 1
        try:
            return await deliver(
                self._host, list(node.addrs), body.task_id, envelope, self._answer_timeout, bool(body.stream)
            )
        except UndialableError as exc:
            self._stream_ended(node.address)
            if not exc.may_have_task:
                self._inbox.forget(body.task_id)
                self._mark_undialable(node.address, node.addrs)
                log.info(
                    "node not dialable; its tasks go on gossip", task_id=body.task_id, node=node.address, error=str(exc)
                )
                raise NotDialableError(body.task_id, f"not dialable: {exc}") from None
            log.info("stream not open in time; sending on gossip", task_id=body.task_id, node=node.address)
            return "late"
        except DeclinedError as exc:
            self._stream_ended(node.address)
            if not exc.on_gossip:
                self._inbox.forget(body.task_id)
                raise
            if exc.kind is DeclineKind.STREAMS_FULL:
                self._full(node.address)
            log.info(
                "node takes no more streams from us; sending on gossip",
                task_id=body.task_id,
                node=node.address,
                reason=exc.reason,
            )
            return "refused"
        except BaseException:  # cancelled: the caller is gone
            self._stream_ended(node.address)
            raise

    def _stream_ended(self, address: str) -> None:
        self._streams_to[address] -= 1
        if self._streams_to[address] <= 0:
            del self._streams_to[address]
        self._full_until.pop(address, None)  # one of ours ended: it may take a stream again

    def _full(self, address: str) -> None:
        """It said its streams from us are full: its next tasks go on gossip for a while, not a stream's round trip
        each (at most MAX_UNDIALABLE marks: past them all are dropped, each costing one more round trip)."""
        if len(self._full_until) >= MAX_UNDIALABLE:
            self._full_until.clear()
        self._full_until[address] = time.monotonic() + FULL_FOR_S

    async def publish(self, body: TaskBody) -> None:
        """Sign and publish a task body as it is on gossip (ClientError if it cannot be: TaskTooLargeError
        when it is too large)."""
        try:
            await self._host.publish(TASK_TOPIC, self._sealed(body))
        except P2PError as exc:
            raise ClientError(f"task {body.task_id}: could not publish: {exc}") from None

    def _sealed(self, body: TaskBody) -> bytes:
        """The task's envelope, signed; TaskTooLargeError when no envelope can carry it."""
        return seal(self._identity, TASK_TOPIC, check_size(body))  # the checked bytes, not encoded again

    async def end(self, attempt: Attempt) -> None:
        """Close the attempt's stream, if it was sent on one; stop watching its node's connection if on gossip."""
        attempt.ended = True
        if attempt.direct is not None:
            if attempt.direct in self._deliveries:
                self._deliveries.discard(attempt.direct)
                self._stream_ended(attempt.node)
            declined = attempt.direct.declined
            if declined is not None and declined.kind is DeclineKind.STREAMS_FULL:  # said late, past answer_timeout
                self._full(attempt.node)
            await attempt.direct.close()
            return
        self.watch.end(attempt)

    async def close(self) -> None:
        """Close every stream still open."""
        deliveries, self._deliveries = list(self._deliveries), set()
        self._streams_to.clear()
        self._full_until.clear()
        await self.watch.close()
        await asyncio.gather(*(delivery.close() for delivery in deliveries), return_exceptions=True)


def _mark(marks: dict[str, float], key: str, now: float) -> None:
    """Mark `key` failed for UNDIALABLE_FOR_S, holding at most MAX_UNDIALABLE marks (the oldest go first)."""
    if len(marks) >= MAX_UNDIALABLE:
        current = {k: t for k, t in marks.items() if t > now}
        marks.clear()
        marks.update(current)
        while len(marks) >= MAX_UNDIALABLE:  # all current: the oldest mark goes
            del marks[min(marks, key=marks.__getitem__)]
    marks[key] = now + UNDIALABLE_FOR_S
