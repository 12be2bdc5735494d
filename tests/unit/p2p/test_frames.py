"""The direct-delivery frame codec: varint length + bytes, split anywhere, hostile lengths refused."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.p2p.frames import FrameError, FrameReader, encode_frame, encode_varint
from node.wire.topics import MAX_FRAME_BYTES


def test_varint_is_unsigned_leb128() -> None:
    assert encode_varint(0) == b"\x00"
    assert encode_varint(127) == b"\x7f"
    assert encode_varint(128) == b"\x80\x01"
    assert encode_varint(300) == b"\xac\x02"
    with pytest.raises(ValueError):
        encode_varint(-1)


@given(st.lists(st.binary(max_size=300), max_size=8), st.integers(min_value=1, max_value=50))
def test_frames_survive_any_split_of_the_byte_stream(frames: list[bytes], step: int) -> None:
    wire = b"".join(encode_frame(frame) for frame in frames)
    reader = FrameReader()
    got: list[bytes] = []
    for start in range(0, len(wire), step):
        got += reader.feed(wire[start : start + step])
    assert got == frames
    assert not reader.pending


def test_a_partial_frame_is_pending_until_complete() -> None:
    reader = FrameReader()
    wire = encode_frame(b'{"a":1}')
    assert reader.feed(wire[:3]) == []
    assert reader.pending
    assert reader.feed(wire[3:]) == [b'{"a":1}']


def test_an_oversize_length_is_refused_before_its_bytes_arrive() -> None:
    reader = FrameReader()
    with pytest.raises(FrameError) as caught:
        reader.feed(encode_varint(MAX_FRAME_BYTES + 1))
    assert caught.value.reason == "frame_too_large"


def test_a_frame_at_the_limit_is_taken_and_one_over_is_not_written() -> None:
    assert FrameReader().feed(encode_frame(b"x" * MAX_FRAME_BYTES)) == [b"x" * MAX_FRAME_BYTES]
    with pytest.raises(FrameError, match="exceeds the limit"):
        encode_frame(b"x" * (MAX_FRAME_BYTES + 1))


def test_a_varint_longer_than_ten_bytes_is_a_bad_length() -> None:
    with pytest.raises(FrameError) as caught:
        FrameReader().feed(b"\xff" * 11)
    assert caught.value.reason == "bad_length"
    assert FrameReader().feed(b"\xff" * 9) == []  # still a possible (huge) length: more bytes decide


def test_a_small_limit_applies() -> None:
    with pytest.raises(FrameError, match="limit of 10 bytes"):
        FrameReader(max_bytes=10).feed(encode_frame(b"x" * 11))
