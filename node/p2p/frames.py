"""Frames of the direct-delivery streams: an unsigned varint length, then that many bytes.

Pure byte handling, no I/O: `encode_frame` for writing and `FrameReader`, an
incremental decoder fed with whatever a stream read returned. A bad length
(a varint longer than 10 bytes, or past the frame limit) raises `FrameError`
before any of the frame's bytes are buffered, so a hostile length costs nothing.
"""

from __future__ import annotations

from node.wire.topics import MAX_FRAME_BYTES

MAX_VARINT_BYTES = 10  # a uint64


class FrameError(Exception):
    """The bytes on a stream are not a valid frame; `reason` is a short stable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def encode_varint(value: int) -> bytes:
    """Unsigned LEB128 (the multiformats varint)."""
    if value < 0:
        raise ValueError("a varint is unsigned")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_frame(data: bytes, max_bytes: int = MAX_FRAME_BYTES) -> bytes:
    """`data` with its varint length in front; FrameError when it is over `max_bytes`."""
    if len(data) > max_bytes:
        raise FrameError("frame_too_large", f"frame of {len(data)} bytes exceeds the limit of {max_bytes} bytes")
    return encode_varint(len(data)) + data


class FrameReader:
    """Splits a byte stream into frames; feed it chunks, take complete frames."""

    def __init__(self, max_bytes: int = MAX_FRAME_BYTES) -> None:
        self._max_bytes = max_bytes
        self._buffer = bytearray()
        self._length: int | None = None  # of the frame being read, once its varint is complete

    @property
    def pending(self) -> bool:
        """Whether part of a frame has been received."""
        return bool(self._buffer) or self._length is not None

    def feed(self, chunk: bytes) -> list[bytes]:
        """Add received bytes; returns the frames they complete (FrameError on a bad length)."""
        self._buffer += chunk
        frames: list[bytes] = []
        while True:
            if self._length is None and not self._read_length():
                return frames
            assert self._length is not None
            if len(self._buffer) < self._length:
                return frames
            frames.append(bytes(self._buffer[: self._length]))
            del self._buffer[: self._length]
            self._length = None

    def _read_length(self) -> bool:
        value = 0
        for index, byte in enumerate(self._buffer[:MAX_VARINT_BYTES]):
            value |= (byte & 0x7F) << (7 * index)
            if not byte & 0x80:
                del self._buffer[: index + 1]
                if value > self._max_bytes:
                    raise FrameError(
                        "frame_too_large", f"frame length {value} exceeds the limit of {self._max_bytes} bytes"
                    )
                self._length = value
                return True
        if len(self._buffer) >= MAX_VARINT_BYTES:
            raise FrameError("bad_length", f"frame length is not a varint of at most {MAX_VARINT_BYTES} bytes")
        return False
