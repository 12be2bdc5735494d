"""Which idle inbound connections the node trims past its budget (the pure choice of node/p2p/connection_trim.py)."""

from types import SimpleNamespace

import pytest
import trio
from libp2p.peer.id import ID
from libp2p.rcmgr import Direction
from pydantic import ValidationError

from node.p2p.connection_trim import ConnectionBudget, ConnectionTrimmer, PeerConnection, choose_trimmed
from node.p2p.kept_peers import KeptPeers
from node.p2p.service import P2PService, ServiceOptions
from node.wire.identity import Identity
from tests.support.p2p_hosts import LOOPBACK

BUDGET = ConnectionBudget(high_water=4, low_water=2, grace_s=10.0)


def peer(
    name: str, first_seen: float = 0.0, inbound: bool = True, protected: bool = False, connections: int = 1
) -> PeerConnection:
    return PeerConnection(name, inbound=inbound, first_seen=first_seen, protected=protected, connections=connections)


def test_nothing_is_trimmed_at_or_under_the_high_water_mark() -> None:
    assert choose_trimmed([peer(str(i)) for i in range(4)], now=100.0, budget=BUDGET) == []


def test_past_it_the_oldest_idle_inbound_peers_go_down_to_the_low_water_mark() -> None:
    peers = [peer(f"p{i}", first_seen=float(10 - i)) for i in range(6)]  # p5 is the oldest
    assert choose_trimmed(peers, now=100.0, budget=BUDGET) == ["p5", "p4", "p3", "p2"]


def test_mesh_and_stream_peers_ours_and_new_ones_are_kept_even_if_fewer_are_trimmed() -> None:
    peers = [
        peer("mesh", protected=True),
        peer("dialled-by-us", inbound=False),
        peer("new", first_seen=95.0),  # within the grace period
        peer("idle-a", first_seen=1.0),
        peer("idle-b", first_seen=2.0),
        peer("idle-c", first_seen=3.0),
    ]
    assert choose_trimmed(peers, now=100.0, budget=BUDGET) == ["idle-a", "idle-b", "idle-c"]


def test_the_budget_counts_connections_not_peers() -> None:
    """py-libp2p lets a peer id hold three connections: ~100 ids holding three each filled its inbound cap while
    the peers stayed under the high water mark, and nothing was trimmed (a reviewer's lockout, 0 of 23 honest
    tasks through). Each peer trimmed takes all its connections off the count."""
    peers = [peer(f"p{i}", first_seen=float(i), connections=3) for i in range(2)]  # 6 connections, 2 peers
    assert choose_trimmed(peers, now=100.0, budget=BUDGET) == ["p0", "p1"]  # 6 > 4: down to at most 2
    assert choose_trimmed([peer("a", connections=3), peer("b", first_seen=1.0)], now=100.0, budget=BUDGET) == []


def test_a_budget_whose_low_water_is_above_its_high_water_is_refused() -> None:
    with pytest.raises(ValidationError, match="low_water"):
        ConnectionBudget(high_water=2, low_water=3)


class FakeSwarm:
    """Connections of `inbound` peers and of one we dialled (never trimmed); records the peers closed."""

    def __init__(self, inbound: list[ID]) -> None:
        self.connections = {peer: [SimpleNamespace(direction=Direction.INBOUND)] for peer in inbound}
        dialled = ID.from_base58(Identity.generate().peer_id)
        self.connections[dialled] = [SimpleNamespace(direction=Direction.OUTBOUND)]
        self.closed: list[ID] = []

    def get_connections_map(self) -> dict[ID, list[SimpleNamespace]]:
        return dict(self.connections)

    async def close_peer(self, peer: ID) -> None:
        self.closed.append(peer)
        del self.connections[peer]


def test_a_publisher_whose_task_is_here_is_not_trimmed_while_held_and_is_once_released() -> None:
    """A node holds the publisher of each task it runs (Admission, `kept_peers`): the trimmer leaves its idle
    inbound connection alone (it may be the publisher's only route into gossip) until its last task ends."""
    signer = Identity.generate()
    publisher, idle = ID.from_base58(signer.peer_id), ID.from_base58(Identity.generate().peer_id)
    service = P2PService(ServiceOptions(secret=b"\x01" * 32, listen_addrs=[LOOPBACK]), on_message=lambda *_: None)
    swarm = FakeSwarm([publisher, idle])
    budget = ConnectionBudget(high_water=1, low_water=0, grace_s=0.0)
    trimmer = ConnectionTrimmer(swarm, budget, service._keeps_connection)  # type: ignore[arg-type]
    service.kept_peers.hold(signer.public_key_compressed)
    service.kept_peers.hold(signer.public_key_compressed)  # two of its tasks

    async def rounds() -> list[int]:
        trimmed = [await trimmer.trim()]
        service.kept_peers.release(signer.public_key_compressed)
        trimmed.append(await trimmer.trim())  # one task still here
        service.kept_peers.release(signer.public_key_compressed)
        trimmed.append(await trimmer.trim())
        return trimmed

    assert trio.run(rounds) == [1, 0, 1]
    assert swarm.closed == [idle, publisher]
    assert len(service.kept_peers) == 0 and service.kept_peers.current == frozenset()


def test_kept_peers_count_holds_and_ignore_a_release_never_held() -> None:
    kept = KeptPeers()
    kept.release(b"a")  # never held: nothing
    kept.hold(b"a")
    kept.hold(b"b")
    kept.hold(b"a")
    before = kept.current
    kept.release(b"a")
    assert kept.current is before  # "a" is still held once: the set is not rebuilt
    assert before == frozenset({b"a", b"b"})
    kept.release(b"a")
    kept.release(b"a")
    assert kept.current == frozenset({b"b"}) and len(kept) == 1


def test_a_peer_is_known_as_a_publisher_by_the_key_its_id_holds() -> None:
    """The node holds publishers by their signing key (recovered at intake); the trimmer reads a peer's from its id."""
    from libp2p.crypto.ed25519 import create_new_key_pair

    from node.p2p.kept_peers import key_of_peer

    signer = Identity.generate()
    assert key_of_peer(ID.from_base58(signer.peer_id)) == signer.public_key_compressed
    other = ID.from_pubkey(create_new_key_pair().public_key)  # an ed25519 peer: never a publisher of ours
    kept = KeptPeers()
    kept.hold(signer.public_key_compressed)
    assert not kept.keeps(other)
    assert kept.keeps(ID.from_base58(signer.peer_id))
    assert not kept.keeps(ID.from_base58(Identity.generate().peer_id))
