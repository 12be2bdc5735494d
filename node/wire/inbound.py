"""Inbound gossip messages: the envelope check and the body check for each topic.

`GossipGate.validate` is the gossip validator: it runs
on the libp2p thread before a message is relayed, never raises, and logs the
reason of every rejection; `GossipGate.check` is the same validator returning the
decoded message, which the P2P layer hands over with it (`GossipMessage.validated`).
`decode` gives the consumers a typed message; `consume` is their loop (take from the
queue, decode unless the validator already did, hand over). A topic a
peer only relays is joined with `P2PHost.relay`: nothing of it reaches a queue.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import structlog

from node.wire.envelope import EnvelopeError, SignedMessage, open_envelope
from node.wire.identity import peer_id_of_public_key
from node.wire.messages import (
    HeartbeatBody,
    MessageError,
    ResultBody,
    TaskBody,
    decode_heartbeat,
    decode_result,
    decode_task,
    held_bytes,
)
from node.wire.topics import HEARTBEAT_TOPIC, RESULTS_TOPIC, TASK_TOPIC

Body = TaskBody | ResultBody | HeartbeatBody
_DECODERS: dict[str, Callable[[bytes], Body]] = {
    TASK_TOPIC: decode_task,
    RESULTS_TOPIC: decode_result,
    HEARTBEAT_TOPIC: decode_heartbeat,
}

log = structlog.get_logger(__name__)


class Received(Protocol):
    """A message as the P2P layer queues it (node.p2p.host.GossipMessage): its raw bytes."""

    @property
    def data(self) -> bytes:
        """The message's raw bytes."""
        ...

    @property
    def validated(self) -> object:
        """What the validator returned for `data` (an Inbound from `GossipGate.check`), or None."""
        ...


MessageT = TypeVar("MessageT", bound=Received)


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
    held_bytes: int = 0  # about how much memory the decoded body holds (the P2P layer's budgets count it)

    @property
    def sender(self) -> str:
        """The address that signed the message."""
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
    if isinstance(body, HeartbeatBody):
        _check_heartbeat_signer(signed, body)
    return Inbound(signed, body, held_bytes(body, len(signed.body)))


def _check_heartbeat_signer(signed: SignedMessage, body: HeartbeatBody) -> None:
    """A heartbeat speaks for its signer only: its address, peer id and addrs are the signing key's."""
    if body.address != signed.sender:
        raise InboundError(
            "identity_mismatch", f"heartbeat body address {body.address} is not its signer {signed.sender}"
        )
    if body.peer_id != peer_id_of_public_key(signed.sender_key):
        raise InboundError(
            "identity_mismatch", f"heartbeat body peerId {body.peer_id[:64]!r} is not its signer's peer id"
        )
    # A node advertises only its own addresses: one naming another peer would steer publishers' dials.
    suffix = f"/p2p/{body.peer_id}"
    for addr in body.addrs or []:
        if not addr.endswith(suffix):
            raise InboundError("bad_addrs", f"heartbeat addr {addr[:64]!r} does not end with /p2p/<its peerId>")


class LogWindow:
    """At most one log line per key per `window_s`; counts the lines held back meanwhile."""

    def __init__(self, window_s: float) -> None:
        self._window_s = window_s
        self._last_logged: dict[object, float] = {}
        self._suppressed: dict[object, int] = {}

    def may_log(self, key: object) -> int | None:
        """None: do not log now. Otherwise log, saying how many were not logged since."""
        now = time.monotonic()
        if now - self._last_logged.get(key, -self._window_s) < self._window_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return None
        self._last_logged[key] = now
        return self._suppressed.pop(key, 0)


class GossipGate:
    """The validator handed to the P2P layer; counts rejections by reason.

    Each rejection reason is logged at most once per `log_window_s` (with how
    many were not logged since), so a peer spamming invalid messages cannot
    flood the logs; the `on_reject` callback (metrics) still sees every one,
    and `on_valid` every message that passed.
    """

    def __init__(
        self,
        on_reject: Callable[[str, str], None] | None = None,
        log_window_s: float = 10.0,
        on_valid: Callable[[], None] | None = None,
    ) -> None:
        self._on_reject = on_reject
        self._on_valid = on_valid
        self._window = LogWindow(log_window_s)

    def validate(self, topic: str, data: bytes) -> bool:
        """Accept or reject (for a topic only relayed: nothing is handed over)."""
        return self.check(topic, data) is not None

    def check(self, topic: str, data: bytes) -> Inbound | None:
        """The decoded message, or None (rejected): as a validator, it reaches `consume` with the message."""
        try:
            inbound = decode(topic, data, time.time_ns())
        except InboundError as exc:
            self._reject(topic, exc.reason, str(exc), len(data))
            return None
        except Exception:  # noqa: BLE001 - a validator must never raise into libp2p
            # The same bytes may come again and again: the traceback once a window, like any rejection.
            if (not_logged := self._window.may_log((topic, "validator failed"))) is not None:
                log.exception("validator failed", topic=topic, size=len(data), not_logged_since=not_logged)
            self._reject(topic, "internal", "validator failed", len(data))
            return None
        if self._on_valid is not None:
            self._on_valid()
        return inbound

    def _reject(self, topic: str, reason: str, detail: str, size: int) -> None:
        if self._on_reject is not None:
            self._on_reject(topic, reason)
        not_logged = self._window.may_log((topic, reason))
        if not_logged is None:
            return
        log.info(
            "message rejected", topic=topic, reason=reason, detail=detail[:300], size=size, not_logged_since=not_logged
        )


async def consume(
    queue: asyncio.Queue[MessageT],
    topic: str,
    handle: Callable[[Inbound], None],
    on_error: Callable[[Exception], None] | None = None,
) -> None:
    """Decode every message of `topic` from `queue` and hand it to `handle`, until cancelled.

    A message that does not decode is skipped (the gossip validator already rejected
    and logged it). A handler that raises never ends the loop: `on_error` is called
    inside the except block (so it may log the traceback), else the failure is logged.
    """
    while True:
        message = await queue.get()
        try:
            # A validator that is `GossipGate.check` decoded these exact bytes on the libp2p
            # thread already (its signature recovery is the costly part); else decode here.
            validated = message.validated
            inbound = validated if isinstance(validated, Inbound) else decode(topic, message.data, time.time_ns())
        except InboundError:
            continue
        except Exception as exc:  # noqa: BLE001 - one message must never stop the loop
            _failed(topic, exc, on_error)
            continue
        try:
            handle(inbound)
        except Exception as exc:  # noqa: BLE001 - one message must never stop the loop
            _failed(topic, exc, on_error)


def _failed(topic: str, exc: Exception, on_error: Callable[[Exception], None] | None) -> None:
    if on_error is not None:
        on_error(exc)
    else:
        log.exception("inbound message handler failed; the loop goes on", topic=topic)
