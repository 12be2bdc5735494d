"""The result stat `finishReason` (an extra field, PROTOCOL.md section 5): written for a result that is one
generation's text, read back only as a value this node knows; anything else a node sends reads as unsaid."""

from __future__ import annotations

import json
from typing import Any

import pytest

from node.wire.identity import Identity
from node.wire.messages import Stats, decode_result, encode_body
from node.wire.results import FINISH_STAT, Output, result_body, result_finish_reason

KEY = Identity.generate().public_key_compressed.hex()
TIMES = {"received_at_ns": 1, "started_at_ns": 2, "ended_at_ns": 3}


@pytest.mark.parametrize("reason", ["stop", "length"])
def test_a_result_carries_its_finish_reason_beside_the_token_counts(reason: Any) -> None:
    body = result_body("t1", "m", Output("hi", KEY, 1, 2, finish_reason=reason), **TIMES)
    sent = json.loads(encode_body(body))["stats"]
    assert sent[FINISH_STAT] == reason and sent["completionTokens"] == 2
    assert result_finish_reason(decode_result(encode_body(body)).stats) == reason


def test_a_result_without_one_and_an_error_say_nothing() -> None:
    for outcome in (Output("hi", KEY, 1, 2), "model failed"):
        body = result_body("t1", "m", outcome, **TIMES)
        assert FINISH_STAT not in json.loads(encode_body(body))["stats"]
        assert result_finish_reason(body.stats) is None


@pytest.mark.parametrize("value", ["banana", "LENGTH", "length ", "tool_calls", "", 1, True, None, ["length"], {}])
def test_an_unknown_value_from_a_node_decodes_and_reads_as_unsaid(value: object) -> None:
    body = result_body("t1", "m", Output("hi", KEY, 1, 2), **TIMES)
    stats = json.loads(encode_body(body))["stats"] | {FINISH_STAT: value}
    wire = encode_body(body.model_copy(update={"stats": Stats.model_validate(stats)}))
    assert result_finish_reason(decode_result(wire).stats) is None  # the result itself is still valid
