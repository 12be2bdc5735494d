"""Property tests of the node's intake path: whatever arrives, nothing but the typed errors escape.

- `node.wire.inbound.decode` raises only InboundError (random envelopes, signed near-valid bodies);
- `Acceptance.decide` never raises on a body that decodes, and answers Accept or Ignore;
- `workflows.parse_workflow` raises only WorkflowError subclasses (random JSON, mutated workflows).
"""

from __future__ import annotations

import base64
import json
import random
import time
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from node.daemon.acceptance import Accept, Acceptance, Ignore
from node.wire.envelope import payload_digest
from node.wire.identity import Identity
from node.wire.inbound import Inbound, InboundError, decode
from node.wire.messages import TaskBody
from node.wire.topics import PROTOCOL_NAME, PROTOCOL_VERSION, TOPICS
from workflows import Simple, Workflow, WorkflowError, parse_workflow

NOW = time.time_ns()
SIGNER = Identity.from_hex("41" * 32)
NODE = Identity.from_hex("42" * 32)
HOSTED = ["smollm2:135m", "qwen2.5:0.5b"]
FUZZ = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(["", "0", "smollm2:135m", "*", "!", "llamacpp", NODE.address, "0x" + NODE.address, "ab" * 64])
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=15,
)


def valid_task_body() -> dict[str, Any]:
    return {
        "taskId": "fuzz-task",
        "deadline": NOW + 60_000_000_000,
        "input": {"workflow": Simple().workflow("Hi", max_tokens=8), "model": ["smollm2:135m"], "prompt": "p"},
        "filter": {"hex": "ff" * 16, "hashes": 3},
        "pickedNodes": [NODE.address],
        "publicKey": SIGNER.public_key_compressed.hex(),
    }


@st.composite
def mutated(draw: st.DrawFn, value: Any, depth: int = 0) -> Any:
    """`value` with random parts dropped, replaced by random JSON, or added."""
    if draw(st.integers(0, 19)) == 0:
        return draw(json_values)
    if isinstance(value, dict) and depth < 6:
        out = {}
        for key, inner in value.items():
            action = draw(st.sampled_from(["keep", "keep", "keep", "mutate", "drop"]))
            if action != "drop":
                out[key] = draw(mutated(inner, depth + 1)) if action == "mutate" else inner
        if draw(st.booleans()):
            out[draw(st.text(max_size=8))] = draw(json_values)
        return out
    if isinstance(value, list) and depth < 6:
        items = [draw(mutated(item, depth + 1)) for item in value]
        if draw(st.booleans()):
            items.append(draw(json_values))
        return items
    return value


def signed_envelope(body: bytes, topic: str, timestamp: int, flip_recovery: bool) -> dict[str, Any]:
    payload = base64.b64encode(body).decode("ascii")
    signature, recovery_id = SIGNER.sign(payload_digest(payload))
    return {
        "payload": payload,
        "topic": topic,
        "version": PROTOCOL_VERSION,
        "protocol": PROTOCOL_NAME,
        "timestamp": timestamp,
        "signature": signature.hex(),
        "recovery_id": 1 - recovery_id if flip_recovery else recovery_id,
    }


def decode_or_reject(topic: str, data: bytes) -> Inbound | None:
    try:
        inbound = decode(topic, data, NOW)
    except InboundError as exc:
        assert exc.reason and str(exc)
        event(f"rejected: {exc.reason}")
        return None
    event("decoded")
    return inbound


def decide_never_raises(inbound: Inbound, offset_ns: int, allow_list: bool, seed: int) -> None:
    assert isinstance(inbound.body, TaskBody)
    intake = Acceptance(NODE.address, HOSTED, [SIGNER.address] if allow_list else None, rng=random.Random(seed))
    decision = intake.decide(inbound.sender, inbound.body, NOW + offset_ns)
    assert isinstance(decision, (Accept, Ignore))
    event(f"decision: {decision.reason if isinstance(decision, Ignore) else 'accept'}")
    if isinstance(decision, Accept):
        assert decision.model in HOSTED
    else:
        assert decision.reason


@FUZZ
@given(
    envelope=mutated(signed_envelope(b'{"taskId": "x"}', "task", NOW, False)),
    topic=st.sampled_from([*TOPICS, "bogus", ""]),
)
def test_decode_of_random_envelopes_raises_only_inbound_error(envelope: Any, topic: str) -> None:
    data = json.dumps(envelope).encode("utf-8")
    inbound = decode_or_reject(topic, data)
    assert inbound is None or inbound.signed.topic == topic


@FUZZ
@given(
    body=mutated(valid_task_body()),
    timestamp_offset_s=st.integers(-700, 100),
    flip_recovery=st.booleans(),
    decide_offset_ns=st.booleans().flatmap(
        lambda late: st.integers(61 * 10**9, 10**15) if late else st.integers(-(10**12), 59 * 10**9)
    ),
    allow_list=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_signed_near_valid_tasks_decode_or_reject_and_decide_never_raises(
    body: Any, timestamp_offset_s: int, flip_recovery: bool, decide_offset_ns: int, allow_list: bool, seed: int
) -> None:
    raw = json.dumps(body).encode("utf-8")
    envelope = signed_envelope(raw, "task", NOW + timestamp_offset_s * 1_000_000_000, flip_recovery)
    inbound = decode_or_reject("task", json.dumps(envelope).encode("utf-8"))
    if inbound is not None:
        decide_never_raises(inbound, decide_offset_ns, allow_list, seed)


@FUZZ
@given(data=st.binary(max_size=512), topic=st.sampled_from(TOPICS))
def test_random_bytes_under_a_valid_signature_are_bad_bodies(data: bytes, topic: str) -> None:
    envelope = signed_envelope(data, topic, NOW, False)
    inbound = decode_or_reject(topic, json.dumps(envelope).encode("utf-8"))
    if inbound is not None and topic == "task":
        decide_never_raises(inbound, 0, False, 0)


def parse_or_reject(raw: Any) -> None:
    try:
        assert isinstance(parse_workflow(raw), Workflow)
    except WorkflowError as exc:
        assert str(exc)


@FUZZ
@given(raw=json_values | st.text(max_size=200) | st.text(max_size=200).map(str.encode))
def test_parse_workflow_of_random_input_raises_only_workflow_errors(raw: Any) -> None:
    parse_or_reject(raw)


@FUZZ
@given(workflow=mutated(Simple().workflow("Hello", max_tokens=8)), as_text=st.booleans())
def test_parse_workflow_of_mutated_workflows_raises_only_workflow_errors(workflow: Any, as_text: bool) -> None:
    parse_or_reject(json.dumps(workflow) if as_text else workflow)


def test_parse_workflow_of_non_utf8_bytes_raises_a_workflow_error() -> None:
    parse_or_reject(b"\x80{}")


def test_parse_workflow_of_deeply_nested_text_raises_a_workflow_error() -> None:
    parse_or_reject("[" * 100_000 + "]" * 100_000)
