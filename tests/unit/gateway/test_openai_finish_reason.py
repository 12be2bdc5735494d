"""`finish_reason` on the OpenAI routes, plain and streamed: the node's word (its result stat `finishReason`), which
alone tells a cut at its own max_tokens_cap; from a node that does not say, or says what the gateway does not
know, the token count against the max_tokens asked."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from node.gateway.openai_api.stream import finish_reason
from tests.support.gateway_net import gateway_over_streaming_peer
from tests.support.streaming_peer import StreamingPeer

TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}


def test_the_node_s_reason_comes_first_then_the_count() -> None:
    assert finish_reason(False, 3, 100, "length") == "length"  # cut at the node's cap, below the 100 asked
    assert finish_reason(False, 100, 100, "stop") == "stop"  # ended at its last allowed token
    assert finish_reason(False, 100, 100, None) == "length"  # a node that does not say
    assert finish_reason(False, 3, 100, None) == "stop"
    assert finish_reason(True, 3, 100, "length") == "tool_calls"


@asynccontextmanager
async def gateway_over(peer: StreamingPeer, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of a gateway (no API keys) that has seen the peer's heartbeat."""
    async with gateway_over_streaming_peer(peer, tmp_path) as gateway:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
            yield http


async def finish_reasons(http: httpx.AsyncClient, chat: dict[str, Any]) -> tuple[str, str]:
    """The finish reason of `chat` answered whole, and streamed."""
    answer = await http.post("/v1/chat/completions", json=chat)
    assert answer.status_code == 200, answer.text
    plain = answer.json()["choices"][0]["finish_reason"]
    async with http.stream("POST", "/v1/chat/completions", json=chat | {"stream": True}) as streamed:
        events = [line.removeprefix("data: ") async for line in streamed.aiter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]", events
    reasons = [c["finish_reason"] for e in events[:-1] for c in json.loads(e)["choices"] if c.get("finish_reason")]
    assert len(reasons) == 1, events
    return plain, reasons[0]


@pytest.mark.parametrize(
    ("stats", "max_tokens", "expected"),
    [
        ({"finishReason": "length"}, None, "length"),  # 1 token of the 250 asked: only the node knows
        ({"finishReason": "stop"}, 1, "stop"),  # all the tokens asked, yet ended by itself
        ({}, 1, "length"),  # a node that does not say: the count against max_tokens
        ({}, None, "stop"),
        ({"finishReason": "banana"}, 1, "length"),  # what the gateway does not know: the count again
        ({"finishReason": ["length"]}, None, "stop"),
        ({"finishReason": None}, None, "stop"),
    ],
)
async def test_the_finish_reason_is_the_node_s_when_it_says_one(
    tmp_path: Path, stats: dict[str, Any], max_tokens: int | None, expected: str
) -> None:
    chat: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "Hi"}]}
    if max_tokens is not None:
        chat["max_tokens"] = max_tokens
    async with gateway_over(StreamingPeer(["o"], "ok", tokens=1, stats=stats), tmp_path) as http:
        assert await finish_reasons(http, chat) == (expected, expected)


async def test_a_tool_call_is_tool_calls_whatever_the_node_says(tmp_path: Path) -> None:
    peer = StreamingPeer([], '{"name":"f","arguments":{}}', stats={"finishReason": "length"})
    chat = {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "tools": [TOOL]}
    async with gateway_over(peer, tmp_path) as http:
        assert await finish_reasons(http, chat) == ("tool_calls", "tool_calls")
