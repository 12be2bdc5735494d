"""A node's answer on a task's stream, read once into a DeclineKind (node/publisher/direct.py `deliver`): a test
per kind, with the reason text a failure keeps and the ErrorKind it becomes. A fake host and stream: no network."""

from __future__ import annotations

from typing import Any, cast

import pytest

from node.p2p.errors import StreamRefusedError
from node.p2p.host import P2PHost
from node.p2p.streams import TOO_MANY_FROM_PEER
from node.publisher.direct import DeclinedError, DeclineKind, NotDialableError, deliver
from node.wire.direct import AnswerStatus, StreamAnswer, encode_frame_body
from node.wire.error_kinds import ErrorKind

TASK_ID = "t1"


class FakeStream:
    """Answers one frame (None: closes without one) and records how it was closed."""

    def __init__(self, frame: bytes | None) -> None:
        self.frame = frame
        self.closed: list[bool] = []

    async def receive(self, timeout: float | None = None) -> bytes | None:
        return self.frame

    async def close(self, graceful: bool = True) -> None:
        self.closed.append(graceful)


class FakeHost:
    """Opens the one stream it was given, or refuses it."""

    def __init__(self, stream: FakeStream | None) -> None:
        self.stream = stream

    async def open_stream(self, addrs: list[str], first_frame: bytes, timeout: float = 5.0) -> Any:
        if self.stream is None:
            raise StreamRefusedError("stream reset")
        return self.stream


def answer(status: AnswerStatus, reason: str = "", task_id: str = TASK_ID) -> bytes:
    return encode_frame_body(StreamAnswer(task_id=task_id, status=status, reason=reason))


async def declined(stream: FakeStream | None) -> DeclinedError:
    with pytest.raises(DeclinedError) as caught:
        await deliver(cast(P2PHost, FakeHost(stream)), ["/ip4/127.0.0.1/tcp/1"], TASK_ID, b"sealed", 1.0)
    return caught.value


@pytest.mark.parametrize(
    ("frame", "kind", "reason", "error_kind"),
    [
        (answer(AnswerStatus.BUSY, "paused"), DeclineKind.BUSY, "busy: paused", ErrorKind.BUSY),
        (
            answer(AnswerStatus.BUSY, TOO_MANY_FROM_PEER),
            DeclineKind.STREAMS_FULL,
            f"busy: {TOO_MANY_FROM_PEER}",
            ErrorKind.BUSY,
        ),
        (answer(AnswerStatus.IGNORED, "not_picked"), DeclineKind.IGNORED, "ignored: not_picked", ErrorKind.FAILED),
        (answer(AnswerStatus.REJECTED, "bad_sig"), DeclineKind.REJECTED, "rejected: bad_sig", ErrorKind.FAILED),
        (None, DeclineKind.UNANSWERED, "stream closed without an answer", ErrorKind.FAILED),
        (
            answer(AnswerStatus.ACCEPTED, task_id="another"),
            DeclineKind.BAD_ANSWER,
            "answer for another task",
            ErrorKind.FAILED,
        ),
    ],
    ids=["busy", "streams-full", "ignored", "rejected", "unanswered", "another-task"],
)
async def test_each_answer_that_does_not_accept_is_declined_as_its_kind(
    frame: bytes | None, kind: DeclineKind, reason: str, error_kind: ErrorKind
) -> None:
    stream = FakeStream(frame)
    error = await declined(stream)
    assert (error.kind, error.reason) == (kind, reason)
    assert error.on_gossip is (kind is DeclineKind.STREAMS_FULL)
    failure = error.failure("0xnode")
    assert (failure.kind, failure.reason, failure.node, failure.limit) == (error_kind, reason, "0xnode", None)
    # Closed gracefully after an answer that keeps the protocol, reset after one that breaks it (another task's).
    assert stream.closed == ([] if frame is None else [kind is not DeclineKind.BAD_ANSWER])


async def test_an_answer_that_is_no_answer_is_a_bad_answer_and_its_stream_is_reset() -> None:
    stream = FakeStream(b"{not json")
    error = await declined(stream)
    assert error.kind is DeclineKind.BAD_ANSWER and error.reason.startswith("bad answer: ")
    assert not error.on_gossip and error.failure("0xnode").kind is ErrorKind.FAILED
    assert stream.closed == [False]


async def test_a_refused_stream_is_busy_and_goes_on_gossip() -> None:
    error = await declined(None)
    assert error.kind is DeclineKind.REFUSED and error.on_gossip
    assert error.reason == "busy: stream refused (stream reset)"
    assert error.failure("0xnode").kind is ErrorKind.BUSY


def test_an_undialable_node_is_not_dialable_and_fails_as_a_plain_failure() -> None:
    error = NotDialableError(TASK_ID, "not dialable: connection refused")
    assert error.kind is DeclineKind.NOT_DIALABLE and not error.on_gossip
    assert error.failure("0xnode").kind is ErrorKind.FAILED
