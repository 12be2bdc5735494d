"""Peer addresses given by name (node/p2p/peer_addrs.py) are looked up with the system resolver, so names
from /etc/hosts dial; a dial that fails says why (node/p2p/errors.py, `root_cause`)."""

from __future__ import annotations

import secrets
import socket

import multiaddr
import pytest
import trio

from node.p2p.errors import P2PError, root_cause
from node.p2p.host import P2PHost
from node.p2p.peer_addrs import NameLookupError, looked_up
from tests.support.p2p_hosts import HostFactory

PEER = "16Uiu2HAm1rzwuEzmG7LLHWRVp1odcWLpfoBt9cKg72b7DQB8XFp4"


def look_up(addr: str) -> list[str]:
    return [str(found) for found in trio.run(looked_up, multiaddr.Multiaddr(addr))]


def test_a_name_from_the_hosts_file_becomes_its_address() -> None:
    assert look_up(f"/dns4/localhost/tcp/4001/p2p/{PEER}") == [f"/ip4/127.0.0.1/tcp/4001/p2p/{PEER}"]
    assert f"/ip4/127.0.0.1/tcp/4001/p2p/{PEER}" in look_up(f"/dns/localhost/tcp/4001/p2p/{PEER}")


@pytest.mark.parametrize(
    "addr", [f"/ip4/10.0.0.1/tcp/4001/p2p/{PEER}", f"/ip6/::1/tcp/4001/p2p/{PEER}", f"/dnsaddr/example.org/p2p/{PEER}"]
)
def test_other_addresses_are_left_as_they_are(addr: str) -> None:
    assert look_up(addr) == [addr]


def test_a_name_nobody_knows_is_an_error_naming_it() -> None:
    with pytest.raises(NameLookupError, match="cannot look up 'no-such-peer.invalid'"):
        look_up(f"/dns4/no-such-peer.invalid/tcp/4001/p2p/{PEER}")


async def test_a_peer_given_as_localhost_is_dialled(make_host: HostFactory) -> None:
    """py-libp2p asks DNS servers only, where `localhost` (an /etc/hosts name) is not found."""
    a, b = await make_host(), await make_host()
    named = a.listen_addrs[0].replace("/ip4/127.0.0.1/", "/dns4/localhost/")
    assert await b.connect(named, timeout=10) == a.peer_id


@pytest.mark.parametrize(
    "answers",
    [
        [(socket.AF_INET6, "::1"), (socket.AF_INET, "127.0.0.1")],  # a dual-stack host's localhost, IPv6 first
        [(socket.AF_INET, "127.0.0.2"), (socket.AF_INET, "127.0.0.1")],  # two A records, the first one down
    ],
    ids=["localhost-ipv6-first", "first-a-record-down"],
)
async def test_each_address_of_a_name_is_tried_in_turn(
    make_host: HostFactory, monkeypatch: pytest.MonkeyPatch, answers: list[tuple[int, str]]
) -> None:
    """py-libp2p dials one address per transport, the first: a node listening on 127.0.0.1 only was not reached."""

    async def resolver(*_: object, **__: object) -> list[tuple[int, int, int, str, tuple[str, int]]]:
        return [(family, socket.SOCK_STREAM, 6, "", (ip, 0)) for family, ip in answers]

    monkeypatch.setattr(trio.socket, "getaddrinfo", resolver)
    a, b = await make_host(), await make_host()
    named = a.listen_addrs[0].replace("/ip4/127.0.0.1/", "/dns/node.example/")
    assert await b.connect(named, timeout=10) == a.peer_id


async def test_an_address_that_takes_the_connection_and_says_nothing_leaves_time_for_the_next(
    make_host: HostFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    b = await make_host()
    with socket.socket() as silent:  # a wedged host: the TCP connection is taken, no byte ever comes
        silent.bind(("127.0.0.2", 0))  # its port first, free on 127.0.0.2; the node then listens on 127.0.0.1 at it
        silent.listen(16)
        port = silent.getsockname()[1]
        a = P2PHost(secrets.token_bytes(32), [f"/ip4/127.0.0.1/tcp/{port}"])
        try:
            await a.start()
        except P2PError:
            pytest.skip(f"127.0.0.1:{port} is taken by another process")

        async def resolver(*_: object, **__: object) -> list[tuple[int, int, int, str, tuple[str, int]]]:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, 0)) for ip in ("127.0.0.2", "127.0.0.1")]

        monkeypatch.setattr(trio.socket, "getaddrinfo", resolver)
        try:
            named = a.listen_addrs[0].replace("/ip4/127.0.0.1/", "/dns4/node.example/")
            assert await b.connect(named, timeout=6) == a.peer_id  # was: timed out after 6 s, the second never dialled
        finally:
            await a.stop()


async def test_a_failed_dial_says_why(make_host: HostFactory) -> None:
    a, b, c = await make_host(), await make_host(), await make_host()
    with pytest.raises(P2PError, match="cannot look up 'no-such-peer.invalid'"):
        await b.connect(f"/dns4/no-such-peer.invalid/tcp/4001/p2p/{a.peer_id}", timeout=10)
    wrong_peer = a.listen_addrs[0].split("/p2p/")[0] + f"/p2p/{c.peer_id}"
    with pytest.raises(P2PError, match="peer id does not correspond"):
        await b.connect(wrong_peer, timeout=10)
    closed = await make_host(secrets.token_bytes(32))
    gone = closed.listen_addrs[0]
    await closed.stop()
    with pytest.raises(P2PError, match="Connection refused"):
        await b.connect(gone, timeout=10)


def test_the_root_cause_of_a_cycle_is_found_without_hanging() -> None:
    first, second = ValueError("first"), OSError(111, "Connection refused")
    first.__context__, second.__context__ = second, first
    assert root_cause(first) in ("first", "Connection refused")
    grouped = ExceptionGroup("all attempts failed", [ConnectionRefusedError(111, "Connection refused")])
    assert root_cause(RuntimeError("top")) == "top"
    wrapper = RuntimeError("no addresses established a successful connection (with exceptions)")
    wrapper.__cause__ = grouped
    assert root_cause(wrapper) == "Connection refused"
