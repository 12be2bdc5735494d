"""Inbound gossip messages: the envelope check and the body check for each topic.

`GossipGate.validate` is the gossip validator (PROTOCOL.md section 7): it runs
on the libp2p thread before a message is relayed, never raises, and logs the
reason of every rejection. `decode` gives the consumers a typed message.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Union

import structlog

from node.envelope import EnvelopeError, SignedMessage, open_envelope
from node.messages import HeartbeatBody, MessageError, ResultBody, TaskBody, decode_heartbeat, decode_result, decode_task

TASK_TOPIC = "task"
RESULTS_TOPIC = "results"
HEARTBEAT_TOPIC = "heartbeat"
TOPICS = (TASK_TOPIC, RESULTS_TOPIC, HEARTBEAT_TOPIC)

Body = Union[TaskBody, ResultBody, HeartbeatBody]
_DECODERS: dict[str, Callable[[bytes], Body]] = {
    TASK_TOPIC: decode_task,
    RESULTS_TOPIC: decode_result,
    HEARTBEAT_TOPIC: decode_heartbeat,
}

log = structlog.get_logger(__name__)


class InboundError(Exception):
    """A gossip message is not valid for its topic; `reason` is a short stable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Inbound:
    """A verified message: who signed it and its typed body."""

    signed: SignedMessage
    body: Body

    @property
    def sender(self) -> str:
        return self.signed.sender


def decode(topic: str, data: bytes, now_ns: int | None = None) -> Inbound:
    """Verify the envelope and decode the body for `topic`; InboundError otherwise."""
    if topic not in _DECODERS:
        raise InboundError("unknown_topic", f"unknown topic {topic!r}")
    try:
        signed = open_envelope(data, topic, now_ns)
    except EnvelopeError as exc:
        raise InboundError(exc.reason, str(exc)) from None
    try:
        body = _DECODERS[topic](signed.body)
    except MessageError as exc:
        raise InboundError("bad_body", str(exc)) from None
    return Inbound(signed, body)


class GossipGate:
    """The validator handed to the P2P layer; counts rejections by reason."""

    def __init__(self, on_reject: Callable[[str, str], None] | None = None) -> None:
        self._on_reject = on_reject

    def validate(self, topic: str, data: bytes) -> bool:
        try:
            decode(topic, data, time.time_ns())
        except InboundError as exc:
            log.info("message rejected", topic=topic, reason=exc.reason, detail=str(exc)[:300], size=len(data))
            if self._on_reject is not None:
                self._on_reject(topic, exc.reason)
            return False
        except Exception:  # noqa: BLE001 - a validator must never raise into libp2p
            log.exception("validator failed", topic=topic, size=len(data))
            if self._on_reject is not None:
                self._on_reject(topic, "internal")
            return False
        return True
