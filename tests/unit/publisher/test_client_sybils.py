"""A publisher Client whose node table is full of Sybil keys (real signed heartbeats) beside one honest
peer speaking protocol 0.4 over real libp2p: a task still reaches the honest node after at most one fake
(also while that node's heartbeat says it is full), keys that decline without end do not keep a task past its
timeout, and keys that all name one host:port (anyone's) do not make a call dial it again and again."""

from __future__ import annotations

import asyncio
import json
import random
import time

import pytest

from node.publisher.client import Client, ClientError, Task, TaskFailedError, TaskTimeoutError
from node.publisher.gossip_peers import GossipPeerSettings
from node.publisher.reputation_records import ReputationSettings
from node.wire.envelope import seal
from node.wire.identity import Identity
from node.wire.inbound import decode
from node.wire.messages import HeartbeatBody
from node.wire.topics import HEARTBEAT_TOPIC
from tests.support.streaming_peer import StreamingPeer, client_of

FAKES = 2_000


def flood(client: Client, dialable: bool, fakes: int = FAKES, port: int = 1) -> None:
    """`fakes` signed heartbeats, each from a new key, claiming every model, the most free places and speed;
    with `dialable`, an address on 127.0.0.1:`port` (by default one that refuses connections: a decline at
    once), else none (tasks on gossip)."""
    now_ns = time.time_ns()
    for i in range(fakes):
        identity = Identity(random.Random(i).randbytes(32))
        body = {
            "address": identity.address,
            "peerId": identity.peer_id,
            "models": ["m", "*"],
            "capacity": {"free": 1024, "max": 1024},
            "pendingTasks": 0,
            "tps": {"m": 1e6},
            "version": "0.3.0",
            "timestamp": now_ns,
        }
        if dialable:
            body["addrs"] = [f"/ip4/127.0.0.1/tcp/{port}/p2p/{identity.peer_id}"]
        inbound = decode(HEARTBEAT_TOPIC, seal(identity, HEARTBEAT_TOPIC, json.dumps(body).encode()))
        assert isinstance(inbound.body, HeartbeatBody)
        assert client.nodes.update(inbound.sender, inbound.body, envelope=inbound.signed.envelope)


async def test_a_task_reaches_the_measured_node_after_at_most_one_fake_that_never_answers() -> None:
    peer = StreamingPeer([], "ok")
    # Fakes get nearly every choice a call may explore with: the bound per call is what is tested.
    settings = ReputationSettings(explore_share=0.99)
    async with client_of(peer, max_retries=2, attempt_timeout=1.0, reputation_settings=settings) as client:
        assert (await client.execute(Task(workflow={}, models=["m"]), timeout=10)).node == peer.identity.address
        flood(client, dialable=False)
        sent: list[str | None] = []
        for _ in range(4):
            sent.clear()
            result = await client.execute(
                Task(workflow={}, models=["m"]), timeout=10, on_submit=lambda _, node: sent.append(node)
            )
            assert result.node == peer.identity.address
            assert len(sent) <= 2 and sent[-1] == peer.identity.address, sent


async def test_keys_that_decline_without_end_do_not_keep_a_task_past_its_timeout() -> None:
    peer = StreamingPeer([], "ok")
    async with client_of(peer, max_retries=2) as client:
        flood(client, dialable=True)
        peer_address = peer.identity.address
        started = time.monotonic()
        # The last decline, or the timeout: keys whose host:port failed are declined without a dial, so the call
        # runs through them all, and the last one gets the task on gossip (no other node left).
        with pytest.raises((TaskFailedError, TaskTimeoutError)):
            async with asyncio.timeout(60):  # without the bound: one dial after another, for each key
                await client.execute(Task(workflow={}, models=["m"], exclude=[peer_address]), timeout=2)
        assert time.monotonic() - started < 10


async def test_a_measured_node_whose_heartbeat_says_it_is_full_gets_the_task_after_at_most_one_fake() -> None:
    """A heartbeat's `free` is up to an interval old (and a one-place node says 0 right after our own task):
    keys that claim free places took every choice of the call then, and the call failed."""
    peer = StreamingPeer([], "ok", free=0)
    async with client_of(peer, max_retries=2, attempt_timeout=0.5) as client:
        assert (await client.execute(Task(workflow={}, models=["m"]), timeout=10)).node == peer.identity.address
        flood(client, dialable=False, fakes=200)
        sent: list[str | None] = []
        result = await client.execute(
            Task(workflow={}, models=["m"]), timeout=10, on_submit=lambda _, node: sent.append(node)
        )
        assert result.node == peer.identity.address
        assert len(sent) <= 2 and sent[-1] == peer.identity.address, sent


async def test_keys_that_all_name_one_host_port_make_a_call_dial_it_about_once() -> None:
    """Keys are free: 200 whose addrs name one host:port (anyone's; here a TCP listener that counts its
    connections) made one call connect there again and again until its deadline (44 connections in 5 s)."""
    connections = 0

    async def count(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        writer.close()  # not libp2p: a web server that drops what it cannot parse

    server = await asyncio.start_server(count, "127.0.0.1", 0)
    peer = StreamingPeer([], "ok")
    try:
        # Its gossip keeper dials no key (it has the one peer it wants): the dials counted are the call's.
        keeper = GossipPeerSettings(min_peers=1, max_peers=1)
        async with client_of(peer, max_retries=2, gossip_peers=keeper) as client:
            flood(client, dialable=True, fakes=200, port=server.sockets[0].getsockname()[1])
            started = time.monotonic()
            with pytest.raises(ClientError):
                async with asyncio.timeout(30):
                    await client.execute(Task(workflow={}, models=["m"], exclude=[peer.identity.address]), timeout=4)
            assert time.monotonic() - started < 10
            assert connections <= 2, f"{connections} connections to the host:port the keys named"
    finally:
        server.close()
