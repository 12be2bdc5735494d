"""A real node whose max_tokens_cap is below what a chat completion asks: the official `openai` client gets
finish_reason "length" (as OpenAI says for an answer cut short), plain and streamed, where the gateway, counting
tokens against the max_tokens asked, said "stop"."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from openai import AsyncOpenAI

from node.gateway.server import Gateway
from node.gateway.settings import GatewaySettings
from tests.support.cluster import dialable, node_settings, running_node

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

KEY = "finish-key-0123456789abcdef"
MODEL = "smollm2:135m"
CAP = 4  # the node's max_tokens_cap
ASKED = 64  # the max_tokens each request asks for
ASK = [{"role": "user", "content": "Count from one to fifty in words, separated by commas."}]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def client(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[AsyncOpenAI]:
    """An OpenAI client of a gateway in front of one node that generates at most CAP tokens."""
    async with running_node(node_settings(tmp_path_factory.mktemp("node"), max_tokens_cap=CAP)) as node:
        gateway = Gateway(
            GatewaySettings.load(
                data_dir=tmp_path_factory.mktemp("gw"),
                peers=[dialable(node)],
                port=0,
                api_keys=[KEY],
                default_timeout=120,
            )
        )
        await gateway.start()
        try:
            deadline = time.monotonic() + 30
            while not gateway.service.nodes() and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            async with AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key=KEY, max_retries=0, timeout=180) as openai:
                yield openai
        finally:
            await gateway.stop()


async def test_an_answer_cut_at_the_node_s_cap_finishes_for_length(client: AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=ASKED, temperature=0)
    [choice] = completion.choices
    assert completion.usage is not None and completion.usage.completion_tokens == CAP < ASKED
    assert choice.message.content and choice.finish_reason == "length"


async def test_a_streamed_answer_cut_at_the_node_s_cap_finishes_for_length(client: AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model=MODEL, messages=ASK, max_tokens=ASKED, stream=True, stream_options={"include_usage": True}
    )
    reasons: list[str] = []
    tokens = 0
    async for chunk in stream:
        reasons += [c.finish_reason for c in chunk.choices if c.finish_reason]
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    assert reasons == ["length"] and tokens == CAP
