"""A real gateway over HTTP on 127.0.0.1 in front of one real libp2p peer that speaks protocol 0.4 as a
node would (tests/support/streaming_peer.py), fed what a hostile caller or a dishonest node sends: each
is a clear 4xx or 502 naming the problem, never a 500 or a broken stream."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from node.wire.identity import Identity
from node.wire.topics import MAX_MESSAGE_BYTES
from tests.support.gateway_net import gateway_over_streaming_peer
from tests.support.streaming_peer import StreamingPeer
from workflows import Simple

ASK = [{"role": "user", "content": "Hi"}]
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
DEEP = "[" * 5000 + "]" * 5000  # JSON nested deeper than Python's recursion limit


@asynccontextmanager
async def gateway_over(peer: StreamingPeer, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of a gateway (no API keys) that has seen the peer's heartbeat."""
    async with gateway_over_streaming_peer(peer, tmp_path) as gateway:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
            yield http


def sdk_post(node: str, numbers: int) -> dict[str, Any]:
    """What Dria's SDK posts, its workflow's memory holding `numbers` times `1e9` (3 characters that a
    task body writes as 12: `1000000000.0`)."""
    workflow = Simple().workflow(prompt="Hi") | {"external_memory": {"n": "NUMBERS"}}
    data = {
        "taskId": "a" * 32,
        "input": {"workflow": workflow, "model": ["m"]},
        "pickedNodes": [node],
        "deadline": (datetime.now(UTC) + timedelta(seconds=300)).isoformat(),
        "publicKey": Identity.generate().public_key_uncompressed.hex()[2:],
    }
    text = json.dumps(data, separators=(",", ":")).replace('"NUMBERS"', "[" + ",".join(["1e9"] * numbers) + "]")
    return {"value": {"payload": base64.b64encode(text.encode()).decode()}}


async def test_a_task_too_large_for_the_network_is_refused_before_any_node_sees_it(tmp_path: Path) -> None:
    peer = StreamingPeer([], "ok")
    big = "x" * MAX_MESSAGE_BYTES  # within the body limit, but no envelope can carry it
    async with gateway_over(peer, tmp_path) as http:
        task = {"workflow": Simple().workflow(prompt="Hi"), "models": ["m"], "prompt": big}
        answer = await http.post("/v1/tasks", json=task)
        assert answer.status_code == 413, answer.text
        assert "over the network's limit of 262144 bytes" in answer.json()["detail"]
        small = {"workflow": Simple().workflow(prompt="Hi"), "models": ["m"]}
        answer = await http.post("/v1/tasks:batch", json={"tasks": [small, task]})
        assert answer.status_code == 413 and answer.json()["detail"].startswith("tasks[1]: "), answer.text
        for stream in (False, True):
            chat = {"model": "m", "messages": [{"role": "user", "content": big}], "stream": stream}
            answer = await http.post("/v1/chat/completions", json=chat)
            assert answer.status_code == 413, answer.text
            assert answer.json()["error"]["code"] == "request_too_large", answer.text
        # Under the SDK's payload limit (about 160 KB), but the task it becomes is about four times as large.
        answer = await http.post("/rpc/task", json=sdk_post(peer.identity.address, 40_000))
        assert answer.status_code == 422 and "over the network's limit" in answer.json()["detail"], answer.text
        assert (await http.get("/v1/reputation")).json()["nodes"] == []  # no node was marked for it
        assert peer.streamed == []  # none reached the node
        answer = await http.post("/v1/chat/completions", json={"model": "m", "messages": ASK})
        assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"] == "ok"


async def test_a_task_nested_deeper_than_nodes_read_is_refused_as_the_callers_error(tmp_path: Path) -> None:
    # 300 levels: a 500 and a 70-line traceback (pydantic could not serialize it); 200: sent, and refused
    # by every node (their JSON parser reads less deep).
    peer = StreamingPeer([], "ok")
    async with gateway_over(peer, tmp_path) as http:
        for depth in (200, 300):
            nested: object = "x"
            for _ in range(depth):
                nested = [nested]
            workflow = {**Simple().workflow(prompt="Hi"), "external_memory": {"deep": nested}}
            answer = await http.post("/v1/tasks", json={"workflow": workflow, "models": ["m"]})
            assert answer.status_code == 422 and "cannot be sent" in answer.json()["detail"], answer.text
            sdk = sdk_post(peer.identity.address, 1)
            payload = json.loads(base64.b64decode(sdk["value"]["payload"]))
            payload["input"]["workflow"]["external_memory"] = {"deep": nested}
            sdk["value"]["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
            answer = await http.post("/rpc/task", json=sdk)
            assert answer.status_code == 422 and "cannot be sent" in answer.json()["detail"], answer.text
        assert peer.streamed == []  # none reached the node


@pytest.mark.parametrize(
    ("stats", "usage"),
    [
        ({"promptTokens": "many", "completionTokens": [1]}, (0, 0)),
        ({"promptTokens": -3, "completionTokens": -7}, (0, 0)),
        ({"promptTokens": True, "completionTokens": 2.5}, (0, 0)),
        ({"promptTokens": 2**62, "completionTokens": 2**62}, (2**31 - 1, 2)),  # completion: at most the text's bytes
    ],
)
async def test_a_nodes_token_counts_are_counts_or_nothing(
    tmp_path: Path, stats: dict[str, Any], usage: tuple[int, int]
) -> None:
    async with gateway_over(StreamingPeer(["o"], "ok", stats=stats), tmp_path) as http:
        answer = await http.post("/v1/chat/completions", json={"model": "m", "messages": ASK})
        assert answer.status_code == 200, answer.text
        got = answer.json()["usage"]
        assert (got["prompt_tokens"], got["completion_tokens"]) == usage
        assert got["total_tokens"] == sum(usage)
        chat = {"model": "m", "messages": ASK, "stream": True, "stream_options": {"include_usage": True}}
        async with http.stream("POST", "/v1/chat/completions", json=chat) as streamed:
            events = [line async for line in streamed.aiter_lines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]", events
        assert json.loads(events[-2].removeprefix("data: "))["usage"]["completion_tokens"] == usage[1]


async def test_a_nodes_completion_tokens_are_at_most_the_requests_max_tokens(tmp_path: Path) -> None:
    """A node claiming more tokens than the request let it generate (a red team's claimed 90,000 for 16) is
    billed, and measured, as the request's bound."""
    async with gateway_over(StreamingPeer(["o"], "ok", stats={"completionTokens": 400}), tmp_path) as http:
        ask = {"model": "m", "messages": ASK, "max_tokens": 1}  # "ok": 2 bytes, so 2 before
        answer = await http.post("/v1/chat/completions", json=ask)
        assert answer.status_code == 200, answer.text
        assert answer.json()["usage"]["completion_tokens"] == 1
        chat = ask | {"stream": True, "stream_options": {"include_usage": True}}
        async with http.stream("POST", "/v1/chat/completions", json=chat) as streamed:
            events = [line async for line in streamed.aiter_lines() if line.startswith("data: ")]
        assert json.loads(events[-2].removeprefix("data: "))["usage"]["completion_tokens"] == 1


async def test_a_callers_tool_call_nested_past_the_recursion_limit_is_a_400(tmp_path: Path) -> None:
    async with gateway_over(StreamingPeer([], "ok"), tmp_path) as http:
        call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": DEEP}}
        chat = {"model": "m", "messages": [{"role": "assistant", "tool_calls": [call]}, *ASK]}
        answer = await http.post("/v1/chat/completions", json=chat)
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["param"] == "messages[0].tool_calls"


@pytest.mark.parametrize(
    "call",
    [
        DEEP,  # nested past the recursion limit
        json.dumps({"name": "f" * 1000, "arguments": {}}),
        json.dumps({"name": "", "arguments": {}}),
        # What no honest engine answers (workflows/tool_calls.py): a tool the caller never offered, arguments
        # that are no object, numbers JSON has not, a name with a NUL
        json.dumps({"name": "run_shell", "arguments": {"cmd": "rm -rf ~"}}),
        json.dumps({"name": "f", "arguments": [1, 2]}),
        '{"name": "f", "arguments": {"a": NaN}}',
        '{"name": "f", "arguments": 1e999}',
        json.dumps({"name": "f\u0000", "arguments": {}}),
    ],
)
async def test_a_nodes_malformed_tool_call_is_a_502_naming_it(tmp_path: Path, call: str) -> None:
    async with gateway_over(StreamingPeer([], call), tmp_path) as http:
        chat = {"model": "m", "messages": ASK, "tools": [TOOL]}
        answer = await http.post("/v1/chat/completions", json=chat)
        assert answer.status_code == 502 and "tool call" in answer.json()["error"]["message"], answer.text
        async with http.stream("POST", "/v1/chat/completions", json={**chat, "stream": True}) as streamed:
            events = [line async for line in streamed.aiter_lines() if line.startswith("data: ")]
        errors = [json.loads(e.removeprefix("data: ")).get("error") for e in events if e != "data: [DONE]"]
        assert "tool call" in errors[-1]["message"], events
