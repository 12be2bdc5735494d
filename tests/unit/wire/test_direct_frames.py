"""Protocol 0.4 shapes: heartbeat `addrs`/`leaving` and the stream's answer and progress frames."""

import pytest

from node.wire.direct import (
    AnswerStatus,
    Progress,
    StreamAnswer,
    decode_answer,
    decode_progress,
    encode_frame_body,
    frame_kind,
)
from node.wire.envelope import seal
from node.wire.identity import Identity
from node.wire.inbound import InboundError, decode
from node.wire.messages import MessageError, decode_heartbeat, encode_body
from node.wire.topics import MAX_ADDR_CHARS, MAX_HEARTBEAT_ADDRS


def heartbeat(identity: Identity, **extra: object) -> bytes:
    body = decode_heartbeat(
        b'{"address":"' + identity.address.encode() + b'","peerId":"' + identity.peer_id.encode() + b'",'
        b'"models":["m"],"capacity":{"free":1,"max":1},"pendingTasks":0,"tps":{},"version":"0.3.0","timestamp":1}'
    )
    return seal(identity, "heartbeat", encode_body(body.model_copy(update=extra)))


def test_a_heartbeat_with_its_own_addrs_and_leaving_decodes() -> None:
    node = Identity.generate()
    addrs = [f"/ip4/127.0.0.1/tcp/4001/p2p/{node.peer_id}", f"/ip6/::1/tcp/4001/p2p/{node.peer_id}"]
    body = decode("heartbeat", heartbeat(node, addrs=addrs, leaving=True)).body
    assert body.addrs == addrs and body.leaving is True  # type: ignore[union-attr]


def test_a_heartbeat_without_the_new_fields_still_decodes() -> None:
    node = Identity.generate()
    body = decode("heartbeat", heartbeat(node)).body
    assert body.addrs is None and body.leaving is None  # type: ignore[union-attr]


def test_addrs_naming_another_peer_reject_the_heartbeat() -> None:
    node, other = Identity.generate(), Identity.generate()
    for addr in (f"/ip4/127.0.0.1/tcp/4001/p2p/{other.peer_id}", "/ip4/127.0.0.1/tcp/4001", f"/p2p/{node.peer_id}/x"):
        with pytest.raises(InboundError, match="does not end with /p2p/<its peerId>") as caught:
            decode("heartbeat", heartbeat(node, addrs=[addr]))
        assert caught.value.reason == "bad_addrs"


def test_too_many_or_too_long_addrs_reject_the_heartbeat() -> None:
    node = Identity.generate()
    own = f"/ip4/127.0.0.1/tcp/4001/p2p/{node.peer_id}"
    long = "/dns4/" + "a" * MAX_ADDR_CHARS + f"/tcp/1/p2p/{node.peer_id}"
    for addrs in ([own] * (MAX_HEARTBEAT_ADDRS + 1), [long]):
        with pytest.raises(InboundError) as caught:
            decode("heartbeat", heartbeat(node, addrs=addrs))
        assert caught.value.reason == "bad_body"
    assert decode("heartbeat", heartbeat(node, addrs=[own] * MAX_HEARTBEAT_ADDRS))


def test_answer_and_progress_frames_round_trip_and_are_told_apart() -> None:
    answer = StreamAnswer(task_id="t1", status=AnswerStatus.BUSY, reason="no_capacity")
    data = encode_frame_body(answer)
    assert data == b'{"taskId":"t1","status":"busy","reason":"no_capacity"}'
    assert frame_kind(data) == "answer" and decode_answer(data) == answer
    progress = encode_frame_body(Progress(task_id="t1", delta="Hel"))
    assert frame_kind(progress) == "progress" and decode_progress(progress).delta == "Hel"
    assert frame_kind(seal(Identity.generate(), "results", b"{}")) == "envelope"


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"[1]",
        b'{"x":1}',
        b"\xff\xfe",
        b'{"taskId":"t","status":"maybe"}',
        b"[" * 100_000 + b"]" * 100_000,  # nested past the JSON parser's depth (RecursionError)
        b'{"status":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    ],
)
def test_frames_that_are_none_of_the_kinds_are_errors(data: bytes) -> None:
    with pytest.raises(MessageError):
        if frame_kind(data) == "answer":
            decode_answer(data)
