"""Property tests: whatever arrives from the network, only EnvelopeError / MessageError escape."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from node.wire.envelope import (
    EnvelopeError,
    SignedMessage,
    open_envelope,
    payload_digest,
    seal,
)
from node.wire.identity import Identity
from node.wire.messages import MessageError, decode_heartbeat, decode_result, decode_task

NOW = 1_733_160_000_123_456_789
TOPICS = ["task", "results", "heartbeat"]
DECODERS: list[Callable[[bytes], BaseModel]] = [decode_task, decode_result, decode_heartbeat]
IDENTITY = Identity.from_hex("33" * 32)
FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
    # Edges of the wire's int64 ranges, and numbers JSON does not have (json.dumps writes NaN, Infinity).
    | st.sampled_from([2**63 - 1, 2**63, -(2**63), 10**400, 1e308, float("inf"), float("-inf"), float("nan")])
    | st.sampled_from(["2025-04-03T10:05:00.123456+00:00", "2025-04-03T10:00:00.123456789Z", "9999-12-31T23:59:59Z"])
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=25,
)
small_json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


def open_or_reject(data: bytes, topic: str) -> SignedMessage | None:
    try:
        message = open_envelope(data, topic, now_ns=NOW)
    except EnvelopeError as e:
        assert e.reason and str(e)
        return None
    assert re.fullmatch(r"[0-9a-f]{40}", message.sender)
    assert message.topic == topic
    return message


def decode_all_or_reject(body: bytes) -> None:
    for decode in DECODERS:
        try:
            assert isinstance(decode(body), BaseModel)
        except MessageError as e:
            assert str(e)


@FUZZ
@given(data=st.binary(max_size=2048), topic=st.sampled_from(TOPICS))
def test_random_bytes(data: bytes, topic: str) -> None:
    assert open_or_reject(data, topic) is None  # random bytes are never a valid envelope
    decode_all_or_reject(data)


@FUZZ
@given(value=json_values, topic=st.sampled_from(TOPICS))
def test_random_json(value: Any, topic: str) -> None:
    data = json.dumps(value).encode()
    open_or_reject(data, topic)
    decode_all_or_reject(data)


def field(valid: Any) -> st.SearchStrategy[Any]:
    """Mostly the valid value, sometimes anything JSON, sometimes missing (the ... marker)."""
    return st.one_of(st.just(valid), st.just(valid), json_values, st.just(...))


@st.composite
def envelopes(draw: st.DrawFn) -> tuple[bytes, str]:
    body = draw(st.binary(max_size=256))
    topic = draw(st.sampled_from(TOPICS))
    payload = base64.b64encode(body).decode()
    signature, recovery_id = IDENTITY.sign(payload_digest(payload))
    valid = {
        "payload": payload,
        "topic": topic,
        "version": draw(st.sampled_from(["0.3.0", "0.3.9", "0.4.0", "1.0.0"])),
        "protocol": "dria",
        "timestamp": NOW + draw(st.integers(min_value=-700, max_value=100)) * 1_000_000_000,
        "signature": signature.hex(),
        "recovery_id": recovery_id,
    }
    obj = {name: draw(field(value)) for name, value in valid.items()}
    return json.dumps({k: v for k, v in obj.items() if v is not ...}).encode(), topic


@FUZZ
@given(envelope=envelopes(), arrival_topic=st.sampled_from(TOPICS))
def test_random_envelopes(envelope: tuple[bytes, str], arrival_topic: str) -> None:
    data, _ = envelope
    message = open_or_reject(data, arrival_topic)
    if message is not None:
        decode_all_or_reject(message.body)


body_fields = st.fixed_dictionaries(
    {},
    optional={
        name: small_json_values
        for name in [
            "taskId",
            "deadline",
            "input",
            "filter",
            "pickedNodes",
            "publicKey",
            "ciphertext",
            "error",
            "model",
            "stats",
            "address",
            "peerId",
            "models",
            "capacity",
            "pendingTasks",
            "pending_tasks",
            "tps",
            "version",
            "timestamp",
        ]
    },
)


@FUZZ
@given(body=body_fields, topic=st.sampled_from(TOPICS))
def test_signed_random_bodies(body: dict[str, Any], topic: str) -> None:
    """A valid envelope around a body with the right field names and random values."""
    message = open_or_reject(seal(IDENTITY, topic, json.dumps(body).encode(), now_ns=NOW), topic)
    assert message is not None and message.sender == IDENTITY.address
    decode_all_or_reject(message.body)


VALID_BODIES: list[tuple[Callable[[bytes], BaseModel], dict[str, Any]]] = [
    (
        decode_task,
        {
            "taskId": "t-1",
            "deadline": NOW,
            "input": {"workflow": {"tasks": []}, "model": ["*"], "prompt": "p"},
            "filter": {"hex": "00ff", "hashes": 3},
            "pickedNodes": [IDENTITY.address],
            "publicKey": IDENTITY.public_key_compressed.hex(),
        },
    ),
    (
        decode_result,
        {
            "taskId": "t-1",
            "ciphertext": "00ff",
            "model": "m",
            "stats": {
                "receivedAt": 1,
                "publishedAt": 2,
                "executionStartedAt": 3,
                "executionEndedAt": 4,
            },
        },
    ),
    (
        decode_result,
        {
            "taskId": "t-1",
            "error": "busy",
            "model": "m",
            "stats": {
                "receivedAt": "2025-04-03T10:00:00.101000000Z",
                "publishedAt": "2025-04-03T10:00:01.503000000Z",
                "executionStartedAt": "2025-04-03T10:00:00.102000000Z",
                "executionEndedAt": "2025-04-03T10:00:01.502000000Z",
            },
        },
    ),
    (
        decode_task,
        {
            "taskId": "t-2",
            "deadline": "2025-04-03T10:05:00.123456+00:00",
            "input": {"workflow": {"config": {"max_time": 5}}, "model": ["*"]},
            "publicKey": IDENTITY.public_key_compressed.hex(),
        },
    ),
    (
        decode_heartbeat,
        {
            "address": IDENTITY.address,
            "peerId": "16Uiu2x",
            "models": ["m"],
            "capacity": {"free": 1, "max": 2},
            "pendingTasks": 0,
            "pending_tasks": [0, 0],
            "tps": {"m": 1.5},
            "version": "0.3.0",
            "timestamp": NOW,
        },
    ),
]


@FUZZ
@given(data=st.data())
def test_one_field_of_a_valid_body_mutated(data: st.DataObject) -> None:
    """Replace or delete one (possibly nested) field of a valid body."""
    decode, valid = data.draw(st.sampled_from(VALID_BODIES))
    assert isinstance(decode(json.dumps(valid).encode()), BaseModel)
    body = json.loads(json.dumps(valid))
    target = body
    key = data.draw(st.sampled_from(sorted(target)))
    while isinstance(target[key], dict) and target[key] and data.draw(st.booleans()):
        target = target[key]
        key = data.draw(st.sampled_from(sorted(target)))
    if data.draw(st.booleans()):
        del target[key]
    else:
        target[key] = data.draw(json_values)
    try:
        assert isinstance(decode(json.dumps(body).encode()), BaseModel)
    except MessageError as e:
        assert str(e).split(":")[0] in ("task body", "result body", "heartbeat body")
