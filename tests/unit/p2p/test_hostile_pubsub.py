"""Hostile pubsub RPCs at a host with default settings: real libp2p peers (tests/support/raw_pubsub.py)
write raw rpc_pb2 RPCs on their pubsub streams. Whatever they send, the host keeps running, holds
state per peer within node/p2p/pubsub_limits.py's bounds, and an honest peer's message still arrives."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

import pytest
import structlog.testing
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2

from node.p2p.gossip import Gossip
from node.p2p.host import P2PHost
from node.p2p.pubsub_limits import (
    MAX_BACKOFF_PEERS,
    MAX_IDONTWANT_IDS,
    MAX_PEER_SUBSCRIPTIONS,
    MAX_TOPIC_CHARS,
    BoundedGossipSub,
    WallClockJumps,
    drop_expired_backoff,
    shift_wall_times,
)
from tests.support.p2p_hosts import TOPIC, HostFactory, pair, receive, wait_until
from tests.support.raw_pubsub import RawPeers, raw_pubsub_peers, subscriptions

Control = rpc_pb2.ControlMessage


async def on_trio(host: P2PHost, fn: Callable[[Gossip], Any]) -> Any:
    """`fn(the host's Gossip)`, run on its Trio thread."""

    async def call() -> Any:
        assert host._service.gossip is not None
        return fn(host._service.gossip)

    return await host._trio.call(call)


def tasks_spawned(gossip: Gossip) -> int:
    """Tasks py-libp2p's service manager started for pubsub so far."""
    return int(gossip.pubsub.manager._total_task_count)  # type: ignore[attr-defined]


async def scene(make_host: HostFactory) -> tuple[P2PHost, P2PHost, Any, str]:
    """A host subscribed to TOPIC (validator: data starting with b"ok") meshed with an honest peer."""
    node, honest, node_queue, _ = await pair(make_host)
    return node, honest, node_queue, node.listen_addrs[0]


async def honest_message_arrives(honest: P2PHost, node_queue: Any) -> None:
    data = b"ok " + secrets.token_hex(8).encode()
    await honest.publish(TOPIC, data)
    while (await receive(node_queue)).data != data:
        pass


async def subscribed(peers: RawPeers, node: P2PHost, index: int = 0, subscribe: bool = True) -> None:
    """Peer `index` announces (or withdraws) its subscription to TOPIC; wait until the host knows."""
    await peers.send(index, subscriptions([TOPIC], subscribe))

    async def known() -> bool:
        held = await on_trio(node, lambda g: peers[index].peer_id in g.pubsub.peer_topics.get(TOPIC, set()))
        return bool(held) == subscribe

    await wait_until(known, "the raw peer's subscription")


async def joined(peers: RawPeers, node: P2PHost, index: int = 0) -> None:
    await subscribed(peers, node, index)


async def settled(node: P2PHost, peers: RawPeers, index: int = 0) -> None:
    """Everything peer `index` (joined) sent so far was read: its RPCs after it were."""
    await subscribed(peers, node, index, subscribe=False)
    await subscribed(peers, node, index)


async def test_an_rpc_that_is_not_protobuf_ends_its_stream_not_the_host(make_host: HostFactory) -> None:
    node, honest, node_queue, addr = await scene(make_host)
    async with raw_pubsub_peers(addr) as peers:
        await joined(peers, node)
        with structlog.testing.capture_logs() as logs:
            await peers.send(0, b"\xff\xff\xff\x0f not protobuf")

            async def dropped() -> bool:
                return any(e["event"] == "pubsub stream dropped" for e in logs)

            await wait_until(dropped, "the raw peer's pubsub stream to be dropped")
        await honest_message_arrives(honest, node_queue)


async def test_a_message_whose_key_does_not_parse_is_dropped(make_host: HostFactory) -> None:
    node, honest, node_queue, addr = await scene(make_host)
    async with raw_pubsub_peers(addr) as peers:
        await joined(peers, node)
        # A sha256 peer id holds no key, so py-libp2p parses msg.key, which raised out of its task.
        unkeyed = rpc_pb2.Message(
            data=b"ok", topicIDs=[TOPIC], from_id=b"\x12\x20" + secrets.token_bytes(32), seqno=b"1", signature=b"s"
        )
        unkeyed.key = b"not a key"
        await peers.send(0, rpc_pb2.RPC(publish=[unkeyed]))
        await settled(node, peers)
        await honest_message_arrives(honest, node_queue)


async def test_the_messages_of_one_rpc_spawn_no_task_each(make_host: HostFactory) -> None:
    node, honest, node_queue, addr = await scene(make_host)
    async with raw_pubsub_peers(addr) as peers:
        await joined(peers, node)
        before = await on_trio(node, tasks_spawned)
        bad = [peers.signed_message(0, TOPIC, b"no" + secrets.token_bytes(8)) for _ in range(2000)]
        for msg in bad[::2]:
            msg.signature = secrets.token_bytes(64)
        await peers.send(0, rpc_pb2.RPC(publish=bad))
        await settled(node, peers)
        spawned = await on_trio(node, tasks_spawned) - before
        assert spawned < 10, spawned  # py-libp2p spawned one per message, each spawn a walk over all live tasks
        await honest_message_arrives(honest, node_queue)


async def test_a_message_naming_a_topic_twice_or_one_not_joined_is_dropped(make_host: HostFactory) -> None:
    node, honest, node_queue, addr = await scene(make_host)
    async with raw_pubsub_peers(addr) as peers:
        await joined(peers, node)
        # py-libp2p validated a message, and queued it, once per topic named: a task named 4 times was
        # decoded 7 times. And it keeps scores and fanout times per topic named, joined or not (a message
        # may name ~1 MiB of topics): 90 MB held after 300 heartbeats from one peer.
        repeated = peers.signed_message(0, TOPIC, b"ok repeated " + secrets.token_bytes(8), also=[TOPIC])
        junk = "j" * 10_000
        not_joined = peers.signed_message(0, TOPIC, b"ok not joined " + secrets.token_bytes(8), also=[junk])
        once = peers.signed_message(0, TOPIC, b"ok once " + secrets.token_bytes(8))
        await peers.send(0, rpc_pb2.RPC(publish=[repeated, not_joined, once]))
        await settled(node, peers)
        assert (await receive(node_queue)).data == once.data
        await honest_message_arrives(honest, node_queue)
        assert node_queue.empty()
        assert not await on_trio(node, lambda g: junk in g.router.time_since_last_publish)
        assert not await on_trio(node, lambda g: g.router.equivocation_detection)  # no message kept whole
        scores = await on_trio(node, lambda g: dict(g.router.scorer.first_message_deliveries[peers[0].peer_id]))
        assert junk not in scores


async def test_message_ids_past_any_ids_length_or_count_are_not_kept(make_host: HostFactory) -> None:
    node, honest, node_queue, addr = await scene(make_host)
    async with raw_pubsub_peers(addr) as peers:
        await joined(peers, node)
        # An IDONTWANT's ids were kept whole until the next heartbeat: one RPC could hold a 1 MiB id.
        long_id, ids = b"x" * 500_000, [secrets.token_hex(32).encode() for _ in range(6000)]
        control = Control(idontwant=[rpc_pb2.ControlIDontWant(messageIDs=[long_id, *ids])])
        await peers.send(0, rpc_pb2.RPC(control=control))
        await settled(node, peers)
        held = await on_trio(node, lambda g: set(g.router.dont_send_message_ids.get(peers[0].peer_id, ())))
        assert held and long_id not in held and len(held) <= MAX_IDONTWANT_IDS
        await honest_message_arrives(honest, node_queue)


def router_state_of(gossip: Gossip, peer: ID) -> list[str]:
    """The router's maps that hold something for `peer`."""
    router, scorer = gossip.router, gossip.router.scorer
    assert scorer is not None
    maps = {
        "time_in_mesh": scorer.time_in_mesh,
        "first_message_deliveries": scorer.first_message_deliveries,
        "mesh_message_deliveries": scorer.mesh_message_deliveries,
        "invalid_messages": scorer.invalid_messages,
        "dont_send_message_ids": router.dont_send_message_ids,
        "iwant_spent": router._iwant_spent,
    }
    return [name for name, held in maps.items() if peer in held]


async def test_a_peer_that_never_took_our_pubsub_stream_leaves_no_router_state_when_it_goes(
    make_host: HostFactory,
) -> None:
    node, honest, node_queue, addr = await scene(make_host)
    async with raw_pubsub_peers(addr, serve_pubsub=False) as peers:
        peer = peers[0].peer_id
        # Never registered (it refuses our stream), yet its RPCs are read: py-libp2p clears a router's
        # state only for peers it registered, so each such peer id left its scores for good.
        message = peers.signed_message(0, TOPIC, b"ok unregistered " + secrets.token_bytes(8))
        bad = peers.signed_message(0, TOPIC, b"no " + secrets.token_bytes(8))
        control = Control(
            iwant=[rpc_pb2.ControlIWant(messageIDs=[b"00" * 32])],
            idontwant=[rpc_pb2.ControlIDontWant(messageIDs=[b"\x01" * 32])],
        )
        await peers.send(0, rpc_pb2.RPC(publish=[message, bad], control=control))
        assert (await receive(node_queue)).data == message.data

        async def held() -> bool:
            return bool(await on_trio(node, lambda g: router_state_of(g, peer)))

        await wait_until(held, "the unregistered peer's state noted")
        assert not await on_trio(node, lambda g: peer in g.pubsub.peers)

        async def disconnect() -> None:  # the node ends the connection (as its connection trimmer does)
            assert node._service.gossip is not None
            await node._service.gossip.pubsub.host.disconnect(peer)

        await node._trio.call(disconnect)

        async def forgotten() -> bool:
            return not await on_trio(node, lambda g: router_state_of(g, peer))

        await wait_until(forgotten, "the unregistered peer's state forgotten once it left")
    await honest_message_arrives(honest, node_queue)


async def test_an_iwant_naming_a_message_many_times_gets_it_once(make_host: HostFactory) -> None:
    node, honest, node_queue, addr = await scene(make_host)
    async with raw_pubsub_peers(addr) as peers:
        await joined(peers, node)
        await honest.publish(TOPIC, b"ok" + secrets.token_bytes(100_000))
        await wait_until(lambda: _true(peers[0].message_ids), "the message relayed to the raw peer")
        wanted = peers[0].message_ids[-1]
        before = peers[0].received_bytes
        iwant = rpc_pb2.ControlIWant(messageIDs=[wanted] * 500)
        await peers.send(0, rpc_pb2.RPC(control=Control(iwant=[iwant])))
        await settled(node, peers)
        await wait_until(lambda: _true(peers[0].received_bytes - before > 100_000), "the IWANT answered")
        await honest_message_arrives(honest, node_queue)
        assert peers[0].received_bytes - before < 2 * 101_000  # py-libp2p sent 32 MB (500 copies, queue-capped)


async def _true(value: object) -> bool:
    return bool(value)


async def test_control_for_topics_not_joined_leaves_no_state_and_no_answer(make_host: HostFactory) -> None:
    node, honest, node_queue, addr = await scene(make_host)
    made_up = [f"made-up-{i}" for i in range(2000)]
    async with raw_pubsub_peers(addr) as peers:
        await joined(peers, node)
        ids = [secrets.token_bytes(32) for _ in range(100)]
        control = Control(
            prune=[rpc_pb2.ControlPrune(topicID=t, backoff=2**63) for t in made_up],
            graft=[rpc_pb2.ControlGraft(topicID=t) for t in made_up],
            ihave=[rpc_pb2.ControlIHave(topicID=t, messageIDs=ids) for t in made_up[:50]],
        )
        await peers.send(0, rpc_pb2.RPC(control=control))
        await settled(node, peers)
        back_off = await on_trio(node, lambda g: set(g.router.back_off) | set(g.router.graft_flood_tracking))
        assert back_off.isdisjoint(made_up)
        await honest_message_arrives(honest, node_queue)
        answered = [c for c in peers[0].control if c.prune or c.iwant]
        assert answered == []  # py-libp2p answered a PRUNE per GRAFT and an IWANT per IHAVE


async def test_subscriptions_are_bounded_per_peer_whatever_the_count_and_names(make_host: HostFactory) -> None:
    node, honest, node_queue, addr = await scene(make_host)
    sybils = 4
    async with raw_pubsub_peers(addr, sybils) as peers:
        for index in range(sybils):
            await joined(peers, node, index)
            await peers.send(index, subscriptions(["L" * 100_000 + str(i) for i in range(8)]))
            await peers.send(index, subscriptions([f"t{index}-{i}" for i in range(3000)]))
            await settled(node, peers, index)

        def held(gossip: Gossip) -> tuple[int, int]:
            topics = gossip.pubsub.peer_topics
            return sum(len(p) for t, p in topics.items() if t != TOPIC), max(len(t) for t in topics)

        entries, longest = await on_trio(node, held)
        assert entries <= sybils * MAX_PEER_SUBSCRIPTIONS, entries
        assert longest <= MAX_TOPIC_CHARS
        await honest_message_arrives(honest, node_queue)


def test_expired_backoff_is_forgotten() -> None:
    router = BoundedGossipSub(protocols=[], degree=6, degree_low=5, degree_high=12)
    router.back_off = {"task": {"gone": 0, "kept": 2**40}, "results": {"gone": 0}}  # type: ignore[dict-item]
    assert drop_expired_backoff(router) == 2
    assert router.back_off == {"task": {"kept": 2**40}}


def test_backoffs_of_gone_peers_past_the_cap_end_soonest_first() -> None:
    # Each PRUNE from a fresh peer id left a backoff for up to an hour after the peer was gone.
    router = BoundedGossipSub(protocols=[], degree=6, degree_low=5, degree_high=12)
    later = int(time.time()) + 3000
    gone = {ID(f"gone-{i}".encode()): later + i for i in range(MAX_BACKOFF_PEERS + 100)}
    live = {ID(f"live-{i}".encode()): later - 1000 for i in range(10)}
    router.back_off = {"task": {**gone, **live}}  # type: ignore[dict-item]
    assert drop_expired_backoff(router, connected=lambda peer: peer in live) == 110
    kept = router.back_off["task"]
    assert len(kept) == MAX_BACKOFF_PEERS and set(live) <= set(kept)
    assert min(until for peer, until in kept.items() if peer in gone) == later + 110  # the soonest went


def test_a_wall_clock_jump_moves_gossips_backoffs_with_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # py-libp2p keeps PRUNE backoffs and GRAFT-flood prune times in wall-clock seconds: after a jump back of an
    # hour, a peer pruned a minute before stayed out of the mesh (its GRAFTs a "flood") for an hour more.
    router = BoundedGossipSub(protocols=[], degree=6, degree_low=5, degree_high=12)
    peer = ID(b"peer")
    before = time.time()
    router._add_back_off(peer, "task", False)  # pruned now: back off for prune_back_off seconds
    router.graft_flood_tracking[peer]["task"] = before
    jumps = WallClockJumps()
    assert jumps.jumped() == 0.0
    wall = time.time
    monkeypatch.setattr(time, "time", lambda: wall() - 3600)  # NTP steps the clock back an hour
    jump = jumps.jumped()
    assert jump == pytest.approx(-3600, abs=1)
    shift_wall_times(router, jump)
    monkeypatch.setattr(time, "time", lambda: wall() - 3600 + router.prune_back_off + 1)  # the backoff has run
    assert not router._check_back_off(peer, "task")  # out of backoff, as with no jump
    assert router._check_graft_flood_protection(peer, "task")  # its GRAFT is no flood
