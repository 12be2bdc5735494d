"""The gossip gate: verdicts, and rejection logs that a spamming peer cannot flood."""

import structlog

from node.envelope import seal
from node.identity import Identity
from node.inbound import GossipGate


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


def test_a_valid_heartbeat_passes() -> None:
    identity = Identity.generate()
    body = (
        b'{"address":"' + identity.address.encode() + b'","peerId":"16Uiu2x","models":["m"],'
        b'"capacity":{"free":1,"max":1},"pendingTasks":0,"tps":{},"version":"0.3.0","timestamp":1}'
    )
    assert GossipGate().validate("heartbeat", seal(identity, "heartbeat", body))
