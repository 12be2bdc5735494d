"""Inbound connections per remote host (node/p2p/inbound_gate.py): real TCP connections from other
loopback addresses (127.0.0.2, 127.0.0.3), counted while their sockets are open and per minute."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import pytest
import trio
from libp2p.io.trio import TrioTCPStream

from node.p2p.bounded_yamux import CLOSED_STREAM_FLOOD, CLOSED_WINDOW
from node.p2p.inbound_gate import REFUSED_OPEN, REFUSED_RATE, InboundGate, InboundLimits, host_key
from tests.support.p2p_hosts import HostFactory


def test_a_host_is_an_ipv4_address_or_an_ipv6_slash_56() -> None:
    assert host_key("203.0.113.7") == "203.0.113.7"
    assert host_key("2001:db8:aa:bb01::1") == host_key("2001:db8:aa:bbff::2") == "2001:db8:aa:bb00::/56"
    assert host_key("2001:db8:aa:bb01::1") != host_key("2001:db8:aa:cc01::1")
    assert host_key("::ffff:203.0.113.7") == "203.0.113.7"
    assert host_key("fe80::1%eth0") == "fe80::/56"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _accepted_from(listener: trio.SocketListener, port: int, source: str, count: int) -> list[TrioTCPStream]:
    """`count` real TCP connections to `port` made from `source`, as the listener accepted them."""
    accepted = []
    for _ in range(count):
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        await sock.bind((source, 0))
        await sock.connect(("127.0.0.1", port))
        accepted.append(TrioTCPStream(await listener.accept()))
    return accepted


def _with_listener(test: Callable[[trio.SocketListener, int], Awaitable[None]]) -> None:
    async def main() -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        async with listeners[0]:
            await test(listeners[0], listeners[0].socket.getsockname()[1])

    trio.run(main)


def test_a_host_past_its_open_cap_is_refused_until_one_of_its_connections_closes() -> None:
    gate = InboundGate(InboundLimits(max_per_host=3, new_per_host_per_minute=100))

    async def test(listener: trio.SocketListener, port: int) -> None:
        flood = await _accepted_from(listener, port, "127.0.0.2", 5)
        assert [gate.let_in(conn) for conn in flood] == [None, None, None, REFUSED_OPEN, REFUSED_OPEN]
        other = await _accepted_from(listener, port, "127.0.0.3", 1)
        assert gate.let_in(other[0]) is None  # another host is not charged for the first one's
        assert gate.open_from("127.0.0.2") == 3
        await flood[0].close()
        again = await _accepted_from(listener, port, "127.0.0.2", 1)
        assert gate.let_in(again[0]) is None
        assert gate.refused == {REFUSED_OPEN: 2, REFUSED_RATE: 0}

    _with_listener(test)


def test_a_host_churning_connections_is_refused_past_its_rate_until_the_minute_passes() -> None:
    clock = Clock()
    gate = InboundGate(InboundLimits(max_per_host=100, new_per_host_per_minute=4), clock=clock)

    async def test(listener: trio.SocketListener, port: int) -> None:
        verdicts = []
        for conn in await _accepted_from(listener, port, "127.0.0.2", 6):
            verdicts.append(gate.let_in(conn))
            await conn.close()  # open and closed at once: the open cap never bites
            clock.now += 1.0
        assert verdicts == [None] * 4 + [REFUSED_RATE] * 2
        clock.now += 60.0
        late = await _accepted_from(listener, port, "127.0.0.2", 1)
        assert gate.let_in(late[0]) is None

    _with_listener(test)


def test_quiet_hosts_are_forgotten_so_many_addresses_cannot_grow_the_table() -> None:
    clock = Clock()
    gate = InboundGate(InboundLimits(max_per_host=2, new_per_host_per_minute=2), clock=clock)

    async def test(listener: trio.SocketListener, port: int) -> None:
        for last in range(2, 12):
            for conn in await _accepted_from(listener, port, f"127.0.0.{last}", 1):
                assert gate.let_in(conn) is None
                await conn.close()
        assert gate.tracked_hosts == 10
        clock.now += 61.0
        kept = await _accepted_from(listener, port, "127.0.0.2", 1)
        gate.let_in(kept[0])
        assert gate.tracked_hosts == 1

    _with_listener(test)


async def _refused_at_once(port: int, source: str) -> bool:
    """Connect from `source`: True when the node closes the socket before its handshake (EOF at once)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        return await asyncio.wait_for(reader.read(1), 2.0) == b""
    except TimeoutError:
        return False  # still open: the node waits for our side of the handshake
    finally:
        writer.close()


@pytest.mark.asyncio
async def test_a_host_with_limits_closes_the_excess_before_the_handshake_and_others_still_connect(
    make_host: HostFactory,
) -> None:
    node = await make_host(inbound_limits=InboundLimits(max_per_host=2, new_per_host_per_minute=100))
    port = int(node.listen_addrs[0].split("/tcp/")[1].split("/")[0])
    held = [await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.2", 0)) for _ in range(2)]
    try:
        await asyncio.sleep(0.2)
        assert await _refused_at_once(port, "127.0.0.2")
        assert node.refused_connections == {REFUSED_OPEN: 1, REFUSED_RATE: 0, CLOSED_WINDOW: 0, CLOSED_STREAM_FLOOD: 0}
        peer = await make_host()  # from 127.0.0.1, another host
        assert await peer.connect(node.listen_addrs[0]) == node.peer_id
    finally:
        for _, writer in held:
            writer.close()


@pytest.mark.asyncio
async def test_a_host_without_limits_counts_nothing(make_host: HostFactory) -> None:
    node = await make_host()
    assert node.refused_connections == {CLOSED_WINDOW: 0, CLOSED_STREAM_FLOOD: 0}  # the muxer's, on every host
