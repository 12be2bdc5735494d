"""The gateway as an OpenAI endpoint, driven by the official `openai` Python client against
two real nodes (SmolLM2 on llama.cpp) and a gateway on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import pytest_asyncio
from openai import AsyncOpenAI
from pydantic import BaseModel

from node.daemon.routes import DirectRoutes
from node.gateway.app import create_gateway_app
from node.gateway.server import Gateway
from node.gateway.settings import GatewaySettings
from node.ops.http_api import HttpServer
from tests.support.gateway_net import GatewayNet, gateway_net
from workflows import Simple

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

KEY = "openai-key-0123456789abcdef"
OTHER_KEY = "other-key-0123456789abcdef"
MODEL = "smollm2:135m"
WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@dataclass
class Net(GatewayNet):
    client: AsyncOpenAI


def gateway_settings(data_dir: Path, peers: list[str], **overrides: Any) -> GatewaySettings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "peers": peers,
        "port": 0,
        "api_keys": [KEY, OTHER_KEY],
        "default_timeout": 120,
    }
    values.update(overrides)
    return GatewaySettings.load(**values)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def net(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Net]:
    async with gateway_net(tmp_path_factory, gateway_settings, max_queue=32, direct_streams_per_peer=64) as base:
        client = AsyncOpenAI(base_url=f"{base.gateway.url}/v1", api_key=KEY, max_retries=0, timeout=180)
        try:
            yield Net(base.nodes, base.gateway, base.tmp, client)
        finally:
            await client.close()


@asynccontextmanager
async def other_gateway(net: Net, **overrides: Any) -> AsyncIterator[AsyncOpenAI]:
    """A second HTTP API with other settings over the same gateway service."""
    settings = gateway_settings(net.tmp, net.peers, **overrides)
    server = HttpServer(create_gateway_app(net.gateway.service, settings))
    await server.start("127.0.0.1", 0)
    client = AsyncOpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key=KEY, max_retries=0, timeout=180)
    try:
        yield client
    finally:
        await client.close()
        await server.stop()


def ask(text: str) -> Any:
    return [{"role": "user", "content": text}]


async def test_models_lists_what_live_nodes_advertise(net: Net) -> None:
    models = await net.client.models.list()
    [card] = [m for m in models.data if m.id == MODEL]
    assert card.object == "model"
    assert card.model_extra is not None and card.model_extra["nodes"] == 2


async def test_plain_completion(net: Net) -> None:
    completion = await net.client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": "You are terse."}, *ask("Name a colour.")],
        max_tokens=12,
        temperature=0,
        user="tester",
    )
    [choice] = completion.choices
    assert choice.message.role == "assistant"
    assert choice.message.content and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    assert completion.model == MODEL
    assert completion.system_fingerprint in net.addresses
    assert completion.usage is not None and 0 < completion.usage.completion_tokens <= 12
    assert completion.usage.prompt_tokens > 0
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens


# Nodes write progress frames once issue 22's node side (i-deltas: DirectRoutes.progress) is merged;
# until then a direct-delivery stream carries only the result, and this test has nothing to measure.
@pytest.mark.skipif(not hasattr(DirectRoutes, "progress"), reason="nodes do not write progress frames yet")
async def test_stream_sends_tokens_before_the_result_is_complete(net: Net) -> None:
    started = time.monotonic()
    stream = await net.client.chat.completions.create(
        model=MODEL,
        messages=ask("Write three sentences about the sea."),
        max_tokens=64,
        stream=True,
        stream_options={"include_usage": True},
    )
    arrivals: list[tuple[float, str]] = []
    finish: Any = None
    usage: Any = None
    async for chunk in stream:
        for choice in chunk.choices:
            if choice.delta.content:
                arrivals.append((time.monotonic() - started, choice.delta.content))
            if choice.finish_reason:
                finish = chunk
        if not chunk.choices:  # OpenAI's last chunk with include_usage: no choices, the usage
            usage = chunk.usage
    total = time.monotonic() - started
    assert len(arrivals) > 2, arrivals  # token by token, not one chunk at the end
    first_token = arrivals[0][0]
    assert first_token < arrivals[-1][0]
    assert finish is not None and finish.system_fingerprint in net.addresses
    assert finish.usage is None and usage is not None and usage.completion_tokens > 0
    text = "".join(piece for _, piece in arrivals)
    assert text.strip()
    print(f"\nstream: first token after {first_token:.3f} s, full answer after {total:.3f} s, {len(arrivals)} chunks")


async def test_stream_from_gossip_only_publisher_is_one_chunk(net: Net, tmp_path: Path) -> None:
    gateway = Gateway(gateway_settings(tmp_path, net.peers, delivery="gossip"))
    await gateway.start()
    try:
        deadline = time.monotonic() + 30
        while len(gateway.service.nodes()) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        async with AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key=KEY, max_retries=0, timeout=180) as client:
            stream = await client.chat.completions.create(
                model=MODEL, messages=ask("Say hello."), max_tokens=16, stream=True
            )
            contents = [c.choices[0].delta.content async for c in stream if c.choices and c.choices[0].delta.content]
        assert len(contents) == 1 and contents[0].strip()
    finally:
        await gateway.stop()


class City(BaseModel):
    country: str
    description: str


async def test_parse_with_a_pydantic_model(net: Net) -> None:
    completion = await net.client.beta.chat.completions.parse(
        model=MODEL,
        messages=ask("Give the country and a one-line description of the city Ankara as JSON."),
        response_format=City,
        max_tokens=80,
    )
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, City)
    assert parsed.country.strip()


async def test_json_cut_short_by_max_tokens_is_a_400_naming_max_tokens(net: Net) -> None:
    # json_object is any object: SmolLM2 keeps writing until max_tokens, the same error on every node. It was a
    # 502, which the OpenAI client retries (three tasks for one call); the caller's max_tokens is at fault.
    with pytest.raises(openai.BadRequestError) as caught:
        await net.client.chat.completions.create(
            model=MODEL,
            messages=ask("Describe a cat as a JSON object."),
            response_format={"type": "json_object"},
            max_tokens=12,
        )
    assert caught.value.status_code == 400
    error = error_of(caught.value)
    assert error["code"] == "max_tokens_too_small" and error["param"] == "max_tokens"
    assert "not complete JSON" in error["message"]


async def test_tool_call_is_returned_not_executed(net: Net) -> None:
    completion = await net.client.chat.completions.create(
        model=MODEL, messages=ask("What is the weather in Izmir right now?"), tools=[WEATHER_TOOL], max_tokens=60
    )
    [choice] = completion.choices
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert call.type == "function" and call.function.name == "get_weather"
    assert set(json.loads(call.function.arguments)) == {"city"}

    follow_up = await net.client.chat.completions.create(
        model=MODEL,
        messages=[
            *ask("What is the weather in Izmir right now?"),
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 31 degrees Celsius"},
        ],
        tools=[WEATHER_TOOL],
        tool_choice="none",
        max_tokens=40,
    )
    assert follow_up.choices[0].finish_reason in ("stop", "length")
    assert follow_up.choices[0].message.content


async def test_streamed_tool_call_arrives_whole(net: Net) -> None:
    stream = await net.client.chat.completions.create(
        model=MODEL, messages=ask("Weather in Paris?"), tools=[WEATHER_TOOL], max_tokens=60, stream=True
    )
    calls = [call async for chunk in stream for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices]
    assert [c.function.name for c in calls if c.function] == ["get_weather"]


def error_of(exc: openai.APIStatusError) -> dict[str, Any]:
    body = exc.response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    return dict(body["error"])


async def test_bad_key_is_401(net: Net) -> None:
    async with AsyncOpenAI(base_url=str(net.client.base_url), api_key="wrong-key-0123456789", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError) as caught:
            await bad.chat.completions.create(model=MODEL, messages=ask("hi"))
    assert error_of(caught.value)["type"] == "authentication_error"


async def test_unknown_model_is_404(net: Net) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await net.client.chat.completions.create(model="no-such-model:1b", messages=ask("hi"))
    error = error_of(caught.value)
    assert error["code"] == "model_not_found" and "no-such-model:1b" in error["message"]


async def test_embeddings_are_a_clear_404(net: Net) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await net.client.embeddings.create(model=MODEL, input="hello")
    assert "embeddings are not served" in error_of(caught.value)["message"]


async def test_invalid_requests_are_400(net: Net) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await net.client.chat.completions.create(model=MODEL, messages=ask("hi"), n=2)
    assert error_of(caught.value)["param"] == "n"
    with pytest.raises(openai.BadRequestError) as caught:
        await net.client.chat.completions.create(model=MODEL, messages=[{"role": "wizard", "content": "hi"}])  # type: ignore[list-item]
    assert error_of(caught.value)["param"].startswith("messages[0]")


async def test_a_nodes_invalid_prompt_is_400(net: Net) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await net.client.chat.completions.create(model=MODEL, messages=ask(""), max_tokens=8)
    error = error_of(caught.value)
    assert error["message"].startswith("Invalid prompt: ") and error["code"] == "invalid_prompt"


async def test_rate_limit_is_429(net: Net) -> None:
    async with other_gateway(net, rate_limit=1, rate_burst=1) as client:
        await client.models.list()
        with pytest.raises(openai.RateLimitError) as caught:
            await client.models.list()
    assert error_of(caught.value)["type"] == "rate_limit_exceeded"
    assert caught.value.response.headers["Retry-After"]


async def test_unfinished_tasks_of_the_key_count_against_its_pending_limit(net: Net) -> None:
    async with other_gateway(net, max_pending=1) as client:
        long_task = {"workflow": Simple().workflow(prompt="Write a long story.", max_tokens=300), "models": [MODEL]}
        async with httpx.AsyncClient(base_url=str(client.base_url).removesuffix("/v1/"), timeout=90) as http:
            posted = await http.post("/v1/tasks", json=long_task, headers={"Authorization": f"Bearer {KEY}"})
            assert posted.status_code == 202, posted.text
            with pytest.raises(openai.RateLimitError) as caught:
                await client.chat.completions.create(model=MODEL, messages=ask("hi"), max_tokens=4)
            await http.get(
                f"/v1/tasks/{posted.json()['id']}", params={"wait": 60}, headers={"Authorization": f"Bearer {KEY}"}
            )
    assert "exceed the limit of 1" in error_of(caught.value)["message"]


async def test_timeout_is_504(net: Net) -> None:
    async with other_gateway(net, default_timeout=0.5) as client:
        with pytest.raises(openai.APIStatusError) as caught:
            await client.chat.completions.create(model=MODEL, messages=ask("Write a long story."), max_tokens=400)
    assert caught.value.status_code == 504, caught.value.response.text
    assert error_of(caught.value)["type"] == "timeout"


async def test_fifty_concurrent_requests_across_two_nodes_all_complete(net: Net) -> None:
    completions = await asyncio.gather(
        *(
            net.client.chat.completions.create(model=MODEL, messages=ask(f"Say the number {i}."), max_tokens=8)
            for i in range(50)
        )
    )
    assert all(c.choices[0].message.content is not None for c in completions)
    assert {c.system_fingerprint for c in completions} == net.addresses


async def test_openapi_documents_the_routes(net: Net) -> None:
    async with httpx.AsyncClient(base_url=net.gateway.url) as http:
        paths = (await http.get("/openapi.json")).json()["paths"]
    assert {"/v1/chat/completions", "/v1/models", "/v1/embeddings"} <= set(paths)
