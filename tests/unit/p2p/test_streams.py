"""Direct-delivery streams between real libp2p hosts on 127.0.0.1: frames both ways, ends, bounds, no leaks."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from node.p2p.errors import StreamRefusedError
from node.p2p.frame_stream import FrameStream
from node.p2p.frames import encode_varint
from node.p2p.host import P2PError, P2PHost
from node.p2p.streams import StreamLimits
from node.wire.topics import MAX_FRAME_BYTES

LOOPBACK = "/ip4/127.0.0.1/tcp/0"

Handler = Callable[[FrameStream, bytes], Awaitable[None]]


@pytest.fixture
async def hosts() -> AsyncIterator[Callable[..., Awaitable[P2PHost]]]:
    started: list[P2PHost] = []

    async def make(handler: Handler | None = None, **kwargs: object) -> P2PHost:
        serving: set[asyncio.Task[None]] = set()

        def on_stream(stream: FrameStream, first: bytes) -> None:
            assert handler is not None
            task = asyncio.create_task(handler(stream, first))
            serving.add(task)
            task.add_done_callback(serving.discard)

        host = P2PHost(secrets.token_bytes(32), [LOOPBACK], on_inbound_stream=on_stream if handler else None, **kwargs)  # type: ignore[arg-type]
        await host.start()
        started.append(host)
        return host

    yield make
    await asyncio.gather(*(host.stop() for host in started))


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)


async def test_frames_flow_both_ways_and_both_sides_forget_the_stream(hosts) -> None:
    async def echo(stream: FrameStream, first: bytes) -> None:
        await stream.send(b"got " + first)
        await stream.send(b"bye")
        await stream.close()

    node = await hosts(echo)
    publisher = await hosts()
    for i in range(3):
        stream = await publisher.open_stream(node.listen_addrs, b"task %d" % i)
        assert [await stream.receive(5), await stream.receive(5), await stream.receive(5)] == [
            b"got task %d" % i,
            b"bye",
            None,
        ]
    await until(lambda: publisher.open_streams == 0 and node.open_streams == 0)


async def test_a_host_that_takes_no_streams_refuses_them(hosts) -> None:
    plain = await hosts()
    publisher = await hosts()
    with pytest.raises(P2PError):
        await publisher.open_stream(plain.listen_addrs, b"task", timeout=5)


async def test_writing_to_a_closed_stream_fails_and_the_writer_learns_it(hosts) -> None:
    seen: asyncio.Queue[FrameStream] = asyncio.Queue()

    async def keep(stream: FrameStream, first: bytes) -> None:
        await seen.put(stream)

    node = await hosts(keep, stream_limits=StreamLimits(write_timeout_s=2))
    publisher = await hosts()
    stream = await publisher.open_stream(node.listen_addrs, b"task")
    inbound = await asyncio.wait_for(seen.get(), 5)
    await stream.close(graceful=False)  # the publisher goes away
    await asyncio.sleep(0.5)
    # py-libp2p's yamux reports a reset to a reader as an end of stream, which a publisher that only
    # half-closed also sends: the node learns the stream is gone when it writes (and then frees it).
    with pytest.raises(P2PError):
        await inbound.send(b"result")
    await until(lambda: node.open_streams == 0)


async def test_an_open_cancelled_midway_leaves_no_stream_behind(hosts) -> None:
    async def slow(stream: FrameStream, first: bytes) -> None:
        await asyncio.sleep(0.5)
        await stream.send(b"late")

    node = await hosts(slow)
    publisher = await hosts()
    for _ in range(3):
        opening = asyncio.ensure_future(publisher.open_stream(node.listen_addrs, b"task"))
        await asyncio.sleep(0)
        opening.cancel()
    await until(lambda: publisher.open_streams == 0 and node.open_streams == 0)


async def test_streams_refused_before_their_task_leave_nothing_on_the_event_loop(hosts) -> None:
    async def never(stream: FrameStream, first: bytes) -> None:
        raise AssertionError("no stream here sends a task")

    node = await hosts(never, stream_limits=StreamLimits(first_frame_timeout_s=0.5))
    publisher = await hosts()
    refused = [
        await publisher.open_stream(node.listen_addrs, data, raw=True)
        for data in (b"", b"\x05ab", b"\xff" * 11, encode_varint(MAX_FRAME_BYTES + 1))
    ]
    for stream in refused:
        assert await stream.receive(5) is not None  # the refusal frame
    await until(lambda: node.held_streams == 0)
    assert node.open_streams == 0  # the asyncio side never saw these: it keeps no record of them


async def test_a_full_table_cuts_off_its_oldest_silent_stream_for_a_new_one(hosts) -> None:
    got: asyncio.Queue[bytes] = asyncio.Queue()

    async def answer(stream: FrameStream, first: bytes) -> None:
        await got.put(first)
        await stream.send(b"ok")  # and held open, as for a running task

    node = await hosts(answer, stream_limits=StreamLimits(max_streams=4, max_streams_per_peer=2))
    attackers = [await hosts(), await hosts()]
    silent = [await a.open_stream(node.listen_addrs, b"", raw=True) for a in attackers for _ in range(2)]
    await until(lambda: node.held_streams == 4)
    honest = await hosts()
    tasks = []
    for i in range(2):  # each new task evicts the oldest silent stream, which is told why
        tasks.append(stream := await honest.open_stream(node.listen_addrs, b"task %d" % i))
        assert await stream.receive(5) == b"ok"
        assert await got.get() == b"task %d" % i
        assert json.loads(await silent[i].receive(5) or b"") == {
            "taskId": "",
            "status": "busy",
            "reason": "too_many_streams",
        }
    # A peer over its own limit is still refused, whatever the table holds.
    extra = await attackers[1].open_stream(node.listen_addrs, b"", raw=True)
    assert json.loads(await extra.receive(5) or b"")["reason"] == "too_many_streams_from_peer"
    # Full of streams that sent their tasks and two silent ones: the silent go first, then none is cut.
    for attacker in attackers:
        await attacker.stop()
    await until(lambda: node.held_streams == 2)
    other = await hosts()  # `honest` is at its own limit of 2
    tasks.append(await other.open_stream(node.listen_addrs, b"task 2"))
    tasks.append(await other.open_stream(node.listen_addrs, b"task 3"))
    assert [await task.receive(5) for task in tasks[2:]] == [b"ok", b"ok"]
    late = await (await hosts()).open_stream(node.listen_addrs, b"task 4")
    assert json.loads(await late.receive(5) or b"")["reason"] == "too_many_streams"
    assert [task.ended for task in tasks] == [False] * 4  # no running task's stream was cut


async def test_a_stream_past_our_own_limit_is_refused_before_the_peer_reads_a_byte_of_it(hosts) -> None:
    # Our own table counted a stream after its task was written, then reset it: the peer may have read the task
    # (and run it) while we took it for undialable (a plain P2PError: the publisher marks it so for 60 s).
    got: asyncio.Queue[bytes] = asyncio.Queue()

    async def hold(stream: FrameStream, first: bytes) -> None:
        await got.put(first)

    node = await hosts(hold)
    publisher = await hosts(stream_limits=StreamLimits(max_streams_per_peer=1))
    first = await publisher.open_stream(node.listen_addrs, b"task 1")
    assert await asyncio.wait_for(got.get(), 5) == b"task 1"
    with pytest.raises(StreamRefusedError, match="too_many_streams_from_peer"):
        await publisher.open_stream(node.listen_addrs, b"task 2")
    await asyncio.sleep(0.5)
    assert got.empty() and publisher.open_streams == 1  # the node read nothing of it; nothing of it is kept
    await first.close()
    await until(lambda: publisher.open_streams == 0)
    await publisher.open_stream(node.listen_addrs, b"task 3")  # its place is free again
    assert await asyncio.wait_for(got.get(), 5) == b"task 3"
