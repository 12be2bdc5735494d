"""One libp2p host on 127.0.0.1: its identity and addresses, dialling, subscribing, stopping."""

from __future__ import annotations

import asyncio
import secrets
import threading
import time

import pytest

from node.p2p.host import P2PError, P2PHost
from tests.support.p2p_hosts import (
    LOOPBACK,
    TOPIC,
    WAIT_S,
    HostFactory,
    pair,
    receive,
)


def test_peer_id_of_fixed_secret() -> None:
    secret = bytes.fromhex("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318")
    first, second = P2PHost(secret, [LOOPBACK]), P2PHost(secret, [LOOPBACK])
    assert first.peer_id.startswith("16Uiu2")
    assert first.peer_id == second.peer_id
    assert P2PHost(secrets.token_bytes(32), [LOOPBACK]).peer_id != first.peer_id


def test_bad_secret_is_rejected() -> None:
    with pytest.raises(P2PError, match="secret"):
        P2PHost(b"short", [LOOPBACK])


async def test_listen_addrs_have_real_port_and_peer_id(make_host: HostFactory) -> None:
    host = await make_host()
    [addr] = host.listen_addrs
    parts = addr.split("/")
    assert parts[1:3] == ["ip4", "127.0.0.1"] and parts[3] == "tcp"
    assert int(parts[4]) > 0
    assert addr.endswith(f"/p2p/{host.peer_id}")


async def test_port_in_use_fails_naming_the_address(make_host: HostFactory) -> None:
    first = await make_host()
    port = first.listen_addrs[0].split("/")[4]
    taken = f"/ip4/127.0.0.1/tcp/{port}"
    second = P2PHost(secrets.token_bytes(32), [taken])
    with pytest.raises(P2PError, match=taken):
        await asyncio.wait_for(second.start(), WAIT_S)
    await second.stop()


async def test_dial_failures_raise_p2p_error(make_host: HostFactory) -> None:
    a, b = await make_host(), await make_host()
    with pytest.raises(P2PError, match="names no peer"):
        await a.connect("not-a-multiaddr")
    with pytest.raises(P2PError, match="invalid peer multiaddr"):
        await a.connect("/ip4/127.0.0.1/tcp/1/p2p/not-a-peer-id")
    with pytest.raises(P2PError, match="our own"):
        await a.connect(a.listen_addrs[0])
    port = b.listen_addrs[0].split("/")[4]
    await b.stop()
    started = time.monotonic()
    with pytest.raises(P2PError, match=port):
        await a.connect(f"/ip4/127.0.0.1/tcp/{port}/p2p/{b.peer_id}", timeout=3.0)
    assert time.monotonic() - started < 5.0
    assert await a.peers() == []


async def test_a_peer_back_on_its_address_can_be_dialled_again_at_once(make_host: HostFactory) -> None:
    """A failed dial must not bar the next one: the caller (the connector's backoff) decides when to retry,
    not libp2p's 60 s negative cache of peers whose addresses all failed."""
    secret = secrets.token_bytes(32)
    a, b = await make_host(), await make_host(secret=secret)
    address = b.listen_addrs[0]
    await b.stop()
    with pytest.raises(P2PError):
        await a.connect(address, timeout=3.0)
    port = address.split("/")[4]
    back = P2PHost(secret, [f"/ip4/127.0.0.1/tcp/{port}"])
    await back.start()
    try:
        assert await a.connect(address, timeout=5.0) == back.peer_id
    finally:
        await back.stop()


async def test_a_peer_back_with_its_key_on_another_port_is_dialled_there(make_host: HostFactory) -> None:
    """py-libp2p dials the first address its peerstore holds for a peer: the dead one, while each failed
    dial kept it. A node restarted on a new port (its heartbeat's new `addrs`) was never reached again."""
    secret = secrets.token_bytes(32)
    a, b = await make_host(), await make_host(secret=secret)
    assert await a.connect(b.listen_addrs[0], timeout=5.0) == b.peer_id
    await b.stop()
    moved = P2PHost(secret, [LOOPBACK])  # the same key, a new port
    await moved.start()
    try:
        assert moved.listen_addrs[0] != b.listen_addrs[0]
        assert await a.connect(moved.listen_addrs[0], timeout=5.0) == moved.peer_id
    finally:
        await moved.stop()


async def test_subscribing_twice_is_an_error(make_host: HostFactory) -> None:
    host = await make_host()
    await host.subscribe(TOPIC)
    with pytest.raises(P2PError, match="already subscribed"):
        await host.subscribe(TOPIC)


async def test_stop_under_traffic_is_clean_bounded_and_idempotent(make_host: HostFactory) -> None:
    a, b, _, qb = await pair(make_host)

    async def flood() -> int:
        count = 0
        try:
            while True:
                await a.publish(TOPIC, f"flood {count}".encode())
                count += 1
        except P2PError:
            return count

    flooding = asyncio.create_task(flood())
    await receive(qb)  # traffic is flowing
    started = time.monotonic()
    await b.stop()
    await a.stop()
    assert time.monotonic() - started < 5.0
    assert await asyncio.wait_for(flooding, WAIT_S) > 0
    await a.stop()  # idempotent
    await b.stop()
    alive = {thread.name for thread in threading.enumerate()}
    assert a.thread_name not in alive and b.thread_name not in alive
    with pytest.raises(P2PError, match="not running"):
        await a.publish(TOPIC, b"after stop")


async def test_stop_during_start_is_bounded() -> None:
    host = P2PHost(secrets.token_bytes(32), [LOOPBACK])
    starting = asyncio.create_task(host.start())
    await asyncio.sleep(0)  # the thread is started, the host is not ready yet
    await asyncio.wait_for(host.stop(), WAIT_S)
    with pytest.raises(P2PError, match="stopped while starting"):
        await asyncio.wait_for(starting, WAIT_S)
    assert host.thread_name not in {thread.name for thread in threading.enumerate()}


async def test_a_closed_inbound_connection_leaves_nothing_behind(make_host: HostFactory) -> None:
    """py-libp2p parks each inbound connection's handler until the whole swarm stops: a Trio task, its
    RawConnection and socket objects, ~5 KB, for every connection a node ever accepted (0.2 GB a day
    from one address at the default rate limit). Each now ends with its own connection."""
    import gc

    from libp2p.network.connection.raw_connection import RawConnection

    def raw_connections() -> int:
        gc.collect()
        return sum(1 for obj in gc.get_objects() if isinstance(obj, RawConnection))

    node = await make_host()
    before = raw_connections()
    for _ in range(20):
        peer = P2PHost(secrets.token_bytes(32), [LOOPBACK])
        await peer.start()
        await peer.connect(node.listen_addrs[0], timeout=5.0)
        await peer.stop()
    deadline = time.monotonic() + WAIT_S
    while raw_connections() - before > 2 and time.monotonic() < deadline:  # the node sees each close shortly
        await asyncio.sleep(0.1)
    assert raw_connections() - before <= 2  # was 20: one kept per connection, closed or not


async def test_one_failed_dial_is_one_connection(make_host: HostFactory) -> None:
    """Each dial of ours is paced by its caller (the connector's backoff, a publisher's undialable marks);
    py-libp2p's own retries made each one 4 connections to the host:port and 0.7 s before it failed."""
    connections = 0

    async def count(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        writer.close()  # not libp2p: whatever listens at an address a heartbeat named

    server = await asyncio.start_server(count, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    a = await make_host()
    stranger = P2PHost(secrets.token_bytes(32), [LOOPBACK]).peer_id
    try:
        with pytest.raises(P2PError):
            await a.open_stream([f"/ip4/127.0.0.1/tcp/{port}/p2p/{stranger}"], b"{}", timeout=5.0)
        await asyncio.sleep(0.5)  # a retry would come within 0.1 s
        assert connections == 1
    finally:
        server.close()
