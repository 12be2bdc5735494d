"""The Trio side of direct-delivery streams (`/compute/task/0.4.0`): bounded, framed, never held forever.

Inbound (a publisher dialled us): `StreamTable.handle_inbound` is the libp2p stream
handler. It refuses a stream past the per-peer limit; past the total limit it makes room
by cutting off the oldest stream still silent (one that has not sent its task yet: many
peer ids opening streams that say nothing cost nothing and must not lock honest
publishers out), and refuses only when every stream has sent its task. It reads the first frame
within `first_frame_timeout_s` (a bad length, an oversize frame, or silence get a
refusal frame and the stream is closed), hands that frame to the asyncio side, and then
holds the stream for writes only: any further byte from the publisher resets it.
Outbound (we dialled a node): `register_outbound` + `serve` read every frame and hand
each over. Every stream lives at most `max_lifetime_s`; each write has `write_timeout_s`
(a peer that never reads cannot hold a writer). Nothing here parses JSON except the
refusal frames it writes itself (the shape of node/wire/direct.py's StreamAnswer).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog
import trio
from libp2p.abc import INetStream
from libp2p.network.stream.exceptions import StreamEOF, StreamError
from pydantic import BaseModel, ConfigDict, Field

from node.p2p.frames import FrameError, FrameReader, encode_frame
from node.wire.topics import MAX_FRAME_BYTES

log = structlog.get_logger(__name__)

READ_CHUNK_BYTES = 64 * 1024
CLOSE_TIMEOUT_S = 2.0

InboundSink = Callable[[int, str, bytes], None]
"""(stream id, remote peer id, first frame) -> None; on the Trio thread, must not block."""
FrameSink = Callable[[int, "bytes | None"], None]
"""(stream id, frame, or None once the stream will deliver no more) -> None; on the Trio thread."""


TOO_MANY_FROM_PEER = "too_many_streams_from_peer"  # the busy answer's reason past max_streams_per_peer


class StreamLimits(BaseModel):
    """Bounds of the direct-delivery streams of one host."""

    model_config = ConfigDict(frozen=True)

    max_frame_bytes: int = Field(default=MAX_FRAME_BYTES, gt=0, le=MAX_FRAME_BYTES)
    max_streams: int = Field(default=256, ge=1, description="open streams at once, inbound and outbound")
    max_streams_per_peer: int = Field(default=16, ge=1)
    first_frame_timeout_s: float = Field(default=10.0, gt=0)
    write_timeout_s: float = Field(default=10.0, gt=0)
    max_lifetime_s: float = Field(default=3900.0, gt=0, description="a stream is reset after this long")
    log_window_s: float = Field(default=10.0, ge=0, description="seconds between log lines for one refusal reason")


class StreamGoneError(Exception):
    """The stream is closed, reset or unknown; nothing was written."""


@dataclass
class _OpenStream:
    id: int
    stream: INetStream
    peer: str
    inbound: bool
    done: trio.Event = field(default_factory=trio.Event)
    graceful: bool = False  # closed by us after the last frame (FIN), not reset
    write_lock: trio.Lock = field(default_factory=trio.Lock)
    silent: trio.CancelScope | None = None  # while an inbound stream has not sent its task yet
    evicted: bool = False  # cut off while silent, to make room for a newer stream
    handed_over: bool = False  # inbound: its task frame went to the asyncio side
    counted: bool = True  # in its peer's count: until its last frame is written, or it is forgotten
    keeps: bool = False  # keeps its connection from being trimmed: outbound, or inbound and its task accepted


def refusal_frame(status: str, reason: str) -> bytes:
    """An answer frame for a stream refused before its task could be read."""
    return json.dumps({"taskId": "", "status": status, "reason": reason}).encode()


class StreamTable:
    """The open streams of one host, their limits and their Trio tasks."""

    def __init__(self, limits: StreamLimits, on_inbound: InboundSink, on_frame: FrameSink) -> None:
        self.limits = limits
        self._on_inbound = on_inbound
        self._on_frame = on_frame
        self._streams: dict[int, _OpenStream] = {}
        self._per_peer: dict[str, int] = {}
        self._keeping: dict[str, int] = {}  # per peer, its streams that keep its connection (`keeps_connection`)
        self._ids = itertools.count(1)
        self.refused = 0  # streams refused or closed for breaking a limit or the protocol
        self._logged_at: dict[tuple[str, str], float] = {}  # (event, reason): one line a window (a few keys)
        self._not_logged: dict[tuple[str, str], int] = {}

    @property
    def open_count(self) -> int:
        """How many streams are open."""
        return len(self._streams)

    def streams_of(self, peer: str) -> int:
        """Open streams of one peer (inbound and outbound)."""
        return self._per_peer.get(peer, 0)

    def keeps_connection(self, peer: str) -> bool:
        """Whether a stream of the peer's is of use: one we opened, or one whose task the node accepted (it was
        written a frame that is not its last: the answer `accepted`, progress). One that has sent nothing, or a
        task not yet answered, is not: a peer holding one open (a new one before each first-frame timeout, or
        junk frames while the checks queue) for free would keep its connection from being trimmed, and enough
        peers would take every inbound connection the host has (a red team's 256: no honest publisher could
        connect)."""
        return self._keeping.get(peer, 0) > 0

    # --- inbound -----------------------------------------------------------

    async def handle_inbound(self, stream: INetStream) -> None:
        """The libp2p handler of the protocol: one task frame in, then writes only."""
        peer = stream.muxed_conn.peer_id.to_base58()
        if (limit := self._over_limit(peer)) is not None and not (limit == "too_many_streams" and self._evict_silent()):
            await self._refuse(_OpenStream(0, stream, peer, inbound=True), "busy", limit)
            return
        entry = self._register(stream, peer, inbound=True)
        try:
            with trio.move_on_after(self.limits.max_lifetime_s):
                first = await self._first_frame(entry)
                if first is None:
                    return
                self._on_inbound(entry.id, peer, first)
                entry.handed_over = True
                await self._hold_for_writes(entry)
        finally:
            await self._release(entry)

    async def _first_frame(self, entry: _OpenStream) -> bytes | None:
        reader = FrameReader(self.limits.max_frame_bytes)
        with trio.move_on_after(self.limits.first_frame_timeout_s) as entry.silent:
            try:
                while True:
                    chunk = await entry.stream.read(READ_CHUNK_BYTES)
                    if not chunk:
                        return None
                    frames = reader.feed(chunk)
                    if len(frames) > 1 or (frames and reader.pending):
                        await self._refuse(entry, "rejected", "one_frame_only")
                        return None
                    if frames:
                        return frames[0]
            except FrameError as exc:
                await self._refuse(entry, "rejected", exc.reason)
                return None
            except StreamError:
                return None
            finally:
                entry.silent = None
        if entry.evicted:
            await self._refuse(entry, "busy", "too_many_streams")
        else:
            await self._refuse(entry, "rejected", "first_frame_timeout")
        return None

    def _evict_silent(self) -> bool:
        """Cut off the oldest inbound stream that has not sent its task yet; False if there is none.

        It is forgotten at once (its place is free for the stream that asked) and answered busy.
        """
        oldest = next((e for e in self._streams.values() if e.silent is not None and not e.evicted), None)
        if oldest is None or oldest.silent is None:
            return False
        oldest.evicted = True
        oldest.silent.cancel()
        self._forget(oldest)
        if (not_logged := self._may_log("evicted", "too_many_streams")) is not None:
            log.info(
                "silent stream cut off for a newer one",
                peer=oldest.peer,
                open_streams=len(self._streams),
                not_logged_since=not_logged,
            )
        return True

    async def _hold_for_writes(self, entry: _OpenStream) -> None:
        """Wait until we close the stream; a publisher that sends more is cut off."""
        async with trio.open_nursery() as nursery:

            async def watch_reads() -> None:
                try:
                    if not await entry.stream.read(READ_CHUNK_BYTES):
                        return  # EOF: the publisher half-closed; it may still read
                    self.refused += 1
                    if (not_logged := self._may_log("broke", "data_after_task")) is not None:
                        log.info(
                            "stream broke the protocol",
                            peer=entry.peer,
                            detail="data after the task frame",
                            not_logged_since=not_logged,
                        )
                except StreamEOF:
                    return  # as above
                except StreamError:
                    pass  # reset by the publisher: writes will fail and the result goes to gossip
                entry.done.set()

            nursery.start_soon(watch_reads)
            await entry.done.wait()
            nursery.cancel_scope.cancel()

    # --- outbound ----------------------------------------------------------

    def register_outbound(self, stream: INetStream, peer: str) -> int:
        """Track a stream we opened, before its first frame is written (StreamGoneError past a limit: write
        nothing on it); `serve` it next, or `forget_outbound` it when that write fails."""
        if (limit := self._over_limit(peer)) is not None:
            raise StreamGoneError(f"stream to {peer} not opened: {limit}")
        return self._register(stream, peer, inbound=False).id

    def forget_outbound(self, stream_id: int) -> None:
        """Drop a registered stream that will not be served (its first frame could not be written)."""
        entry = self._streams.get(stream_id)
        if entry is not None:
            self._forget(entry)

    async def serve(self, stream_id: int) -> None:
        """Hand every frame of an outbound stream over until it ends, we close it or its lifetime passes."""
        entry = self._streams.get(stream_id)
        if entry is None:
            return
        reader = FrameReader(self.limits.max_frame_bytes)
        try:
            with trio.move_on_after(self.limits.max_lifetime_s):
                async with trio.open_nursery() as nursery:

                    async def read_all() -> None:
                        try:
                            while chunk := await entry.stream.read(READ_CHUNK_BYTES):
                                for frame in reader.feed(chunk):
                                    self._on_frame(entry.id, frame)
                            entry.graceful = True
                        except StreamEOF:
                            entry.graceful = True  # the node finished: our FIN completes the close
                        except FrameError as exc:
                            log.info("stream sent a bad frame", peer=entry.peer, reason=exc.reason)
                        except StreamError:
                            pass
                        entry.done.set()

                    nursery.start_soon(read_all)
                    await entry.done.wait()
                    nursery.cancel_scope.cancel()
        finally:
            await self._release(entry)

    # --- both --------------------------------------------------------------

    async def send(self, stream_id: int, data: bytes, last: bool = False) -> None:
        """Write one frame; StreamGoneError (and the stream is reset) when it cannot be written in time.

        `last`: the stream's last frame; once written the stream is closed (FIN) and no longer counts against its
        peer, here on the Trio thread: the peer may open its next stream as soon as it reads this frame, before a
        separate close from a busy event loop would have come."""
        entry = self._streams.get(stream_id)
        if entry is None or entry.done.is_set():
            raise StreamGoneError(f"stream {stream_id} is closed")
        frame = encode_frame(data, self.limits.max_frame_bytes)
        async with entry.write_lock:
            with trio.move_on_after(self.limits.write_timeout_s) as scope:
                try:
                    await entry.stream.write(frame)
                    if last:
                        self._uncount(entry)
                        self.close(stream_id)
                    else:
                        self._keep(entry)  # a frame before the last: its task is the node's (`keeps_connection`)
                    return
                except StreamError as exc:
                    entry.done.set()
                    raise StreamGoneError(f"stream {stream_id} to {entry.peer} broke: {exc!r}") from None
        if scope.cancelled_caught:
            entry.done.set()
            raise StreamGoneError(f"stream {stream_id} to {entry.peer}: write timed out")

    def close(self, stream_id: int, graceful: bool = True) -> None:
        """End a stream: after its last frame (FIN) or at once (reset). Unknown ids are ignored."""
        entry = self._streams.get(stream_id)
        if entry is not None and not entry.done.is_set():  # ended already: its end stays (a last frame's FIN)
            entry.graceful = graceful
            entry.done.set()

    # --- internals ---------------------------------------------------------

    def _may_log(self, event: str, reason: str) -> int | None:
        """None: do not log `event` for `reason` now (once per `log_window_s`: a peer opens streams for
        free); otherwise how many were not logged since."""
        key = (event, reason)
        now = trio.current_time()
        if now - self._logged_at.get(key, -math.inf) < self.limits.log_window_s:
            self._not_logged[key] = self._not_logged.get(key, 0) + 1
            return None
        self._logged_at[key] = now
        return self._not_logged.pop(key, 0)

    def _over_limit(self, peer: str) -> str | None:
        # The peer's own limit first: a peer at it is refused even where a silent stream could be cut.
        if self._per_peer.get(peer, 0) >= self.limits.max_streams_per_peer:
            return TOO_MANY_FROM_PEER
        if len(self._streams) >= self.limits.max_streams:
            return "too_many_streams"
        return None

    def _register(self, stream: INetStream, peer: str, inbound: bool) -> _OpenStream:
        entry = _OpenStream(next(self._ids), stream, peer, inbound)
        self._streams[entry.id] = entry
        self._per_peer[peer] = self._per_peer.get(peer, 0) + 1
        if not inbound:
            self._keep(entry)
        return entry

    def _keep(self, entry: _OpenStream) -> None:
        """The stream keeps its connection from now until it is uncounted."""
        if entry.counted and not entry.keeps:
            entry.keeps = True
            self._keeping[entry.peer] = self._keeping.get(entry.peer, 0) + 1

    def _forget(self, entry: _OpenStream) -> bool:
        """Take the stream out of the table and its peer's count; False if it was not in it."""
        if self._streams.pop(entry.id, None) is None:
            return False
        self._uncount(entry)
        return True

    def _uncount(self, entry: _OpenStream) -> None:
        """Take the stream out of its peer's count (once)."""
        if not entry.counted:
            return
        entry.counted = False
        counts = [self._per_peer, self._keeping] if entry.keeps else [self._per_peer]
        for count in counts:
            left = count.get(entry.peer, 1) - 1
            if left > 0:
                count[entry.peer] = left
            else:
                count.pop(entry.peer, None)

    async def _release(self, entry: _OpenStream) -> None:
        if not self._forget(entry):
            return  # evicted: its refusal closed it
        entry.done.set()
        try:
            # Only a stream the asyncio side knows (outbound, or inbound with its task handed over) is
            # told it ended: telling one it never saw would make it keep a record of it forever.
            if entry.handed_over or not entry.inbound:
                self._on_frame(entry.id, None)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT_S):
                try:
                    # FIN after the last frame (or the peer's FIN); a reset otherwise.
                    if entry.graceful:
                        await entry.stream.close()
                    else:
                        await entry.stream.reset()
                except Exception:  # noqa: BLE001 - the connection may be gone already
                    pass

    async def _refuse(self, entry: _OpenStream, status: str, reason: str) -> None:
        """Answer with a refusal frame and close (best effort, bounded); reset if that fails."""
        self.refused += 1
        if (not_logged := self._may_log("refused", reason)) is not None:
            log.info(
                "stream answered before its task was read",
                peer=entry.peer,
                status=status,
                reason=reason,
                not_logged_since=not_logged,
            )
        with trio.move_on_after(1.0):
            try:
                await entry.stream.write(encode_frame(refusal_frame(status, reason)))
                await entry.stream.close()
                entry.graceful = True  # closed already: a reset now could drop the refusal in flight
                return
            except Exception:  # noqa: BLE001 - the peer may be gone
                pass
        with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT_S):
            try:
                await entry.stream.reset()
            except Exception:  # noqa: BLE001
                pass
