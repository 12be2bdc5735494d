"""A node that went since its last heartbeat (its last connection to the publisher closed, or its dial failed)
is weighed last: a killed node's heartbeat stays live for up to a minute, and a task sent to it on gossip waits
out the attempt timeout. The choice (NodeTable.mark_gone), the AttemptLoop's mark on a failed dial, then a
Client on real libp2p hosts: after a node's connection closed, the next task goes to another node at once."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from typing import Any

import structlog

from node.p2p.errors import P2PError
from node.p2p.host import P2PHost
from node.publisher.attempt import Attempt
from node.publisher.attempts import AttemptHooks, AttemptLoop
from node.publisher.direct import NotDialableError
from node.publisher.node_table import MAX_GONE, KnownNode, NodeTable
from node.publisher.reputation import Reputation
from node.publisher.tasks import Task, TaskResult
from node.wire.identity import Identity
from node.wire.inbound import Inbound
from node.wire.messages import HeartbeatBody, Stats
from tests.support.gossip_nodes import MODEL, GossipNode, Prefer, client_behind_a_relay, started_client
from tests.support.heartbeats import signed_heartbeat

NOW = 1_800_000_000.0


def heard(table: NodeTable, inbound: Inbound, at: float = NOW) -> bool:
    assert isinstance(inbound.body, HeartbeatBody)
    return table.update(inbound.sender, inbound.body, now=at)


def two_nodes(
    rng: random.Random | None = None, reputation: Reputation | None = None
) -> tuple[NodeTable, Identity, Identity]:
    """A table of `heavy` (much free room, fast) and `light` (one place, slow), both live at NOW."""
    heavy, light = Identity.generate(), Identity.generate()
    table = NodeTable(rng=rng or random.Random(7), reputation=reputation)
    assert heard(table, signed_heartbeat(heavy, [MODEL], free=1024, tps=1000, at=NOW))
    assert heard(table, signed_heartbeat(light, [MODEL], free=1, tps=1, at=NOW))
    return table, heavy, light


def picks(table: NodeTable, times: int = 200, at: float = NOW + 1, **kwargs: Any) -> set[str]:
    return {node.address for _ in range(times) if (node := table.choose([MODEL], now=at, **kwargs)) is not None}


def test_a_node_gone_since_its_heartbeat_is_not_chosen_while_another_can_be() -> None:
    table, heavy, light = two_nodes()
    assert heavy.address in picks(table)
    table.mark_gone(heavy.peer_id, now=NOW + 1)
    assert table.gone(heavy.peer_id)
    assert picks(table) == {light.address}  # its heartbeat still live: it weighed ~1e6 times the other
    assert [n.address for n in table.live(now=NOW + 1)] != []  # still listed: only weighed last
    assert table.serving([MODEL], exclude={light.address}, now=NOW + 1)  # and still counts as serving


def test_a_gone_node_is_still_chosen_when_no_other_is_a_candidate() -> None:
    # Weighed last, never excluded: the publisher may itself have hung up on a live node.
    table, heavy, light = two_nodes()
    table.mark_gone(heavy.peer_id, now=NOW + 1)
    assert picks(table, exclude={light.address}) == {heavy.address}
    table.mark_gone(light.peer_id, now=NOW + 1)
    assert heavy.address in picks(table)  # both gone: chosen as before, by weight


def test_a_heartbeat_after_it_went_brings_it_back_and_a_replayed_one_does_not() -> None:
    table, heavy, light = two_nodes()
    table.mark_gone(heavy.peer_id, now=NOW + 1)
    old = signed_heartbeat(heavy, [MODEL], free=1024, tps=1000, at=NOW)
    assert not heard(table, old, at=NOW + 2)  # the same signed body again: not news of it
    assert table.gone(heavy.peer_id) and picks(table, at=NOW + 2) == {light.address}
    assert heard(table, signed_heartbeat(heavy, [MODEL], free=1024, tps=1000, at=NOW + 2), at=NOW + 2)
    assert not table.gone(heavy.peer_id)
    assert heavy.address in picks(table, at=NOW + 3)


def test_a_new_connection_to_it_brings_it_back() -> None:
    table, heavy, _ = two_nodes()
    table.mark_gone(heavy.peer_id, now=NOW + 1)
    table.mark_back(heavy.peer_id)
    assert not table.gone(heavy.peer_id) and heavy.address in picks(table)
    table.mark_back("16Uiu2-never-marked")  # nothing to clear: nothing happens


def test_marks_are_bounded_and_those_older_than_the_ttl_go_first() -> None:
    table = NodeTable(ttl=60)
    table.mark_gone("stale", now=NOW)
    table.mark_gone("recent", now=NOW + 50)
    table.mark_gone("now", now=NOW + 61)  # "stale" was marked over a ttl ago: its heartbeat is stale anyway
    assert not table.gone("stale") and table.gone("recent") and table.gone("now")
    for i in range(MAX_GONE + 10):  # anyone can make peer ids that connect and hang up
        table.mark_gone(f"peer-{i}", now=NOW + 62)
    assert len(table._gone) == MAX_GONE
    assert not table.gone("recent") and not table.gone("peer-0") and table.gone(f"peer-{MAX_GONE + 9}")
    table.mark_gone("peer-20", now=NOW + 63)  # marked again: now the newest
    assert list(table._gone)[-1] == "peer-20"


def test_a_gone_node_measured_serving_lends_no_weight_to_the_nodes_never_measured() -> None:
    # The share of nodes never measured (anyone can make keys) is capped against the measured nodes that
    # can be chosen: a measured node that went must not count, or 20 fresh keys would take most choices.
    reputation = Reputation(None)
    table, heavy, light = two_nodes(random.Random(3), reputation)
    for _ in range(3):
        reputation.record_result(heavy.address, 2.0, 60, 1.5, 1000, now=NOW)
        reputation.record_result(light.address, 2.0, 60, 1.5, 1, now=NOW)
    fresh = [Identity.generate() for _ in range(20)]
    for identity in fresh:
        assert heard(table, signed_heartbeat(identity, [MODEL], free=1024, tps=1e6, at=NOW))
    table.mark_gone(heavy.peer_id, now=NOW + 1)
    chosen = [table.choose([MODEL], now=NOW + 1) for _ in range(2000)]
    assert heavy.address not in {n.address for n in chosen if n is not None}
    share = sum(n is not None and n.address != light.address for n in chosen) / len(chosen)
    assert share < 0.2, f"nodes never measured took {share:.0%} of the choices"


# --- AttemptLoop: a node that cannot be dialled is marked gone ----------------------------------------------


class DialNet:
    """Nodes `dead` (chosen first; every dial of it fails) and `alive` (answers at once)."""

    def __init__(self) -> None:
        self.dead, self.alive = Identity.generate(), Identity.generate()
        self.nodes = NodeTable(rng=Prefer([self.dead.address, self.alive.address]))
        for identity in (self.dead, self.alive):
            inbound = signed_heartbeat(identity, [MODEL], dialable=True)
            assert isinstance(inbound.body, HeartbeatBody)
            assert self.nodes.update(inbound.sender, inbound.body)
        self.reputation = Reputation(None)
        self.tried: list[str] = []

    async def choose(self, models: list[str], tried: set[str], *_: Any) -> KnownNode:
        node = self.nodes.choose(models, exclude=tried)
        assert node is not None
        return node

    async def send(self, task: Task, node: KnownNode, remaining: float, on_delta: Any) -> Attempt:
        task_id = f"t{len(self.tried)}"
        self.tried.append(node.address)
        if node.address == self.dead.address:
            raise NotDialableError(task_id, "not dialable: connection refused")
        future: asyncio.Future[TaskResult] = asyncio.get_running_loop().create_future()
        stats = Stats(received_at=1, published_at=1, execution_started_at=1, execution_ended_at=2)
        future.set_result(TaskResult(task_id=task_id, text="ok", node=node.address, model=MODEL, stats=stats))
        return Attempt(task_id, node.address, future)

    async def verify(self, result: TaskResult) -> TaskResult:
        return result

    async def end(self, attempt: Attempt) -> None:
        pass

    async def run(self) -> TaskResult:
        hooks = AttemptHooks(self.nodes, self.reputation, self.choose, self.send, self.verify, self.end)
        return await AttemptLoop(hooks, Task(workflow={}, models=[MODEL]), 60, 2, None).run()


async def test_a_node_whose_dial_failed_is_not_chosen_by_the_next_calls() -> None:
    # Its next task would go on gossip (TaskSender: undialable for a minute) and wait out half the timeout.
    net = DialNet()
    assert (await net.run()).node == net.alive.address
    assert net.tried == [net.dead.address, net.alive.address]
    for _ in range(3):
        assert (await net.run()).node == net.alive.address
    assert net.tried[2:] == [net.alive.address] * 3
    assert net.nodes.gone(net.dead.peer_id)


async def test_a_node_declined_without_a_dial_is_not_marked_gone() -> None:
    # Another key's dial of its host:ports failed (TaskSender): nothing was learnt of this node itself.
    net = DialNet()

    async def send(task: Task, node: KnownNode, remaining: float, on_delta: Any) -> Attempt:
        if node.address == net.dead.address:
            net.tried.append(node.address)
            raise NotDialableError("t", "not dialable: its addresses failed a dial in the last minute", dialled=False)
        return await DialNet.send(net, task, node, remaining, on_delta)

    net.send = send  # type: ignore[method-assign]
    assert (await net.run()).node == net.alive.address
    assert net.tried == [net.dead.address, net.alive.address]
    assert not net.nodes.gone(net.dead.peer_id)


# --- a Client on real libp2p hosts ----------------------------------------------------------------------


async def wait_until(check: Callable[[], bool], what: str) -> None:
    for _ in range(200):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def test_a_client_sends_a_new_task_to_another_node_once_a_nodes_connection_closed() -> None:
    goes, stays = GossipNode(answers=False), GossipNode(answers=True)
    for node in (goes, stays):
        await node.start()
    await stays.host.connect(goes.host.listen_addrs[0])
    client = await started_client(goes, stays, max_retries=1, attempt_timeout=10)
    try:
        await goes.stop()  # its connections close, as a killed node's do; its heartbeat stays live
        assert client._host is not None
        for _ in range(100):
            if goes.identity.peer_id not in await client._host.peers():
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # its close reached the Client, which probed it (refused at once)
        assert goes.identity.address in {n.address for n in client.nodes.live()}
        started = time.monotonic()
        result = await asyncio.wait_for(client.execute(Task(workflow={}, models=[MODEL]), timeout=20), 30)
        took = time.monotonic() - started
    finally:
        await client.close()
        await stays.stop()
        await goes.stop()
    assert result.node == stays.identity.address
    assert not goes.took.is_set()  # never sent to the node that went
    assert took < 3, f"the task took {took:.1f} s (the attempt timeout is 10 s)"


async def test_a_client_closing_marks_no_node_gone() -> None:
    # Closing, the Client hangs up on every peer: a table that outlives it must not take them for dead.
    goes, stays = GossipNode(answers=False), GossipNode(answers=True)
    for node in (goes, stays):
        await node.start()
    client = await started_client(goes, stays)
    try:
        await client.close()
        await asyncio.sleep(0.5)  # the closes are heard, if at all, by now
    finally:
        await stays.stop()
        await goes.stop()
    assert not client.nodes.gone(goes.identity.peer_id) and not client.nodes.gone(stays.identity.peer_id)


async def test_a_client_clears_the_mark_when_a_connection_to_the_node_opens() -> None:
    goes, stays = GossipNode(answers=False), GossipNode(answers=True)
    for node in (goes, stays):
        await node.start()
    client = await started_client(goes, stays)
    again = P2PHost(goes.identity.secret, ["/ip4/127.0.0.1/tcp/0"])  # the node, restarted with its key
    try:
        await goes.stop()
        await wait_until(lambda: client.nodes.gone(goes.identity.peer_id), "the node to be marked gone")
        await again.start()
        assert client._host is not None
        await again.connect(client._host.listen_addrs[0])  # it dials us before its first heartbeat
        await wait_until(lambda: not client.nodes.gone(goes.identity.peer_id), "the mark to be cleared")
    finally:
        await client.close()
        await again.stop()
        await stays.stop()
        await goes.stop()


async def test_a_node_that_trims_our_idle_connection_is_not_marked_gone() -> None:
    # A node past its peer budget closes idle inbound connections (connection_trim.py), and anyone can push it
    # there: the publisher probes it with a new connection, which it takes, so it is not weighed last.
    relay, busy, other = GossipNode(answers=False), GossipNode(answers=True), GossipNode(answers=True)
    client = await client_behind_a_relay(relay, busy, other)
    try:
        assert len(client.nodes.live()) == 2 and client._host is not None
        with contextlib.suppress(P2PError):  # the fake node serves no streams: the connection stays, idle
            await client._host.open_stream(busy.host.listen_addrs, b"{}", timeout=2.0)
        with structlog.testing.capture_logs() as logs:
            for _ in range(100):  # trimmed after its 1 s grace, then probed
                await asyncio.sleep(0.05)
            trims = [e for e in logs if e["event"] == "idle connections trimmed"]
            assert not client.nodes.gone(busy.identity.peer_id)
            result = await asyncio.wait_for(client.execute(Task(workflow={}, models=[MODEL]), timeout=20), 30)
    finally:
        await client.close()
        for node in (relay, busy, other):
            await node.stop()
    assert trims, "the busy node never trimmed the publisher's connection"
    assert result.node == busy.identity.address
