"""TaskSender: a started publisher's way out, one signed task to one node (on a stream or on gossip).

Direct delivery (protocol 0.4) sends the task on a stream to the chosen node and learns at once
whether it took it; a node without `addrs`, or one whose dial was refused in the last minute,
gets it on gossip (protocol 0.3, the only way with `delivery="gossip"`). A failed dial marks its
host:ports too: keys are free and may all name one host:port (anyone's), so a node not measured serving
whose every host:port failed a dial in the last minute is declined without one. Each task sent is awaited in the
`ResultInbox` before it leaves, so a result that arrives at once is not missed. A task on gossip has no
stream to end when its node dies; if this publisher is connected to that node, the close of its last
connection (`peer_gone`) stands in for one: the attempt is lost and retried at once (attempts.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Literal

import structlog

from node.p2p.connector import transport_of
from node.p2p.errors import P2PError
from node.p2p.host import P2PHost
from node.publisher.attempts import Attempt
from node.publisher.direct import DeclinedError, DirectDelivery, NotDialableError, OnDelta, UndialableError, deliver
from node.publisher.errors import ClientError
from node.publisher.inbox import ResultInbox
from node.publisher.node_table import KnownNode
from node.publisher.tasks import Task, TaskResult, check_size, task_body
from node.wire.envelope import seal
from node.wire.identity import Identity
from node.wire.inbound import Inbound
from node.wire.messages import TaskBody
from node.wire.topics import TASK_TOPIC

log = structlog.get_logger(__name__)

UNDIALABLE_FOR_S = 60.0  # a node that could not be dialled gets its tasks on gossip this long
MAX_UNDIALABLE = 4096
PROBE_TIMEOUT_S = 2.0  # a node whose connection to us closed gets this long to take a new one (`_probe`)
# A peer is dialled by a probe at most once per this: a node (any key) that hangs up on each new connection made
# the publisher dial it again at once, for ever (3 dials a second per key, 64 keys at once).
PROBE_EVERY_S = 30.0

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
    ) -> None:
        """`answer_timeout`: seconds to dial a node and get its answer before it counts as declined.
        `served(address)`: whether this publisher measured the node serving (dialled even where another
        key's dial of the same host:port failed: keys are free, and may name an honest node's)."""
        self._host = host
        self._identity = identity
        self._inbox = inbox
        self._on_result = on_result
        self._delivery = delivery
        self._answer_timeout = answer_timeout
        self._deliveries: set[DirectDelivery] = set()
        self._gossiped: dict[str, dict[str, Attempt]] = {}  # peer id -> task id -> its attempt sent on gossip
        self._gossip_addrs: dict[str, tuple[str, ...]] = {}  # peer id -> its heartbeat's addrs (for `_probe`)
        self._probes: set[asyncio.Task[bool]] = set()
        self._probed: dict[str, float] = {}  # peer id -> monotonic time it may be probed again (`may_probe`)
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
        direct = self._delivery == "direct" and bool(node.addrs) and not self.undialable(node.address)
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
            try:
                delivery = await deliver(
                    self._host, list(node.addrs), body.task_id, envelope, self._answer_timeout, bool(body.stream)
                )
            except UndialableError as exc:
                if not exc.may_have_task:
                    self._inbox.forget(body.task_id)
                    self._mark_undialable(node.address, node.addrs)
                    log.info(
                        "node not dialable; its tasks go on gossip",
                        task_id=body.task_id,
                        node=node.address,
                        error=str(exc),
                    )
                    raise NotDialableError(body.task_id, f"not dialable: {exc}") from None
                # Its stream did not open in time, but it may have read the task: the same task id
                # on gossip reaches it either way and runs once.
                log.info("stream not open in time; sending on gossip", task_id=body.task_id, node=node.address)
            except DeclinedError:
                self._inbox.forget(body.task_id)
                raise
            else:
                delivery.follow(self._on_result, on_delta)
                self._deliveries.add(delivery)
                log.debug("task sent on a stream", task_id=body.task_id, node=node.address)
                return Attempt(body.task_id, node.address, future, delivery)
        try:
            await self._host.publish(TASK_TOPIC, envelope)
        except P2PError as exc:
            self._inbox.forget(body.task_id)
            raise ClientError(f"task {body.task_id}: could not publish: {exc}") from None
        log.debug("task published", task_id=body.task_id, node=node.address)
        attempt = Attempt(body.task_id, node.address, future, peer_id=node.peer_id)
        self._watch(attempt, node.addrs)
        return attempt

    def _watch(self, attempt: Attempt, addrs: tuple[str, ...]) -> None:
        """Watch the connection to the node of a task sent on gossip (`peer_gone`)."""
        self._gossiped.setdefault(attempt.peer_id, {})[attempt.task_id] = attempt
        self._gossip_addrs[attempt.peer_id] = addrs

    def peer_gone(self, peer_id: str) -> asyncio.Future[bool] | None:
        """The peer's last connection to us closed: each live task sent to it on gossip is lost (AttemptLoop
        retries it at once) unless the node takes a new connection (`_probe`). Only a peer we were connected
        to is heard of: a node reached through other peers is not, and waits out its attempt timeout as before."""
        attempts = [a for a in self._gossiped.pop(peer_id, {}).values() if not a.result.done()]
        addrs = self._gossip_addrs.pop(peer_id, ())
        if not attempts:
            return None
        if not self.may_probe(peer_id):
            # Its connection closed again within PROBE_EVERY_S of a probe (a node before kept_peers trims us each
            # grace_s; a hostile one hangs up on each connection): no dial, and its tasks wait out their attempt
            # timeout, as a node reached through other peers does.
            for attempt in attempts:
                self._watch(attempt, addrs)
            return None
        probe = asyncio.ensure_future(self._probe(attempts, addrs))
        self._probes.add(probe)
        probe.add_done_callback(self._probes.discard)
        return probe  # the Client's `_probe_gone` awaits it rather than dialling the node a second time

    def may_probe(self, peer_id: str) -> bool:
        """Whether a probe may dial `peer_id` now; if so, the next one waits PROBE_EVERY_S (bounded marks)."""
        now = time.monotonic()
        if self._probed.get(peer_id, 0.0) > now:
            return False
        _mark(self._probed, peer_id, now, PROBE_EVERY_S)
        return True

    async def _probe(self, attempts: list[Attempt], addrs: tuple[str, ...]) -> bool:
        """A closed connection is no proof of death: a node past its peer budget closes idle inbound ones
        (node/p2p/connection_trim.py), and anyone can push it there with idle peer ids. A node that takes a
        new connection within PROBE_TIMEOUT_S (at its heartbeat's addrs, else where the peerstore knew it) is alive,
        and its tasks are watched again; one that refuses it (a killed node's port: at once) or does not answer
        is gone."""
        try:
            alive = await self._host.reachable(attempts[0].peer_id, list(addrs), PROBE_TIMEOUT_S)
        except P2PError:
            alive = False
        for attempt in attempts:
            if attempt.result.done() or attempt.ended:
                continue
            if alive:
                self._watch(attempt, addrs)
            else:
                log.info("node of a gossip task disconnected", task_id=attempt.task_id, node=attempt.node)
                attempt.node_gone.set()
        if alive:
            log.debug("node of a gossip task reconnected", node=attempts[0].node)
        return alive

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
            self._deliveries.discard(attempt.direct)
            await attempt.direct.close()
            return
        gossiped = self._gossiped.get(attempt.peer_id)
        if gossiped is not None:
            gossiped.pop(attempt.task_id, None)
            if not gossiped:
                del self._gossiped[attempt.peer_id]
                self._gossip_addrs.pop(attempt.peer_id, None)

    async def close(self) -> None:
        """Close every stream still open."""
        deliveries, self._deliveries = list(self._deliveries), set()
        self._gossiped, self._gossip_addrs = {}, {}
        for probe in self._probes:
            probe.cancel()
        await asyncio.gather(*(delivery.close() for delivery in deliveries), return_exceptions=True)


def _mark(marks: dict[str, float], key: str, now: float, for_s: float = UNDIALABLE_FOR_S) -> None:
    """Mark `key` for `for_s` (a failed dial: UNDIALABLE_FOR_S), holding at most MAX_UNDIALABLE marks (the oldest
    go first)."""
    if len(marks) >= MAX_UNDIALABLE:
        current = {k: t for k, t in marks.items() if t > now}
        marks.clear()
        marks.update(current)
        while len(marks) >= MAX_UNDIALABLE:  # all current: the oldest mark goes
            del marks[min(marks, key=marks.__getitem__)]
    marks[key] = now + for_s
