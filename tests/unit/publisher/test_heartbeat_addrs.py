"""Which heartbeat `addrs` a publisher keeps to dial: anyone can sign a heartbeat naming any host:port, so
the node table keeps IP addresses a node may really listen on (loopback and private ones too: tests, LANs)
and drops the rest: unspecified addresses (they reach the publisher's own host), link-local ones (cloud
metadata at 169.254.169.254), multicast, reserved, those forms written as IPv4-mapped IPv6, and names
(the publisher would resolve what anyone's heartbeat names, then dial whatever it resolves to)."""

from __future__ import annotations

import pytest

from node.publisher.heartbeat_claims import dialable_addr
from node.publisher.node_table import NodeTable
from node.wire.identity import Identity
from node.wire.messages import HeartbeatBody
from tests.support.heartbeats import signed_heartbeat

PEER = "/p2p/16Uiu2HAmQZTSRc4A8xAJ9AvS9maTF46d5mXURVSBdT2oxcod7Aki"


@pytest.mark.parametrize(
    "addr",
    [
        "/ip4/127.0.0.1/tcp/4001",
        "/ip4/10.1.2.3/tcp/4001",
        "/ip4/192.168.1.20/tcp/4001",
        "/ip4/203.0.113.7/tcp/4001",
        "/ip4/8.8.8.8/tcp/4001",
        "/ip6/::1/tcp/4001",
        "/ip6/2001:db8::1/tcp/4001",
        "/ip6/fd00::1/tcp/4001",
        "/ip6/::ffff:10.0.0.1/tcp/4001",
    ],
)
def test_addresses_a_node_may_listen_on_are_dialable(addr: str) -> None:
    assert dialable_addr(addr + PEER)


@pytest.mark.parametrize(
    "addr",
    [
        "/ip4/0.0.0.0/tcp/4001",  # the publisher's own host
        "/ip6/::/tcp/4001",
        "/ip4/169.254.169.254/tcp/80",  # cloud metadata
        "/ip6/fe80::1/tcp/4001",
        "/ip6/::ffff:169.254.169.254/tcp/80",  # the same, IPv4-mapped
        "/ip6/::ffff:0.0.0.0/tcp/4001",
        "/ip4/224.0.0.1/tcp/4001",  # multicast
        "/ip6/ff02::1/tcp/4001",
        "/ip4/240.0.0.1/tcp/4001",  # reserved
        "/ip4/255.255.255.255/tcp/4001",
        "/dns4/node.example/tcp/4001",  # names: resolved by the publisher to whatever their owner likes
        "/dns6/node.example/tcp/4001",
        "/dns/node.example/tcp/4001",
        "/dnsaddr/node.example",
        "/ip6zone/eth0/ip6/fe80::1/tcp/4001",
        "/ip4/not-an-ip/tcp/4001",
        "ip4/127.0.0.1/tcp/4001",
        "",
    ],
)
def test_addresses_no_node_listens_on_for_us_are_not(addr: str) -> None:
    assert not dialable_addr(addr + PEER)


def test_the_node_table_keeps_only_the_dialable_addrs_of_a_signed_heartbeat() -> None:
    identity = Identity.generate()
    inbound = signed_heartbeat(identity, ["m"])
    assert isinstance(inbound.body, HeartbeatBody)
    suffix = f"/p2p/{identity.peer_id}"
    named = [
        "/ip4/169.254.169.254/tcp/80",
        "/ip4/0.0.0.0/tcp/22",
        "/dns4/rebind.example/tcp/4001",
        "/ip4/10.0.0.5/tcp/4001",
    ]
    body = inbound.body.model_copy(update={"addrs": [a + suffix for a in named]})
    table = NodeTable()
    assert table.update(inbound.sender, body)
    node = table.get(inbound.sender)
    assert node is not None and node.addrs == (f"/ip4/10.0.0.5/tcp/4001{suffix}",)
