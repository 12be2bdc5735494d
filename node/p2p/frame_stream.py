"""The asyncio face of one direct-delivery stream (its Trio side is node/p2p/streams.py).

A `FrameStream` is handed out by `P2PHost.open_stream` (we dialled) or to the host's
inbound-stream callback (a peer dialled us, with its first frame). Frames the peer
writes arrive on a bounded queue; `receive` returns None once the stream will
deliver no more (closed, reset, broken, or over its queue bound).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

MAX_QUEUED_FRAMES = 4096

SendFrame = Callable[[int, bytes, bool], Awaitable[None]]
CloseStream = Callable[[int, bool], Awaitable[None]]


class FrameStream:
    """One stream: `receive` frames, `send` frames, `close` (never raises)."""

    def __init__(self, stream_id: int, peer_id: str, send: SendFrame, close: CloseStream) -> None:
        self.id = stream_id
        self.peer_id = peer_id
        self._send = send
        self._close = close
        self._frames: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._ended = False
        self.closed = False

    @property
    def ended(self) -> bool:
        """Whether the peer's side has ended (frames may still wait on the queue)."""
        return self._ended

    def deliver(self, frame: bytes | None) -> None:
        """A frame from the peer, or None at the end (on the event loop; called by the host)."""
        if self._ended:
            return
        if frame is None or self._frames.qsize() >= MAX_QUEUED_FRAMES:
            self._ended = True
            self._frames.put_nowait(None)
            if frame is not None:  # a peer flooding frames nobody reads: cut it off
                asyncio.ensure_future(self.close(graceful=False))
            return
        self._frames.put_nowait(frame)

    async def receive(self, timeout: float | None = None) -> bytes | None:
        """The next frame; None when the stream ended. TimeoutError after `timeout` s."""
        if self._ended and self._frames.empty():
            return None
        async with asyncio.timeout(timeout):
            return await self._frames.get()

    async def send(self, data: bytes, last: bool = False) -> None:
        """Write one frame (P2PError when the stream is gone or the write timed out); `last`: and close the stream
        after it (FIN), in the same call."""
        await self._send(self.id, data, last)
        if last:
            self.closed = True  # the host closed it after the frame: a close now has nothing to do

    async def close(self, graceful: bool = True) -> None:
        """End the stream: FIN after what was written (graceful) or reset. Idempotent; never raises."""
        if self.closed:
            return
        self.closed = True
        try:
            await self._close(self.id, graceful)
        except Exception:  # noqa: BLE001 - the host may be stopping: the stream goes with it
            pass


class FrameStreams:
    """The streams handed to asyncio users, by id, until they end.

    A stream's frames, even its end, may arrive before `open_stream`'s caller resumes:
    a stream is made on its first frame and kept until claimed.
    """

    def __init__(self, send: SendFrame, close: CloseStream) -> None:
        self._send = send
        self._close = close
        self._streams: dict[int, FrameStream] = {}
        self._claimed: set[int] = set()

    def __len__(self) -> int:
        return len(self._streams)

    def claim(self, stream_id: int, peer_id: str) -> FrameStream:
        """The stream, now owned by its user; frames (and its end) may have arrived before this."""
        stream = self._stream(stream_id, peer_id)
        stream.peer_id = peer_id
        if stream.ended:
            self._streams.pop(stream_id, None)
        else:
            self._claimed.add(stream_id)
        return stream

    def deliver(self, stream_id: int, frame: bytes | None) -> None:
        """A frame from the peer (None: the stream ended)."""
        stream = self._stream(stream_id, "")
        stream.deliver(frame)
        if frame is None and stream_id in self._claimed:
            self._claimed.discard(stream_id)
            self._streams.pop(stream_id, None)

    def _stream(self, stream_id: int, peer_id: str) -> FrameStream:
        stream = self._streams.get(stream_id)
        if stream is None:
            stream = self._streams[stream_id] = FrameStream(stream_id, peer_id, self._send, self._close)
        return stream
