"""A direct task's route between real libp2p hosts on 127.0.0.1: progress frames in order before the
result, split under the frame limit, stopped (never buffered without bound) for a stream that falls
behind or is gone, and never holding the result back."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Callable

import pytest

from node.daemon.routes import FRAME_CHARS, MAX_QUEUED_CHARS, PROGRESS_FLUSH_S, DirectRoutes
from node.p2p.frame_stream import FrameStream
from node.p2p.host import P2PHost
from node.p2p.streams import StreamLimits
from node.wire.direct import decode_progress, frame_kind
from node.wire.topics import MAX_FRAME_BYTES

LOOPBACK = "/ip4/127.0.0.1/tcp/0"
TASK_ID = "task-1"
RESULT = b'{"payload":"the result envelope"}'


class Pair:
    """A node host and a publisher host; `stream()` opens one and returns (node side, publisher side)."""

    def __init__(self, node: P2PHost, publisher: P2PHost, inbound: asyncio.Queue[FrameStream]) -> None:
        self.node, self.publisher, self._inbound = node, publisher, inbound

    async def stream(self) -> tuple[FrameStream, FrameStream]:
        publisher_side = await self.publisher.open_stream(self.node.listen_addrs, b"task")
        return await self.next_inbound(), publisher_side

    async def next_inbound(self) -> FrameStream:
        """The node's side of the next stream it took."""
        return await asyncio.wait_for(self._inbound.get(), 5)


@contextlib.asynccontextmanager
async def started_pair(limits: StreamLimits) -> AsyncIterator[Pair]:
    """A node host taking streams within `limits`, and a publisher host."""
    inbound: asyncio.Queue[FrameStream] = asyncio.Queue()
    node = P2PHost(
        secrets.token_bytes(32),
        [LOOPBACK],
        on_inbound_stream=lambda stream, first: inbound.put_nowait(stream),
        stream_limits=limits,
    )
    publisher = P2PHost(secrets.token_bytes(32), [LOOPBACK])
    await node.start()
    await publisher.start()
    try:
        yield Pair(node, publisher, inbound)
    finally:
        await asyncio.gather(node.stop(), publisher.stop())


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    async with started_pair(StreamLimits(write_timeout_s=3)) as started:
        yield started


async def read_all(stream: FrameStream) -> tuple[list[str], list[bytes]]:
    """Deltas and other frames, until the stream ends."""
    deltas: list[str] = []
    others: list[bytes] = []
    while (frame := await stream.receive(20)) is not None:
        assert len(frame) <= MAX_FRAME_BYTES
        if frame_kind(frame) == "progress":
            progress = decode_progress(frame)
            assert progress.task_id == TASK_ID and not others, "progress after the result"
            deltas.append(progress.delta)
        else:
            others.append(frame)
    return deltas, others


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)


async def test_progress_goes_in_order_before_the_result_and_large_text_is_split(pair: Pair) -> None:
    routes = DirectRoutes()
    node_side, publisher_side = await pair.stream()
    reading = asyncio.ensure_future(read_all(publisher_side))
    route = routes.add(TASK_ID, node_side)
    routes.progress(TASK_ID, "held until answered ")  # the answer goes first
    route.answered.set()
    big = "\u0001" * (FRAME_CHARS + 10)  # escapes to 6 bytes a character in JSON
    sent = ["held until answered ", "Once ", "upon ", big, "a time."]
    for delta in sent[1:]:
        routes.progress(TASK_ID, delta)
        await asyncio.sleep(0)
    assert await routes.deliver(TASK_ID, RESULT)
    deltas, others = await reading
    assert "".join(deltas) == "".join(sent) and others == [RESULT]
    assert max(len(d) for d in deltas) <= FRAME_CHARS
    routes.progress(TASK_ID, "after the result")  # no route any more: nothing, no error


async def test_a_stream_that_falls_behind_gets_no_more_progress_and_still_its_result(pair: Pair) -> None:
    routes = DirectRoutes()
    node_side, publisher_side = await pair.stream()
    route = routes.add(TASK_ID, node_side)  # not answered yet: nothing can be written, deltas queue
    chunk = "x" * 1024
    for _ in range(MAX_QUEUED_CHARS // len(chunk)):
        routes.progress(TASK_ID, chunk)
    assert route.queued_chars == MAX_QUEUED_CHARS and not route.progress_stopped
    routes.progress(TASK_ID, "one more")
    assert route.progress_stopped and route.queued_chars == 0  # dropped, not buffered
    routes.progress(TASK_ID, "later")
    assert route.queued_chars == 0
    route.answered.set()
    reading = asyncio.ensure_future(read_all(publisher_side))
    assert await routes.deliver(TASK_ID, RESULT)
    deltas, others = await reading
    assert deltas == [] and others == [RESULT]


async def test_a_publisher_gone_mid_stream_costs_the_result_no_more_than_the_flush_bound(pair: Pair) -> None:
    routes = DirectRoutes()
    node_side, publisher_side = await pair.stream()
    route = routes.add(TASK_ID, node_side)
    route.answered.set()
    routes.progress(TASK_ID, "first words")
    first = await publisher_side.receive(10)
    assert first is not None and decode_progress(first).delta == "first words"
    await publisher_side.close(graceful=False)
    await asyncio.sleep(0.3)
    for _ in range(20):
        routes.progress(TASK_ID, "more words ")
        await asyncio.sleep(0.01)
    started = time.monotonic()
    assert not await routes.deliver(TASK_ID, RESULT)  # the caller publishes it on gossip
    assert time.monotonic() - started < PROGRESS_FLUSH_S + 3 + 1  # flush bound + one write timeout
    assert route.progress_stopped and route.pump is not None and route.pump.done()
    await until(lambda: pair.node.open_streams == 0)


async def test_a_result_written_frees_its_place_before_a_busy_event_loop_closes_the_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A publisher opens its next stream as soon as it reads a result; a node whose event loop came to the close
    later (busy: a gateway soak saw it) still counted the stream and refused the next `too_many_streams_from_peer`."""
    async with started_pair(StreamLimits(max_streams_per_peer=1)) as two:
        node_side, publisher_side = await two.stream()
        close = FrameStream.close

        async def busy_close(stream: FrameStream, graceful: bool = True) -> None:
            await asyncio.sleep(1.0)  # the node's loop comes to the close a second later
            await close(stream, graceful)

        monkeypatch.setattr(FrameStream, "close", busy_close)
        routes = DirectRoutes()
        routes.add(TASK_ID, node_side).answered.set()
        delivering = asyncio.ensure_future(routes.deliver(TASK_ID, RESULT))
        assert await publisher_side.receive(10) == RESULT
        following = await two.publisher.open_stream(two.node.listen_addrs, b"the next task")
        with contextlib.suppress(TimeoutError):
            refusal = await following.receive(0.5)
            raise AssertionError(f"the next stream was answered {refusal!r}")  # was: busy, too_many_streams_from_peer
        assert (await two.next_inbound()).peer_id == two.publisher.peer_id
        assert await delivering
