"""The hand-off from the libp2p (Trio) thread to the event loop: bounded in messages and bytes."""

from __future__ import annotations

import structlog

from tests.support.p2p_hosts import (
    TOPIC,
    HostFactory,
    link,
    receive,
    wait_for_mesh,
    wait_until,
)


async def test_full_queue_drops_and_counts(make_host: HostFactory) -> None:
    a = await make_host()
    b = await make_host(queue_size=5)
    await a.subscribe(TOPIC)
    qb = await b.subscribe(TOPIC)
    await link(a, b)
    await wait_for_mesh(a, TOPIC, 1)
    for i in range(20):
        await a.publish(TOPIC, f"m{i}".encode())

    async def all_accounted() -> bool:
        return qb.qsize() + b.dropped_messages == 20

    await wait_until(all_accounted, "20 messages delivered or dropped")
    assert qb.qsize() == 5 and b.dropped_messages == 15


async def test_hand_off_is_bounded_in_bytes_before_it_reaches_the_event_loop(make_host: HostFactory) -> None:
    a = await make_host()
    b = await make_host(queue_bytes=50_000)
    await a.subscribe(TOPIC)
    qb = await b.subscribe(TOPIC)
    await link(a, b)
    await wait_for_mesh(a, TOPIC, 1)
    with structlog.testing.capture_logs() as logs:
        for i in range(20):
            await a.publish(TOPIC, b"%02d" % i + b"x" * 9_998)  # 10 kB each: 5 fit

        async def all_accounted() -> bool:
            return qb.qsize() + b.dropped_messages == 20

        await wait_until(all_accounted, "20 messages delivered or dropped")
    assert qb.qsize() == 5 and b.dropped_messages == 15
    drops = [e for e in logs if e["event"] == "message dropped: queue full"]
    assert len(drops) == 1 and drops[0]["topic"] == TOPIC  # logged once per window, not per message
    # Taking messages off the queue gives their room back.
    assert [(await qb.get()).data[:2] for _ in range(5)] == [b"00", b"01", b"02", b"03", b"04"]
    await a.publish(TOPIC, b"after" + b"y" * 9_995)
    assert (await receive(qb)).data.startswith(b"after")
    assert b.dropped_messages == 15


class Decoded:
    """A verdict that holds more than its message's bytes, as a decoded message does (`held_bytes`)."""

    def __init__(self, held_bytes: int) -> None:
        self.held_bytes = held_bytes


async def test_the_budget_counts_what_a_verdict_holds_not_only_the_bytes(make_host: HostFactory) -> None:
    # 100-byte messages whose decoded form takes 20 kB: 50,000 bytes of budget hold two, not 500.
    a = await make_host()
    b = await make_host(queue_bytes=50_000)
    await a.subscribe(TOPIC)
    qb = await b.subscribe(TOPIC, validator=lambda _topic, _data: Decoded(20_000))
    await link(a, b)
    await wait_for_mesh(a, TOPIC, 1)
    for i in range(20):
        await a.publish(TOPIC, b"%02d" % i + b"x" * 98)

    async def all_accounted() -> bool:
        return qb.qsize() + b.dropped_messages == 20

    await wait_until(all_accounted, "20 messages delivered or dropped")
    assert qb.qsize() == 2 and b.dropped_messages == 18
    first = await qb.get()
    assert isinstance(first.validated, Decoded) and first.size == 20_100
    await qb.get()  # both taken: their room is back
    await a.publish(TOPIC, b"after" + b"y" * 95)
    assert (await receive(qb)).data.startswith(b"after")
