"""SenderRecords: a pubsub RPC's signed peer record is checked once per peer and bytes, never trusted otherwise."""

from __future__ import annotations

from libp2p.crypto.secp256k1 import create_new_key_pair
from libp2p.peer.envelope import Envelope
from libp2p.peer.id import ID
from libp2p.peer.peerstore import create_signed_peer_record
from libp2p.pubsub.pb import rpc_pb2
from multiaddr import Multiaddr

from node.p2p.bounded_peerstore import MAX_RECORD_BYTES, BoundedPeerStore
from node.p2p.sender_records import MAX_PEERS, RECHECK_S, SenderRecords


class CountingPeerStore(BoundedPeerStore):
    def __init__(self) -> None:
        super().__init__()
        self.consumed = 0

    def consume_peer_record(self, envelope: Envelope, ttl: int) -> bool:
        self.consumed += 1
        return super().consume_peer_record(envelope, ttl)


class Host:
    """What py-libp2p's record check asks of a host: its peerstore."""

    def __init__(self) -> None:
        self.store = CountingPeerStore()

    def get_peerstore(self) -> CountingPeerStore:
        return self.store


def signed_rpc(port: int = 4001) -> tuple[ID, rpc_pb2.RPC]:
    key_pair = create_new_key_pair()
    peer = ID.from_pubkey(key_pair.public_key)
    record = create_signed_peer_record(peer, [Multiaddr(f"/ip4/127.0.0.1/tcp/{port}")], key_pair.private_key)
    return peer, rpc_pb2.RPC(senderRecord=record.marshal_envelope())


def test_the_same_bytes_from_the_same_peer_are_checked_once_within_recheck_s() -> None:
    host = Host()
    records = SenderRecords(host)  # type: ignore[arg-type]  # a host as far as the check reads one
    peer, rpc = signed_rpc()
    assert records.take(rpc, peer, now=10.0)
    assert records.take(rpc, peer, now=10.0 + RECHECK_S - 0.1)
    assert host.store.consumed == 1
    assert host.store.get_peer_record(peer) is not None
    assert records.take(rpc, peer, now=10.0 + RECHECK_S + 1)  # checked again: the addresses' TTL renewed
    assert host.store.consumed == 2


def test_other_bytes_are_always_checked_and_a_forged_record_is_refused() -> None:
    host = Host()
    records = SenderRecords(host)  # type: ignore[arg-type]
    peer, rpc = signed_rpc()
    assert records.take(rpc, peer, now=0.0)
    forged = bytearray(rpc.senderRecord)
    forged[-1] ^= 0x01  # the signature's last byte
    assert not records.take(rpc_pb2.RPC(senderRecord=bytes(forged)), peer, now=1.0)
    other_peer, other_rpc = signed_rpc(4002)
    assert not records.take(other_rpc, peer, now=2.0)  # another peer's valid record, sent by `peer`
    assert records.take(other_rpc, other_peer, now=3.0)
    assert host.store.consumed == 2  # the forged one failed before the peerstore; the misattributed one too


def test_a_record_too_large_to_keep_is_refused_unread() -> None:
    host = Host()
    records = SenderRecords(host)  # type: ignore[arg-type]
    peer, _ = signed_rpc()
    assert not records.take(rpc_pb2.RPC(senderRecord=b"\x00" * (MAX_RECORD_BYTES + 1)), peer, now=0.0)
    assert host.store.consumed == 0 and len(records) == 0


def test_an_rpc_without_a_record_passes_and_a_forgotten_peer_is_checked_again() -> None:
    host = Host()
    records = SenderRecords(host)  # type: ignore[arg-type]
    peer, rpc = signed_rpc()
    assert records.take(rpc_pb2.RPC(), peer, now=0.0)
    assert records.take(rpc, peer, now=0.0)
    records.forget(peer)
    assert len(records) == 0
    assert records.take(rpc, peer, now=1.0)
    assert host.store.consumed == 2


def test_peers_remembered_are_bounded() -> None:
    host = Host()
    records = SenderRecords(host)  # type: ignore[arg-type]
    first, first_rpc = signed_rpc()
    assert records.take(first_rpc, first, now=0.0)
    for _ in range(MAX_PEERS):
        peer, rpc = signed_rpc()
        assert records.take(rpc, peer, now=0.0)
    assert len(records) == MAX_PEERS
    consumed = host.store.consumed
    assert records.take(first_rpc, first, now=1.0)  # forgotten first: checked again
    assert host.store.consumed == consumed + 1
