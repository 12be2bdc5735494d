"""DecodedMessages: the gossip validator's decodes handed to `consume`, once, by exact bytes, within bounds."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass

from node.wire.decoded import DecodedMessages
from node.wire.envelope import seal
from node.wire.identity import Identity
from node.wire.inbound import GossipGate, Inbound, consume


def heartbeat_body(address: str, peer_id: str) -> bytes:
    return (
        b'{"address":"' + address.encode() + b'","peerId":"' + peer_id.encode() + b'","models":["m"],'
        b'"capacity":{"free":1,"max":1},"pendingTasks":0,"tps":{},"version":"0.3.0","timestamp":1}'
    )


def test_a_decode_is_taken_once_by_equal_bytes() -> None:
    kept: DecodedMessages[str] = DecodedMessages()
    kept.put(b"message one", "decoded one")
    assert kept.take(bytes(bytearray(b"message one"))) == "decoded one"  # an equal copy, not the same object
    assert kept.take(b"message one") is None  # handed over once
    assert kept.take(b"message one!") is None  # never for other bytes


def test_the_oldest_are_forgotten_past_the_entry_and_byte_bounds() -> None:
    kept: DecodedMessages[int] = DecodedMessages(max_entries=3, max_bytes=100)
    for i in range(5):
        kept.put(bytes([i]) * 10, i)
    assert len(kept) == 3
    assert [kept.take(bytes([i]) * 10) for i in range(5)] == [None, None, 2, 3, 4]
    kept.put(b"a" * 60, 1)
    kept.put(b"b" * 60, 2)  # 120 bytes would pass 100: the first goes
    assert kept.take(b"a" * 60) is None and kept.take(b"b" * 60) == 2
    kept.put(b"c" * 101, 3)  # larger than the whole bound: never kept
    assert len(kept) == 0


def test_puts_and_takes_from_two_threads_keep_the_count_true() -> None:
    kept: DecodedMessages[int] = DecodedMessages(max_entries=10_000, max_bytes=10_000_000)

    def put_all() -> None:
        for i in range(2000):
            kept.put(i.to_bytes(4, "big"), i)

    writer = threading.Thread(target=put_all)
    writer.start()
    taken = 0
    while writer.is_alive() or len(kept):
        for i in range(2000):
            taken += kept.take(i.to_bytes(4, "big")) is not None
    writer.join()
    assert taken == 2000 and len(kept) == 0


@dataclass
class Queued:
    data: bytes


async def test_consume_gets_the_gates_decode_and_still_checks_what_the_gate_never_saw() -> None:
    identity, stranger = Identity.generate(), Identity.generate()
    kept: DecodedMessages[Inbound] = DecodedMessages()
    gate = GossipGate(keep={"heartbeat": kept})
    validated = seal(identity, "heartbeat", heartbeat_body(identity.address, identity.peer_id))
    assert gate.validate("heartbeat", validated)
    assert not gate.validate("heartbeat", b"not json")  # a rejected message leaves nothing behind
    assert len(kept) == 1
    gate_decode = kept.take(validated)
    assert gate_decode is not None
    kept.put(validated, gate_decode)
    unseen = seal(stranger, "heartbeat", heartbeat_body(stranger.address, stranger.peer_id))
    queue: asyncio.Queue[Queued] = asyncio.Queue()
    for data in (validated, unseen, b"not json either"):
        queue.put_nowait(Queued(bytes(bytearray(data))))
    handled: list[Inbound] = []
    loop = asyncio.create_task(consume(queue, "heartbeat", handled.append, None, kept))
    try:
        async with asyncio.timeout(5):
            while len(handled) < 2 or not queue.empty():
                await asyncio.sleep(0.01)
    finally:
        loop.cancel()
    assert handled[0] is gate_decode  # taken, not decoded again
    assert handled[1].sender == stranger.address  # decoded (and checked) by consume itself
    assert len(handled) == 2 and len(kept) == 0
