"""Yamux within bounds: streams a remote side may hold open on one connection, and its receive windows.

py-libp2p's Yamux (0.8.1) takes every stream a peer opens and buffers every byte it sends:

- **Streams.** Its only stream cap (256) is on the streams we open; a peer's SYN frames (12 bytes
  each) each made a stream and a negotiation task held for 10 s. Measured at a default node:
  20,000 SYNs in 0.9 s from one connection, +163 MiB and 11 s of CPU.
- **Receive windows.** A DATA frame past a stream's window is logged and buffered all the same,
  and a stream reset with unread bytes keeps them, and anything sent after, until the connection
  ends. Measured: one stream, reset by a failed negotiation, then 300 frames of 1 MiB: +309 MiB,
  held.

`BoundedYamux` resets each stream the remote side opens past `MuxerLimits.max_inbound_streams`
open at once on the connection (go-yamux's MaxIncomingStreams), or with an id that is ours to
open, before py-libp2p makes anything of it; a peer that goes on after as many resets as the cap
loses the connection. A peer that sends more than a stream's receive window loses it too
(go-yamux's ErrRecvWindowExceeded; a peer that honours the windows never does), and the unread
bytes of a reset stream are dropped. So what a connection can make the node hold is at most its
streams' windows (256 KiB each unless the node read one fast enough to grow it), and a stream
flood costs the cap again in resets before the peer must connect again (per-IP limits apply).
Pings past a small budget per second are read and not answered. `install_bounded_muxer` makes a
host's connections use it: py-libp2p builds its own `Yamux` for the protocol whatever class it
is given.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, ClassVar

import structlog
import trio
from libp2p.abc import IMuxedConn, ISecureConn
from libp2p.network.swarm import Swarm
from libp2p.peer.id import ID
from libp2p.stream_muxer.muxer_multistream import MuxerMultistream
from libp2p.stream_muxer.yamux.yamux import (
    DEFAULT_WINDOW_SIZE,
    FLAG_RST,
    FLAG_SYN,
    HEADER_SIZE,
    PROTOCOL_ID,
    TYPE_DATA,
    TYPE_PING,
    TYPE_WINDOW_UPDATE,
    YAMUX_HEADER_FORMAT,
    Yamux,
    YamuxStream,
)
from pydantic import BaseModel, ConfigDict, Field

from node.p2p.yamux_windows import use_half_window_updates

log = structlog.get_logger(__name__)

CLOSED_WINDOW = "receive_window"  # connections closed for data past a stream's window (a refusal reason)
CLOSED_STREAM_FLOOD = "stream_flood"  # connections closed for streams past the cap after as many resets
OTHER_STREAMS = 16  # room a peer needs beside its direct-delivery streams: pubsub, identify, ping, streams closing


class MuxerLimits(BaseModel):
    """What one connection's remote side may hold open at once."""

    model_config = ConfigDict(frozen=True)

    max_inbound_streams: int = Field(
        default=32,
        ge=4,
        description="streams the remote side may have open on one connection (pubsub, direct delivery: 16 a peer)",
    )

    pings_per_second: int = Field(
        default=8, ge=1, description="pings answered per connection and second; more are read, not answered"
    )

    def with_room_for(self, direct_streams: int) -> MuxerLimits:
        """These limits, raised if need be so that a peer's `direct_streams` fit beside its other streams."""
        needed = direct_streams + OTHER_STREAMS
        return self if needed <= self.max_inbound_streams else self.model_copy(update={"max_inbound_streams": needed})


@dataclass
class MuxerRefusals:
    """What the muxers of one host refused so far (read from any thread: plain counters)."""

    streams: int = 0  # streams reset for being past max_inbound_streams on their connection
    window: int = 0  # connections closed for data past a stream's receive window
    stream_flood: int = 0  # connections closed for opening streams past the cap after as many resets
    pings: int = 0  # pings read and not answered: past their connection's budget


class MuxerAbuseError(Exception):
    """The peer broke the muxer's bounds in a way an honest peer never does: its connection is closed."""


class ReceiveWindowExceededError(MuxerAbuseError):
    """The peer sent more on a stream than its receive window allows."""


class StreamFloodError(MuxerAbuseError):
    """The peer went on opening streams past the connection's cap after as many of them were reset."""


class BoundedYamux(Yamux):
    """Yamux that refuses streams past the connection's cap and closes a connection that overruns a window."""

    limits: ClassVar[MuxerLimits]  # set per host by `bounded_yamux_class`
    refusals: ClassVar[MuxerRefusals]

    def __init__(self, secured_conn: ISecureConn, peer_id: ID, **kwargs: Any) -> None:
        super().__init__(secured_conn, peer_id, **kwargs)
        # Every byte py-libp2p's reader takes from the connection passes the guard, which hands each frame
        # header to `judge` before the reader acts on it (the reader keeps no hook of its own).
        self.secured_conn = _FrameGuard(secured_conn, self)  # type: ignore[assignment]
        self._remote_parity = 0 if self.is_initiator_value else 1  # the remote side's stream ids: even if we dialled
        self._refused_here = 0  # streams refused on this connection
        self._pings = 0  # pings answered in the current second
        self._ping_second = 0.0

    async def judge(self, header: bytes) -> bytes:
        """The header the reader is to act on: `header`, or one that makes it drop a refused stream's frame.

        Raises ReceiveWindowExceededError for a DATA frame past its stream's window, StreamFloodError for
        a stream opened after as many resets as the cap.
        """
        _, kind, flags, stream_id, length = struct.unpack(YAMUX_HEADER_FORMAT, header)
        stream = self.streams.get(stream_id)
        if kind == TYPE_DATA and length:
            window = stream.recv_window if stream is not None else DEFAULT_WINDOW_SIZE if flags & FLAG_SYN else length
            if length > window:
                self.refusals.window += 1
                log.debug(
                    "connection closed: receive window exceeded", peer=str(self.peer_id), frame=length, window=window
                )
                raise ReceiveWindowExceededError(f"{length} bytes on stream {stream_id}, whose window is {window}")
        if kind == TYPE_PING and flags & FLAG_SYN:
            return header if self._may_answer_ping() else struct.pack(YAMUX_HEADER_FORMAT, 0, kind, 0, 0, length)
        if not flags & FLAG_SYN or kind not in (TYPE_DATA, TYPE_WINDOW_UPDATE) or stream is not None:
            return header
        # Ids of our parity (and 0, the session's) are ours to open: py-libp2p would take them as the peer's
        # streams, outside the count, and later open its own on top of them.
        theirs = stream_id != 0 and stream_id % 2 == self._remote_parity
        if theirs and self._remote_open() < self.limits.max_inbound_streams:
            return header
        # Refused before py-libp2p makes anything of it: the peer gets a reset, and the frame, its SYN
        # flag cleared, names a stream that does not exist, so the reader drops it (and its body).
        self.refusals.streams += 1
        self._refused_here += 1
        if self._refused_here > self.limits.max_inbound_streams:
            self.refusals.stream_flood += 1
            log.debug("connection closed: streams past the cap", peer=str(self.peer_id), refused=self._refused_here)
            raise StreamFloodError(
                f"{self._refused_here} streams opened past the cap of {self.limits.max_inbound_streams}"
            )
        await self._write_frame(struct.pack(YAMUX_HEADER_FORMAT, 0, TYPE_WINDOW_UPDATE, FLAG_RST, stream_id, 0))
        return struct.pack(YAMUX_HEADER_FORMAT, 0, kind, flags & ~FLAG_SYN, stream_id, length)

    def _may_answer_ping(self) -> bool:
        # A ping costs a pong written back (~70 us of the P2P thread each, against ~70 us to read any frame);
        # honest peers ping every few seconds. Pings past the budget are read and not answered.
        now = trio.current_time()
        if now - self._ping_second >= 1.0:
            self._ping_second, self._pings = now, 0
        self._pings += 1
        if self._pings <= self.limits.pings_per_second:
            return True
        self.refusals.pings += 1
        return False

    def _remote_open(self) -> int:
        parity = self._remote_parity
        return sum(1 for stream_id in self.streams if stream_id % 2 == parity)

    def _finalize_stream_locked(self, stream: YamuxStream, *, fully_closed: bool) -> None:
        # A reset stream is read no more (reads raise): its unread bytes go now, and with its entry gone
        # what the peer sends on it after is read and dropped, not kept until the connection ends.
        if fully_closed and stream.reset_received and (buffer := self.stream_buffers.get(stream.stream_id)):
            buffer.clear()
        super()._finalize_stream_locked(stream, fully_closed=fully_closed)


class _FrameGuard:
    """The secured connection as one muxer's reader sees it: each frame header is judged before it is acted on.

    py-libp2p reads a 12-byte header, then the body of a DATA frame, and nothing else. The guard reads
    each header whole (so that it can be judged and changed at once) and passes body bytes through,
    never past the frame's end. An error raised here ends the muxer's read loop, which closes the connection.
    """

    __slots__ = ("_body_left", "_conn", "_muxer")

    def __init__(self, conn: ISecureConn, muxer: BoundedYamux) -> None:
        self._conn = conn
        self._muxer = muxer
        self._body_left = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    async def write(self, data: bytes) -> None:
        await self._conn.write(data)

    async def read(self, n: int | None = None) -> bytes:
        if self._body_left:
            data = await self._conn.read(self._body_left if n is None else min(n, self._body_left))
            self._body_left -= len(data)
            return data
        header = b""
        while len(header) < HEADER_SIZE:
            chunk = await self._conn.read(HEADER_SIZE - len(header))
            if not chunk:
                return header  # the connection ended: the reader sees a short read, as it would have
            header += chunk
        header = await self._muxer.judge(header)
        if header[1] == TYPE_DATA:
            self._body_left = struct.unpack_from("!I", header, 8)[0]
        return header


def bounded_yamux_class(limits: MuxerLimits, refusals: MuxerRefusals) -> type[BoundedYamux]:
    """A BoundedYamux class bound to one host's limits and counters."""
    return type("HostYamux", (BoundedYamux,), {"limits": limits, "refusals": refusals})


def install_bounded_muxer(swarm: Swarm, limits: MuxerLimits, refusals: MuxerRefusals) -> None:
    """Make every connection of `swarm` (inbound and dialled) use a BoundedYamux with `limits`, its streams
    announcing room at half their window (yamux_windows.py)."""
    use_half_window_updates()
    muxers: MuxerMultistream = swarm.upgrader.muxer_multistream
    muxer_class = bounded_yamux_class(limits, refusals)

    async def new_conn(conn: ISecureConn, peer_id: ID) -> IMuxedConn:
        # py-libp2p's MuxerMultistream.new_conn, with our class for yamux (the one protocol a host offers).
        protocol, transport_class = await muxers._selector.select(conn, conn.is_initiator, muxers.negotiate_timeout)
        if protocol == PROTOCOL_ID:
            muxed: IMuxedConn = muxer_class(conn, peer_id, is_initiator=conn.is_initiator)
        else:
            muxed = transport_class(conn, peer_id)
        return muxers._annotate_connection(muxed, conn, protocol)

    muxers.new_conn = new_conn  # type: ignore[method-assign]
