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
