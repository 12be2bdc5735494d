"""The gossip gate: verdicts, and rejection logs that a spamming peer cannot flood; the consume loop."""

import asyncio
import base64
import json
from dataclasses import dataclass

import pytest
import structlog

from node.wire.envelope import payload_digest, seal
from node.wire.identity import CURVE_ORDER, Identity
from node.wire.inbound import GossipGate, Inbound, InboundError, consume, decode


def test_rejections_are_counted_each_time_but_logged_once_per_window() -> None:
    counted: list[tuple[str, str]] = []
    gate = GossipGate(on_reject=lambda topic, reason: counted.append((topic, reason)), log_window_s=60)
    with structlog.testing.capture_logs() as logs:
        verdicts = [gate.validate("task", b"not json") for _ in range(1000)]
        verdicts.append(gate.validate("results", b"{}"))
    assert not any(verdicts)
    assert counted.count(("task", "not_json")) == 1000  # metrics see every one
    rejected = [entry for entry in logs if entry["event"] == "message rejected"]
    assert [(e["topic"], e["reason"]) for e in rejected] == [("task", "not_json"), ("results", "bad_field")]


def test_suppressed_count_is_reported_when_the_window_reopens() -> None:
    gate = GossipGate(log_window_s=0.0)
    with structlog.testing.capture_logs() as logs:
        gate.validate("task", b"x")
        gate.validate("task", b"x")
    assert [e["not_logged_since"] for e in logs if e["event"] == "message rejected"] == [0, 0]


def test_a_failing_check_is_rejected_and_its_traceback_logged_once_per_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug a message's bytes trigger fires again for every copy a peer sends: one traceback a window."""

    def broken(topic: str, data: bytes, now_ns: int | None = None) -> Inbound:
        raise RuntimeError("a bug in a check")

    monkeypatch.setattr("node.wire.inbound.decode", broken)
    counted: list[tuple[str, str]] = []
    gate = GossipGate(on_reject=lambda topic, reason: counted.append((topic, reason)), log_window_s=60)
    with structlog.testing.capture_logs() as logs:
        verdicts = [gate.validate("task", b"{}") for _ in range(100)]
    assert not any(verdicts) and counted == [("task", "internal")] * 100
    assert [e["event"] for e in logs].count("validator failed") == 1


def heartbeat_body(address: str, peer_id: str) -> bytes:
    return (
        b'{"address":"' + address.encode() + b'","peerId":"' + peer_id.encode() + b'","models":["m"],'
        b'"capacity":{"free":1,"max":1},"pendingTasks":0,"tps":{},"version":"0.3.0","timestamp":1}'
    )


def test_a_valid_heartbeat_passes() -> None:
    identity = Identity.generate()
    assert GossipGate().validate(
        "heartbeat", seal(identity, "heartbeat", heartbeat_body(identity.address, identity.peer_id))
    )


def test_a_heartbeat_speaking_for_another_identity_is_rejected() -> None:
    signer, victim = Identity.generate(), Identity.generate()
    for address, peer_id, named in (
        (victim.address, signer.peer_id, "address"),
        ("0x" + victim.address.upper(), signer.peer_id, "address"),
        (signer.address, victim.peer_id, "peerId"),
        (signer.address, "16Uiu2x", "peerId"),
    ):
        with pytest.raises(InboundError, match=f"heartbeat body {named}") as caught:
            decode("heartbeat", seal(signer, "heartbeat", heartbeat_body(address, peer_id)))
        assert caught.value.reason == "identity_mismatch"
    with structlog.testing.capture_logs() as logs:
        assert not GossipGate().validate(
            "heartbeat", seal(signer, "heartbeat", heartbeat_body(victim.address, victim.peer_id))
        )
    assert [e["reason"] for e in logs if e["event"] == "message rejected"] == ["identity_mismatch"]


def test_high_s_twin_of_a_valid_signature_is_rejected() -> None:
    """(r, n - s) with the other recovery id verifies too: accepted, it would be a second message id."""
    identity = Identity.generate()
    envelope = json.loads(seal(identity, "task", b'{"taskId":"t"}'))
    signature = bytes.fromhex(envelope["signature"])
    high_s = (CURVE_ORDER - int.from_bytes(signature[32:], "big")).to_bytes(32, "big")
    twin = {**envelope, "signature": (signature[:32] + high_s).hex(), "recovery_id": 1 - envelope["recovery_id"]}
    import coincurve  # the twin is a valid signature of the same key: only the low-s rule refuses it

    recovered = coincurve.PublicKey.from_signature_and_message(
        signature[:32] + high_s + bytes([twin["recovery_id"]]), payload_digest(envelope["payload"]), hasher=None
    )
    assert recovered.format() == identity.public_key_compressed
    with pytest.raises(InboundError, match="high s") as caught:
        decode("task", json.dumps(twin).encode())
    assert caught.value.reason == "bad_signature"
    assert base64.b64decode(envelope["payload"]) == b'{"taskId":"t"}'


@dataclass(frozen=True)
class Queued:
    data: bytes
    validated: object = None


async def test_consume_skips_what_does_not_decode_and_outlives_a_failing_handler() -> None:
    identity = Identity.generate()
    valid = seal(identity, "heartbeat", heartbeat_body(identity.address, identity.peer_id))
    queue: asyncio.Queue[Queued] = asyncio.Queue()
    for data in (b"not json", valid, valid, valid):
        queue.put_nowait(Queued(data))
    handled: list[Inbound] = []
    errors: list[Exception] = []

    def handle(inbound: Inbound) -> None:
        handled.append(inbound)
        if len(handled) == 2:
            raise RuntimeError("a bug in the handler")

    loop = asyncio.create_task(consume(queue, "heartbeat", handle, errors.append))
    try:
        async with asyncio.timeout(5):
            while len(handled) < 3:
                await asyncio.sleep(0.01)
    finally:
        loop.cancel()
    assert [inbound.sender for inbound in handled] == [identity.address] * 3  # the invalid one never reached it
    assert [str(e) for e in errors] == ["a bug in the handler"]


def test_check_returns_what_validate_accepts_decoded() -> None:
    identity = Identity.generate()
    valid = seal(identity, "heartbeat", heartbeat_body(identity.address, identity.peer_id))
    gate = GossipGate()
    checked = gate.check("heartbeat", valid)
    assert isinstance(checked, Inbound) and checked.sender == identity.address
    assert gate.validate("heartbeat", valid) is True
    assert gate.check("heartbeat", b"not json") is None and gate.validate("heartbeat", b"not json") is False


async def test_consume_takes_the_validators_decoding_and_decodes_what_came_without_one() -> None:
    """A message that carries an Inbound from `GossipGate.check` is not decoded again (its bytes were)."""
    first, second = Identity.generate(), Identity.generate()
    sealed_first = seal(first, "heartbeat", heartbeat_body(first.address, first.peer_id))
    sealed_second = seal(second, "heartbeat", heartbeat_body(second.address, second.peer_id))
    checked = GossipGate().check("heartbeat", sealed_first)
    assert checked is not None
    queue: asyncio.Queue[Queued] = asyncio.Queue()
    queue.put_nowait(Queued(sealed_first, validated=checked))
    queue.put_nowait(Queued(sealed_second, validated=True))  # not an Inbound: decoded here
    handled: list[Inbound] = []
    loop = asyncio.create_task(consume(queue, "heartbeat", handled.append))
    try:
        async with asyncio.timeout(5):
            while len(handled) < 2:
                await asyncio.sleep(0.01)
    finally:
        loop.cancel()
    assert handled[0] is checked
    assert handled[1].sender == second.address


async def test_consume_logs_a_handler_failure_when_no_error_callback_is_given() -> None:
    identity = Identity.generate()
    queue: asyncio.Queue[Queued] = asyncio.Queue()
    queue.put_nowait(Queued(seal(identity, "heartbeat", heartbeat_body(identity.address, identity.peer_id))))

    def handle(inbound: Inbound) -> None:
        raise RuntimeError("a bug in the handler")

    with structlog.testing.capture_logs() as logs:
        loop = asyncio.create_task(consume(queue, "heartbeat", handle))
        async with asyncio.timeout(5):
            while not logs:
                await asyncio.sleep(0.01)
        assert not loop.done()  # still waiting for the next message
        loop.cancel()
    assert [(e["event"], e["topic"]) for e in logs] == [
        ("inbound message handler failed; the loop goes on", "heartbeat")
    ]
