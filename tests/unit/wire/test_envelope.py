"""The signed envelope (PROTOCOL.md section 3): vector, round trip and every rejection."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from node.wire.envelope import Envelope, EnvelopeError, open_envelope, payload_digest, seal, sealed_size
from node.wire.identity import Identity
from node.wire.messages import decode_task
from node.wire.topics import MAX_MESSAGE_BYTES, PROTOCOL_NAME, PROTOCOL_VERSION
from tests.support.protocol_files import VECTORS

VECTOR = VECTORS["envelope_signature"]
NOW = 1_733_160_000_123_456_789
SECOND = 1_000_000_000
IDENTITY = Identity.from_hex(VECTOR["secret_hex"])
BODY = b'{"hello":"world"}'


def sealed(**changes: Any) -> bytes:
    """A valid task envelope made at NOW, with some JSON fields replaced."""
    obj = json.loads(seal(IDENTITY, "task", BODY, now_ns=NOW))
    obj.update(changes)
    return json.dumps(obj).encode()


def reason_of(data: bytes, topic: str = "task", now_ns: int = NOW) -> str:
    with pytest.raises(EnvelopeError) as info:
        open_envelope(data, topic, now_ns=now_ns)
    assert str(info.value)  # a human message
    return info.value.reason


def test_signature_vector_byte_for_byte() -> None:
    payload = VECTOR["payload_base64"]
    signature, recovery_id = IDENTITY.sign(payload_digest(payload))
    assert signature.hex() == VECTOR["signature_hex"]
    assert recovery_id == VECTOR["recovery_id"]


def test_vector_envelope_opens_to_vector_address() -> None:
    data = json.dumps(
        {
            "payload": VECTOR["payload_base64"],
            "topic": "task",
            "version": "0.3.0",
            "protocol": "dria",
            "timestamp": NOW,
            "signature": VECTOR["signature_hex"],
            "recovery_id": VECTOR["recovery_id"],
        }
    ).encode()
    message = open_envelope(data, "task", now_ns=NOW)
    assert message.sender == VECTORS["identity"]["address_hex"]
    assert message.body == base64.b64decode(VECTOR["payload_base64"])
    assert decode_task(message.body).task_id == "vector-task-1"


def test_seal_open_round_trip() -> None:
    identity = Identity.generate()
    data = seal(identity, "results", BODY, now_ns=NOW)
    assert b" " not in data  # compact JSON
    obj = json.loads(data)
    assert set(obj) == {
        "payload",
        "topic",
        "version",
        "protocol",
        "timestamp",
        "signature",
        "recovery_id",
    }
    assert (obj["protocol"], obj["version"], obj["timestamp"]) == (
        PROTOCOL_NAME,
        PROTOCOL_VERSION,
        NOW,
    )
    message = open_envelope(data, "results", now_ns=NOW + 5 * SECOND)
    assert (message.sender, message.topic, message.body) == (identity.address, "results", BODY)
    assert message.envelope.timestamp == NOW


def test_seal_uses_the_clock_by_default() -> None:
    message = open_envelope(seal(IDENTITY, "heartbeat", b""), "heartbeat")
    assert message.body == b"" and message.sender == IDENTITY.address


def test_tampered_payload_is_attributed_to_another_key() -> None:
    """A recoverable signature cannot tell tampering apart from another signer: the
    recovered sender changes, so whoever checks the sender rejects it."""
    other_body = base64.b64encode(b'{"hello":"there"}').decode()
    message = open_envelope(sealed(payload=other_body), "task", now_ns=NOW)
    assert message.sender != IDENTITY.address


def test_signature_by_another_key_recovers_a_different_address() -> None:
    other = Identity.generate()
    message = open_envelope(seal(other, "task", BODY, now_ns=NOW), "task", now_ns=NOW)
    assert message.sender == other.address != IDENTITY.address


def test_unrecoverable_signature() -> None:
    assert reason_of(sealed(signature="00" * 64)) == "bad_signature"
    assert reason_of(sealed(signature="ff" * 64)) == "bad_signature"  # r, s >= group order


def test_wrong_topic() -> None:
    assert reason_of(sealed(), topic="results") == "topic_mismatch"
    assert reason_of(sealed(topic="results")) == "topic_mismatch"


def test_stale_and_future_timestamps() -> None:
    data = sealed()
    assert open_envelope(data, "task", now_ns=NOW + 600 * SECOND).sender == IDENTITY.address
    assert reason_of(data, now_ns=NOW + 601 * SECOND) == "stale"
    assert open_envelope(data, "task", now_ns=NOW - 60 * SECOND).sender == IDENTITY.address
    assert reason_of(data, now_ns=NOW - 61 * SECOND) == "future"


@pytest.mark.parametrize("payload", ["not base64!", "QUJD=", "QUJ", "QUJD\n", "QR==", "QUJD====", "-_-_", "Y\u00e9Q="])
def test_bad_base64(payload: str) -> None:
    assert reason_of(sealed(payload=payload)) == "bad_base64"


def test_wrong_protocol() -> None:
    assert reason_of(sealed(protocol="other")) == "protocol_mismatch"


@pytest.mark.parametrize("version", ["0.4.0", "1.3.0", "0.2.9", "0.30.0", "0.3x", "x.y.z", ""])
def test_wrong_major_minor_version(version: str) -> None:
    assert reason_of(sealed(version=version)) == "version_mismatch"


# Digits past Python's int-from-text limit (4,300), or digits of another script that int() reads as 0 and 3:
# each is a version this node does not speak, refused with its reason (never a ValueError out of the check).
@pytest.mark.parametrize(
    "version",
    ["0" * 5000 + ".3.0", "0." + "0" * 4999 + "3.0", "0" * 64 + ".3.0", "\u0660.\u0663.0", "\uff10.\uff13.0"],
    ids=["major_5000_digits", "minor_5000_digits", "major_64_digits", "arabic_indic_digits", "fullwidth_digits"],
)
def test_versions_of_odd_digits_are_a_mismatch(version: str) -> None:
    assert reason_of(sealed(version=version)) in ("version_mismatch", "bad_field")


@pytest.mark.parametrize("version", ["0.3.1", "0.3.17", "0.3.0-rc1", "0.3"])
def test_same_major_minor_other_patch_accepted(version: str) -> None:
    assert open_envelope(sealed(version=version), "task", now_ns=NOW).sender == IDENTITY.address


@pytest.mark.parametrize("data", [b"", b"{", b"not json", b"\xff\xfe{}", b"[" * 10_000])
def test_not_json(data: bytes) -> None:
    assert reason_of(data) == "not_json"


@pytest.mark.parametrize("field", ["payload", "topic", "version", "protocol", "timestamp", "signature", "recovery_id"])
def test_missing_field(field: str) -> None:
    obj = json.loads(sealed())
    del obj[field]
    assert reason_of(json.dumps(obj).encode()) == "bad_field"


@pytest.mark.parametrize(
    "changes",
    [
        {"timestamp": str(NOW)},
        {"timestamp": float(NOW)},
        {"timestamp": True},
        {"timestamp": -1},
        {"recovery_id": True},
        {"recovery_id": "0"},
        {"recovery_id": 2},
        {"payload": 5},
        {"topic": None},
        {"signature": "ab"},
        {"signature": "zz" * 64},
    ],
)
def test_wrong_type_or_value(changes: dict[str, Any]) -> None:
    assert reason_of(sealed(**changes)) == "bad_field"


def test_not_an_object() -> None:
    assert reason_of(b"[1, 2]") == "bad_field"
    assert reason_of(b'"text"') == "bad_field"


def test_unknown_fields_are_ignored() -> None:
    assert open_envelope(sealed(extra={"a": 1}), "task", now_ns=NOW).body == BODY


def test_too_large() -> None:
    with pytest.raises(EnvelopeError) as info:
        seal(IDENTITY, "task", b"x" * MAX_MESSAGE_BYTES, now_ns=NOW)
    assert info.value.reason == "too_large"
    assert reason_of(b" " * (MAX_MESSAGE_BYTES + 1)) == "too_large"
    # the largest body that fits still opens
    body = b"y" * (MAX_MESSAGE_BYTES * 3 // 4 - 400)
    data = seal(IDENTITY, "task", body, now_ns=NOW)
    assert len(data) <= MAX_MESSAGE_BYTES
    assert open_envelope(data, "task", now_ns=NOW).body == body


def test_envelope_model_is_strict() -> None:
    with pytest.raises(ValueError):
        Envelope.model_validate({**json.loads(sealed()), "timestamp": "1"})


def test_sealed_size_is_the_size_seal_makes() -> None:
    identity = Identity.generate()
    for topic in ("task", "results", "heartbeat"):
        for size in (0, 1, 2, 3, 4, 100, 1001, 70_000):
            body = b'\x00"' * (size // 2) + b"x" * (size % 2)  # bytes JSON would escape: base64 never does
            assert sealed_size(topic, body) == len(seal(identity, topic, body))
