"""Gossip validators and size limits on real libp2p hosts: what is rejected is neither delivered nor relayed."""

from __future__ import annotations

import pytest

from node.p2p.gossip import HeldVerdicts
from node.p2p.host import MessageTooLargeError, P2PError
from tests.support.p2p_hosts import (
    TOPIC,
    HostFactory,
    line,
    link,
    pair,
    receive,
    wait_for_mesh,
)


async def test_a_relayed_topic_is_validated_and_relayed_but_never_handed_to_the_event_loop(
    make_host: HostFactory,
) -> None:
    """A node relays results and heartbeats it does not read: its validator still judges each
    message (a rejected one goes no further), and nothing crosses to its event loop."""
    judged: list[bytes] = []

    def no_bad(topic: str, data: bytes) -> bool:
        judged.append(data)
        return not data.startswith(b"bad")

    a, b, c = await make_host(), await make_host(), await make_host()
    await a.subscribe(TOPIC)
    await b.relay(TOPIC, no_bad)
    qc = await c.subscribe(TOPIC)
    await line(a, b, c)
    await a.publish(TOPIC, b"bad message")
    await a.publish(TOPIC, b"good message")
    assert (await receive(qc)).data == b"good message"
    assert judged == [b"bad message", b"good message"]
    assert qc.empty()
    crossings: list[tuple[object, ...]] = []
    real_call_soon = b._call_soon
    b._call_soon = lambda callback, *args: (crossings.append(args), real_call_soon(callback, *args))[1]  # type: ignore[method-assign]
    for i in range(20):
        await a.publish(TOPIC, b"more %d" % i)
    for _ in range(20):
        await receive(qc)
    assert crossings == [], "a relayed topic's messages crossed to the event loop"
    with pytest.raises(P2PError, match="already subscribed"):
        await b.subscribe(TOPIC)


async def test_rejecting_validator_stops_delivery_and_relay(make_host: HostFactory) -> None:
    def no_bad(topic: str, data: bytes) -> bool:
        return topic == TOPIC and not data.startswith(b"bad")

    a, b, c = await make_host(), await make_host(), await make_host()
    await a.subscribe(TOPIC)
    qb = await b.subscribe(TOPIC, validator=no_bad)
    qc = await c.subscribe(TOPIC)
    await line(a, b, c)
    await a.publish(TOPIC, b"bad message")
    await a.publish(TOPIC, b"good message")
    assert (await receive(qb)).data == b"good message"
    assert (await receive(qc)).data == b"good message"
    assert qb.empty() and qc.empty()


async def test_a_validators_verdict_travels_with_its_message_and_a_falsy_one_rejects(make_host: HostFactory) -> None:
    """What the validator returns beyond True reaches the consumer with those bytes (no second check)."""

    def verdict(topic: str, data: bytes) -> object:
        if data.startswith(b"plain"):
            return True
        if data.startswith(b"empty"):
            return ""  # falsy: a reject, as False is
        return {"checked": data.decode()}

    a, b = await make_host(), await make_host()
    await a.subscribe(TOPIC)
    qb = await b.subscribe(TOPIC, validator=verdict)
    await link(a, b)
    await wait_for_mesh(b, TOPIC, 1)
    for data in (b"decoded 1", b"empty one", b"plain one", b"decoded 2"):
        await a.publish(TOPIC, data)
    got = [await receive(qb) for _ in range(3)]
    assert [(m.data, m.validated) for m in got] == [
        (b"decoded 1", {"checked": "decoded 1"}),
        (b"plain one", None),
        (b"decoded 2", {"checked": "decoded 2"}),
    ]
    assert qb.empty()
    assert len(b._service.gossip._verdicts) == 0  # type: ignore[union-attr]  # each one went with its message


def test_held_verdicts_are_keyed_by_content_and_bounded() -> None:
    held = HeldVerdicts(max_count=3, max_bytes=10)
    held.hold("t", b"aa", "A")
    assert held.take("u", b"aa") is None  # another topic: not its verdict
    assert held.take("t", bytes(bytearray(b"aa"))) == "A"  # equal bytes, not the same object: found
    assert held.take("t", b"aa") is None  # taken once
    for i in range(5):
        held.hold("t", bytes([i]), i)
    assert len(held) == 3 and held.take("t", b"\x00") is None and held.take("t", b"\x04") == 4
    held.hold("t", b"x" * 8, "big")
    held.hold("t", b"y" * 8, "bigger")  # 16 bytes over the 10-byte bound: the oldest go
    assert held.take("t", b"x" * 8) is None and held.take("t", b"y" * 8) == "bigger"
    assert len(held) == 0


async def test_raising_validator_rejects_and_host_keeps_working(make_host: HostFactory) -> None:
    def explode_on_boom(topic: str, data: bytes) -> bool:
        if data == b"boom":
            raise ValueError("validator bug")
        return True

    a, b = await make_host(), await make_host()
    qa = await a.subscribe(TOPIC)
    qb = await b.subscribe(TOPIC, validator=explode_on_boom)
    await link(a, b)
    await wait_for_mesh(a, TOPIC, 1)
    await a.publish(TOPIC, b"boom")
    await a.publish(TOPIC, b"fine")
    assert (await receive(qb)).data == b"fine"
    await b.publish(TOPIC, b"b still publishes")
    assert (await receive(qa)).data == b"b still publishes"
    assert qb.empty()


async def test_oversize_publish_raises_and_sends_nothing(make_host: HostFactory) -> None:
    a, _, _, qb = await pair(make_host)
    limit = a.max_message_bytes
    assert limit == 256 * 1024
    with pytest.raises(MessageTooLargeError, match=str(limit)):
        await a.publish(TOPIC, b"x" * (limit + 1))
    await a.publish(TOPIC, b"y" * limit)  # exactly at the limit is fine
    assert (await receive(qb)).data == b"y" * limit
    assert qb.empty()


async def test_receiver_rejects_messages_over_its_limit(make_host: HostFactory) -> None:
    big_sender = await make_host(max_message_bytes=4096)
    small_receiver = await make_host(max_message_bytes=1024)
    await big_sender.subscribe(TOPIC)
    queue = await small_receiver.subscribe(TOPIC)
    await link(big_sender, small_receiver)
    await wait_for_mesh(big_sender, TOPIC, 1)
    await big_sender.publish(TOPIC, b"z" * 2000)
    await big_sender.publish(TOPIC, b"small")
    assert (await receive(queue)).data == b"small"
    assert queue.empty()


class Decoded:
    def __init__(self, held_bytes: int) -> None:
        self.held_bytes = held_bytes


def test_held_verdicts_count_what_the_verdicts_hold() -> None:
    held = HeldVerdicts(max_count=100, max_bytes=10_000)
    for i in range(5):
        held.hold("t", bytes([i]), Decoded(4_000))  # 1 byte of key, 4,000 of decoded message: two fit
    assert len(held) == 2 and held.held == 2 * 4_001
    assert held.take("t", b"\x04") is not None and held.take("t", b"\x02") is None
    held.hold("t", b"huge", Decoded(1_000_000))  # alone over the bound: not kept (its consumer decodes again)
    assert held.take("t", b"huge") is None and held.held == 4_001
