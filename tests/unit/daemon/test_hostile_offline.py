"""The hostile-input corpus (tests/support/hostile/) against the node's checks, offline:
every case gets its verdict from `decode` + `Acceptance.decide` alone (a running node: tests/e2e/test_hostile.py)."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pytest

from node.daemon.acceptance import Accept, Acceptance, Ignore
from node.publisher.heartbeat_claims import MAX_CAPACITY, MAX_TPS
from node.publisher.node_table import NodeTable
from node.wire.identity import Identity
from node.wire.inbound import InboundError, decode
from node.wire.messages import HeartbeatBody, TaskBody
from tests.support.hostile_corpus import DEFAULT_MODEL, Actors, Case, build, load_cases
from workflows import WorkflowError, parse_workflow

CASES = load_cases()
REQUIRED_CATEGORIES = {
    "invalid_json", "wrong_types", "missing_fields", "bad_base64", "bad_signature", "topic_mismatch",
    "protocol_version", "timestamps", "oversize", "nesting", "huge_strings", "task_id", "deadline",
    "public_key", "bloom_filter", "model_list", "workflow", "numbers", "heartbeat_values", "oversize_result",
}  # fmt: skip


def test_corpus_has_60_cases_in_every_required_category() -> None:
    counts = Counter(case.category for case in CASES)
    assert len(CASES) >= 60, counts
    assert REQUIRED_CATEGORIES <= set(counts), REQUIRED_CATEGORIES - set(counts)
    assert {case.expect.verdict for case in CASES} == {
        "reject",
        "ignore",
        "error_result",
        "result",
        "unsendable",
        "accept",
    }


def test_raw_cases_are_distinct_bytes() -> None:
    # Gossip message ids are content hashes: two identical raw cases would be one message.
    raws = [case.raw_text or case.raw_b64 for case in CASES if case.recipe is None]
    assert len(raws) == len(set(raws))


def params(cases: list[Case]) -> list[Any]:
    """One pytest param per case; a known bug makes it a strict xfail."""
    return [
        pytest.param(
            case, id=case.name, marks=[pytest.mark.xfail(strict=True, reason=case.known_bug)] if case.known_bug else []
        )
        for case in cases
    ]


@pytest.mark.parametrize("case", params(CASES))
def test_offline_verdict(case: Case) -> None:
    publisher, node = Identity.from_hex("31" * 32), Identity.from_hex("32" * 32)
    actors = Actors(publisher, Identity.from_hex("33" * 32), node.address)
    built = build(case, actors)
    expect = case.expect
    if expect.verdict == "unsendable":
        assert len(built.data) > 256 * 1024
        return
    now = time.time_ns()
    if expect.verdict == "reject":
        with pytest.raises(InboundError) as caught:
            decode(case.topic, built.data, now)
        assert caught.value.reason == expect.reason, str(caught.value)
        return
    inbound = decode(case.topic, built.data, now)
    if expect.verdict == "accept":  # another topic's valid message: a publisher's node table must cope with it
        assert isinstance(inbound.body, HeartbeatBody)
        table = NodeTable()
        table.update(inbound.sender, inbound.body, now=now / 1e9)
        for node in table.live(now=now / 1e9):
            assert 0 <= node.free <= MAX_CAPACITY and all(0 <= tps <= MAX_TPS for tps in node.tps.values())
        table.choose(["*"], now=now / 1e9)
        return
    decision = Acceptance(node.address, [DEFAULT_MODEL], [publisher.address]).decide(inbound.sender, inbound.body, now)  # type: ignore[arg-type]
    if expect.verdict == "ignore":
        assert isinstance(decision, Ignore) and decision.reason == expect.reason, decision
        return
    assert isinstance(decision, Accept), decision
    assert isinstance(inbound.body, TaskBody)
    try:  # a taken task's workflow is checked by the engine: only WorkflowError may escape
        parse_workflow(inbound.body.input.workflow)
    except WorkflowError as exc:
        assert expect.verdict == "error_result", f"the workflow is invalid ({exc}) but a result is expected"
