"""Yamux window updates at half the window (node/p2p/yamux_windows.py), between real hosts on 127.0.0.1:
small messages make none (py-libp2p sent one after nearly every read), messages of many windows still
flow, room being announced as it is read, and a reader that takes one small message from a full window
frees its writer at once (a slow reader is not left to py-libp2p's 5 s write timeout)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator

import multiaddr
import pytest
import trio
from libp2p.abc import INetStream
from libp2p.crypto.secp256k1 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.stream_muxer.yamux.yamux import DEFAULT_WINDOW_SIZE, YamuxStream

from node.p2p.bounded_yamux import MuxerLimits, MuxerRefusals, install_bounded_muxer
from tests.support.p2p_hosts import TOPIC, HostFactory, pair, receive
from tests.support.raw_pubsub import raw_host

PROTOCOL = TProtocol("/compute-node-test/window/1")
CHUNK = 1000


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


def test_a_reader_taking_one_message_from_a_full_window_frees_its_writer_at_once() -> None:
    # Half a window of reads (128 KiB) at a loaded peer's one small RPC each 50 ms is ~6.5 s: past py-libp2p's
    # 5 s write timeout, after which pubsub.py disconnected the peer as one that reads nothing.
    trio.run(_full_window_then_one_read)


async def _full_window_then_one_read() -> None:
    reader, reader_listen = raw_host(create_new_key_pair(secrets.token_bytes(32)))
    writer, writer_listen = raw_host(create_new_key_pair(secrets.token_bytes(32)))
    install_bounded_muxer(reader.get_network(), MuxerLimits(), MuxerRefusals())
    read_one, done = trio.Event(), trio.Event()
    written = 0

    async def handle(stream: INetStream) -> None:
        await read_one.wait()
        taken = b""
        while len(taken) < CHUNK:
            taken += await stream.read(CHUNK - len(taken))
        await done.wait()

    async def write(stream: INetStream) -> None:
        nonlocal written
        while True:
            await stream.write(b"x" * CHUNK)
            written += 1

    reader.set_stream_handler(PROTOCOL, handle)
    async with reader.run([reader_listen]), writer.run([writer_listen]), trio.open_nursery() as nursery:
        info = info_from_p2p_addr(multiaddr.Multiaddr(f"{reader.get_addrs()[0]}"))
        await writer.connect(info)
        stream = await writer.new_stream(info.peer_id, [PROTOCOL])
        nursery.start_soon(write, stream)
        deadline = time.monotonic() + 10
        while True:  # until the writer has spent the window and waits
            before = written
            await trio.sleep(0.3)
            if written == before and written >= DEFAULT_WINDOW_SIZE // CHUNK:
                break
            assert time.monotonic() < deadline, f"the writer never filled the window ({written} writes)"
        stalled = written
        read_one.set()
        await trio.sleep(1.0)
        assert written > stalled, "one message read from a full window freed no room for 1 s"
        done.set()
        nursery.cancel_scope.cancel()
