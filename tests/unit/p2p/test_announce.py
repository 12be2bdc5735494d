"""The addresses a node advertises for direct delivery."""

from node.p2p.announce import advertised_addrs, interface_ips
from node.wire.topics import MAX_HEARTBEAT_ADDRS

PEER = "16Uiu2HAmTest"


def test_a_loopback_listen_address_is_advertised_as_it_is_with_the_peer_id() -> None:
    assert advertised_addrs([f"/ip4/127.0.0.1/tcp/4001/p2p/{PEER}"], PEER) == [f"/ip4/127.0.0.1/tcp/4001/p2p/{PEER}"]


def test_an_unspecified_address_becomes_this_hosts_addresses_loopback_last() -> None:
    addrs = advertised_addrs(["/ip4/0.0.0.0/tcp/4001"], PEER)
    assert addrs and all(a.endswith(f"/tcp/4001/p2p/{PEER}") for a in addrs)
    assert not any("0.0.0.0" in a for a in addrs)
    assert "/ip4/127.0.0.1/tcp/4001/p2p/" + PEER in addrs
    assert interface_ips("ip4")[-1].startswith("127.") or len(interface_ips("ip4")) == 1


def test_announce_addresses_replace_the_listen_addresses() -> None:
    assert advertised_addrs(["/ip4/0.0.0.0/tcp/4001"], PEER, ["/dns4/node.example/tcp/4001"]) == [
        f"/dns4/node.example/tcp/4001/p2p/{PEER}"
    ]


def test_at_most_eight_deduplicated() -> None:
    listen = [f"/ip4/10.0.0.{i}/tcp/1" for i in range(20)] + ["/ip4/10.0.0.1/tcp/1"]
    addrs = advertised_addrs(listen, PEER)
    assert len(addrs) == MAX_HEARTBEAT_ADDRS == len(set(addrs))
