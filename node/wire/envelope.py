"""The signed envelope around every gossip message.

`seal` wraps a body for a topic and signs it; `open_envelope` checks the size,
the canonical base64 payload, the protocol name and major.minor version, the
topic, the age and the clock skew, then recovers the signer (low-s signatures
only) and returns the body with the signer's address.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import re
import time
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from node.wire.identity import SIGNATURE_BYTES, Identity, SignatureError, address_of, recover_public_key
from node.wire.topics import MAX_MESSAGE_BYTES, PROTOCOL_NAME, PROTOCOL_VERSION

MAX_AGE_NS = 10 * 60 * 1_000_000_000
MAX_SKEW_NS = 60 * 1_000_000_000

EnvelopeReason = Literal[
    "too_large",
    "not_json",
    "bad_field",
    "bad_base64",
    "bad_signature",
    "protocol_mismatch",
    "version_mismatch",
    "topic_mismatch",
    "stale",
    "future",
]

# ASCII digits only (`\d` is any script's, which int() reads), a few of them: int() refuses past 4,300.
_MAJOR_MINOR = re.compile(r"([0-9]{1,9})\.([0-9]{1,9})(?:\.|$)")


class EnvelopeError(Exception):
    """An envelope was rejected; `.reason` is a stable code, str(e) explains it."""

    def __init__(self, reason: EnvelopeReason, message: str | None = None) -> None:
        super().__init__(message or reason)
        self.reason: EnvelopeReason = reason


class Envelope(BaseModel):
    """The JSON object every gossip message carries. Strict: no type coercion."""

    model_config = ConfigDict(strict=True, frozen=True)

    payload: str
    topic: str
    version: str
    protocol: str
    timestamp: int = Field(ge=0, le=2**63 - 1)
    signature: str = Field(pattern=r"^[0-9a-fA-F]{128}$")
    recovery_id: int = Field(ge=0, le=1)


@dataclass(frozen=True)
class SignedMessage:
    """An opened envelope: the body and who signed it."""

    sender: str  # recovered address, 40 lowercase hex
    topic: str
    body: bytes
    envelope: Envelope
    sender_key: bytes = b""  # recovered compressed public key


def payload_digest(payload: str) -> bytes:
    """What is signed: sha256 of the ASCII bytes of the base64 payload string."""
    return hashlib.sha256(payload.encode("ascii")).digest()


def _major_minor(version: str) -> tuple[int, int] | None:
    match = _MAJOR_MINOR.match(version)
    return (int(match[1]), int(match[2])) if match else None


def base64_chars(size: int) -> int:
    """Characters of padded base64 for `size` bytes (JSON-safe: the same count inside a JSON string)."""
    return 4 * ((size + 2) // 3)


def sealed_size(topic: str, body: bytes) -> int:
    """Bytes `seal` would make of `body` for `topic` now (without signing it or building the envelope)."""
    return _empty_envelope_bytes(topic) - 1 + len(str(time.time_ns())) + base64_chars(len(body))


@functools.lru_cache(maxsize=8)
def _empty_envelope_bytes(topic: str) -> int:
    """An envelope for `topic` with an empty payload and timestamp 0 (one digit), as `seal` writes it."""
    envelope = Envelope(
        payload="",
        topic=topic,
        version=PROTOCOL_VERSION,
        protocol=PROTOCOL_NAME,
        timestamp=0,
        signature="0" * 2 * SIGNATURE_BYTES,
        recovery_id=1,
    )
    return len(envelope.model_dump_json().encode("utf-8"))


def seal(identity: Identity, topic: str, body: bytes, now_ns: int | None = None) -> bytes:
    """Envelope `body` for `topic`, signed by `identity`, as compact UTF-8 JSON."""
    payload = base64.b64encode(body).decode("ascii")
    signature, recovery_id = identity.sign(payload_digest(payload))
    envelope = Envelope(
        payload=payload,
        topic=topic,
        version=PROTOCOL_VERSION,
        protocol=PROTOCOL_NAME,
        timestamp=time.time_ns() if now_ns is None else now_ns,
        signature=signature.hex(),
        recovery_id=recovery_id,
    )
    data = envelope.model_dump_json().encode("utf-8")
    if len(data) > MAX_MESSAGE_BYTES:
        raise EnvelopeError(
            "too_large",
            f"envelope is {len(data)} bytes, over the {MAX_MESSAGE_BYTES}-byte limit",
        )
    return data


def _parse(data: bytes) -> Envelope:
    try:
        return Envelope.model_validate_json(data)
    except ValidationError as e:
        first = e.errors()[0]
        if first["type"] == "json_invalid":
            raise EnvelopeError("not_json", f"envelope is not UTF-8 JSON: {first['msg']}") from e
        where = ".".join(str(part) for part in first["loc"]) or "envelope"
        raise EnvelopeError("bad_field", f"envelope field {where}: {first['msg']}") from e


def _check_header(envelope: Envelope, topic: str, now_ns: int) -> None:
    if envelope.protocol != PROTOCOL_NAME:
        raise EnvelopeError(
            "protocol_mismatch",
            f"protocol {envelope.protocol!r} is not {PROTOCOL_NAME!r}",
        )
    theirs = _major_minor(envelope.version)
    if theirs is None or theirs != _major_minor(PROTOCOL_VERSION):
        raise EnvelopeError(
            "version_mismatch",
            f"version {envelope.version!r} is not compatible with {PROTOCOL_VERSION}",
        )
    if envelope.topic != topic:
        raise EnvelopeError(
            "topic_mismatch",
            f"envelope topic {envelope.topic!r} arrived on topic {topic!r}",
        )
    if now_ns - envelope.timestamp > MAX_AGE_NS:
        age_s = (now_ns - envelope.timestamp) / 1e9
        raise EnvelopeError("stale", f"envelope is {age_s:.0f} s old (limit 600 s)")
    if envelope.timestamp - now_ns > MAX_SKEW_NS:
        ahead_s = (envelope.timestamp - now_ns) / 1e9
        raise EnvelopeError("future", f"envelope is {ahead_s:.0f} s in the future (limit 60 s)")


def _decode_payload(payload: str) -> bytes:
    """Decode canonical padded standard base64 (what every standard encoder writes)."""
    try:
        encoded = payload.encode("ascii")
        body = base64.b64decode(encoded, validate=True)
    except (UnicodeEncodeError, binascii.Error) as e:
        raise EnvelopeError("bad_base64", f"payload is not padded standard base64: {e}") from e
    if base64.b64encode(body) != encoded:  # stray padding or non-zero trailing bits
        raise EnvelopeError("bad_base64", "payload is not canonical padded standard base64")
    return body


def open_envelope(data: bytes, topic: str, now_ns: int | None = None) -> SignedMessage:
    """Check an envelope that arrived on `topic` and return its body and sender.

    Raises EnvelopeError (and nothing else) when any check fails.
    Cheap checks run first; signature recovery last.
    """
    if len(data) > MAX_MESSAGE_BYTES:
        raise EnvelopeError(
            "too_large",
            f"message is {len(data)} bytes, over the {MAX_MESSAGE_BYTES}-byte limit",
        )
    envelope = _parse(data)
    body = _decode_payload(envelope.payload)
    _check_header(envelope, topic, time.time_ns() if now_ns is None else now_ns)
    try:
        sender_key = recover_public_key(
            payload_digest(envelope.payload),
            bytes.fromhex(envelope.signature),
            envelope.recovery_id,
        )
    except SignatureError as e:
        raise EnvelopeError("bad_signature", str(e)) from e
    return SignedMessage(
        sender=address_of(sender_key), topic=envelope.topic, body=body, envelope=envelope, sender_key=sender_key
    )
