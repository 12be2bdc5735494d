"""Yamux window updates at half the window (node/p2p/yamux_windows.py), between real hosts on 127.0.0.1:
small messages make none (py-libp2p sent one after nearly every read), and messages of many windows
still flow, room being announced as it is read."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
from libp2p.stream_muxer.yamux.yamux import DEFAULT_WINDOW_SIZE, YamuxStream

from tests.support.p2p_hosts import TOPIC, HostFactory, pair, receive


@pytest.fixture
def updates(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The increments of the WINDOW_UPDATE frames sent by any host of this process, as they are sent."""
    sent: list[int] = []
    send = YamuxStream.send_window_update

    async def counted(self: YamuxStream, increment: int, skip_lock: bool = False) -> None:
        sent.append(increment)
        await send(self, increment, skip_lock)

    monkeypatch.setattr(YamuxStream, "send_window_update", counted)
    yield sent


async def test_small_messages_make_no_window_updates(make_host: HostFactory, updates: list[int]) -> None:
    a, b, _, qb = await pair(make_host)
    before = len(updates)
    for i in range(100):
        await a.publish(TOPIC, b"small %d" % i)
        assert (await receive(qb)).data == b"small %d" % i
    assert len(updates) - before <= 2  # py-libp2p's own rule sent 3 a message here


async def test_messages_of_many_windows_flow_and_room_is_announced_as_it_is_read(
    make_host: HostFactory, updates: list[int]
) -> None:
    a, b, _, qb = await pair(make_host)
    before = len(updates)
    payloads = [secrets.token_bytes(200_000) for _ in range(12)]  # ~2.3 MiB: nine windows of 256 KiB
    for payload in payloads:
        await a.publish(TOPIC, payload)
    assert [(await receive(qb, timeout=30)).data for _ in payloads] == payloads
    announced = updates[before:]
    assert announced, "the reader never announced room: the sender could not have passed one window"
    assert all(increment >= DEFAULT_WINDOW_SIZE // 2 for increment in announced)
