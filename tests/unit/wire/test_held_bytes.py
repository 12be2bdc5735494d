"""`Inbound.held_bytes`: what a decoded message holds, measured against tracemalloc, for the budgets that
count decoded messages (the P2P layer's hand-off and held verdicts)."""

from __future__ import annotations

import gc
import json
import time
import tracemalloc
from typing import Any

import pytest

from node.wire.envelope import seal
from node.wire.identity import Identity
from node.wire.inbound import Inbound, decode
from node.wire.messages import json_values
from node.wire.topics import TASK_TOPIC
from workflows import Simple

PUBLISHER = Identity.generate()


def task_message(workflow: dict[str, Any]) -> bytes:
    body = {
        "taskId": "t1",
        "deadline": time.time_ns() + 600 * 10**9,
        "input": {"workflow": workflow, "model": ["*"]},
        "publicKey": PUBLISHER.public_key_compressed.hex(),
    }
    return seal(PUBLISHER, TASK_TOPIC, json.dumps(body, separators=(",", ":")).encode())


def decoded_with_its_memory(data: bytes) -> tuple[Inbound, int]:
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        inbound = decode(TASK_TOPIC, data)
        gc.collect()
        return inbound, tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(
    "workflow",
    [
        Simple().workflow("Tell me a story about a cat.", max_tokens=64),
        {"x": [[[]] for _ in range(30_000)]},  # 150 KB that decode to ~4 MB
        {"x": [{} for _ in range(40_000)]},
        {"x": ["ab"] * 30_000},
        {"x": {f"k{i}": 1.5 for i in range(15_000)}},
        {"x": {"a": {"b": [{"c": "d"}] * 8_000}}},
    ],
    ids=["small task", "nested lists", "objects", "short strings", "keys", "nested objects"],
)
def test_held_bytes_is_at_least_what_the_decoded_task_holds(workflow: dict[str, Any]) -> None:
    data = task_message(workflow)
    inbound, measured = decoded_with_its_memory(data)
    assert measured <= inbound.held_bytes <= 3 * measured, (len(data), measured, inbound.held_bytes)


def test_json_values_counts_keys_and_items() -> None:
    assert json_values({}) == 1
    assert json_values({"a": [1, 2, {"b": None}]}) == 1 + 1 + 1 + 2 + 1 + 1 + 1
