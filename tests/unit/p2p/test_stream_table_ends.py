"""How a direct-delivery stream ends in the StreamTable: its last frame takes it out of its peer's count at once, and
once, and a close that comes after that frame (a caller cancelled after its send reached the Trio side) keeps the
FIN the last frame asked for. Real Trio, a stand-in for libp2p's stream (what is written, closed or reset)."""

from __future__ import annotations

import trio
import trio.testing
from libp2p.network.stream.exceptions import StreamError

from node.p2p.frames import encode_frame
from node.p2p.streams import StreamLimits, StreamTable


class _Peer:
    def __init__(self, name: str) -> None:
        self._name = name

    def to_base58(self) -> str:
        return self._name


class _Connection:
    def __init__(self, peer: str) -> None:
        self.peer_id = _Peer(peer)


class FakeStream:
    """An inbound stream from `peer` that sends one task frame, then waits for EOF."""

    def __init__(self, peer: str, task: bytes) -> None:
        self.muxed_conn = _Connection(peer)
        self._unread = [encode_frame(task)]
        self.eof = trio.Event()
        self.written: list[bytes] = []
        self.closed = self.was_reset = False

    async def read(self, n: int) -> bytes:
        if self._unread:
            return self._unread.pop(0)
        await self.eof.wait()
        return b""

    async def write(self, data: bytes) -> None:
        if self.closed or self.was_reset:
            raise StreamError("closed")
        self.written.append(data)

    async def close(self) -> None:
        self.closed = True

    async def reset(self) -> None:
        self.was_reset = True


def test_a_last_frame_leaves_the_count_once_and_a_close_after_it_keeps_its_fin() -> None:
    trio.run(_last_frame_then_late_closes)


async def _last_frame_then_late_closes() -> None:
    handed: dict[bytes, int] = {}  # task frame -> its stream's id
    table = StreamTable(StreamLimits(max_streams_per_peer=2), lambda i, p, f: handed.update({f: i}), lambda i, f: None)
    streams = [FakeStream("publisher", b"first"), FakeStream("publisher", b"second")]
    async with trio.open_nursery() as nursery:
        for stream in streams:
            nursery.start_soon(table.handle_inbound, stream)
        await trio.testing.wait_all_tasks_blocked()
        assert table.streams_of("publisher") == 2
        await table.send(handed[b"first"], b"result", last=True)
        assert table.streams_of("publisher") == 1  # at once: the publisher may open its next stream now
        table.close(handed[b"first"], graceful=True)  # late (before the release ran): was a reset, the result lost
        table.close(handed[b"first"], graceful=False)
        await trio.testing.wait_all_tasks_blocked()
        assert streams[0].written == [encode_frame(b"result")]
        assert streams[0].closed and not streams[0].was_reset
        assert table.streams_of("publisher") == 1 and table.open_count == 1  # counted off once, not twice
        table.close(handed[b"second"], graceful=False)
        await trio.testing.wait_all_tasks_blocked()
        assert streams[1].was_reset and table.streams_of("publisher") == 0 and table.open_count == 0


class SilentStream(FakeStream):
    """An inbound stream that sends nothing (a peer holding it open for its connection's sake)."""

    def __init__(self, peer: str) -> None:
        super().__init__(peer, b"")
        self._unread = []


def test_only_a_stream_whose_task_was_accepted_keeps_its_connection() -> None:
    """A red team kept 256 connections from being trimmed with one silent stream each (a new one before each
    first-frame timeout), and no honest publisher could connect: a stream that sent nothing keeps nothing."""
    trio.run(_silent_and_handed_over)


async def _silent_and_handed_over() -> None:
    handed: dict[bytes, int] = {}
    table = StreamTable(StreamLimits(), lambda i, p, f: handed.update({f: i}), lambda i, f: None)
    silent, publisher = SilentStream("holder"), FakeStream("publisher", b"task")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(table.handle_inbound, silent)
        nursery.start_soon(table.handle_inbound, publisher)
        await trio.testing.wait_all_tasks_blocked()
        assert table.streams_of("holder") == 1 and not table.keeps_connection("holder")
        assert not table.keeps_connection("publisher")  # handed over, not yet accepted: junk frames would be too
        await table.send(handed[b"task"], b"accepted")
        assert table.keeps_connection("publisher")  # its task is the node's
        await table.send(handed[b"task"], b"result", last=True)
        assert not table.keeps_connection("publisher")  # answered: nothing left to keep it for
        nursery.cancel_scope.cancel()
    assert not table.keeps_connection("holder") and table.open_count == 0
