"""A restarted gateway (its socket held the requests meanwhile) knows no node until their heartbeats come, ~3.4 s
after it joins: a chat completion then waits for them, up to JOINING_S after the start, instead of a 404 that
OpenAI's client never retries (a user's find). Past that window, a model no node serves is a 404 at once."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

import pytest

from node.gateway.openai_api.errors import OpenAIError
from node.gateway.openai_api.schemas import ChatCompletionRequest
from node.gateway.openai_api.service import JOINING_S, OpenAIService
from node.gateway.service import PendingCaps, TooManyPendingError
from node.gateway.settings import GatewaySettings

REQUEST = ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "hi"}]})


class Nodes:
    """The node table of a gateway that hears its first heartbeat at `heard_at` (loop time; None: never)."""

    def __init__(self, heard_at: float | None) -> None:
        self.heard_at = heard_at

    def serving(self, models: list[str]) -> bool:
        return self.heard_at is not None and asyncio.get_running_loop().time() >= self.heard_at


def service(started_at: float, heard_at: float | None, caps: PendingCaps | None = None) -> OpenAIService:
    gateway = SimpleNamespace(client=SimpleNamespace(nodes=Nodes(heard_at)), started_at=started_at)
    settings = GatewaySettings(peers=["/ip4/127.0.0.1/tcp/9/p2p/16Uiu2HAmSoBigzQ1Sv4wPG4aic3zZFbSpPYnbPAEsFFJmuJ8qetK"])
    return OpenAIService(cast(Any, gateway), settings, caps or PendingCaps())


async def test_a_request_in_the_first_seconds_waits_for_the_nodes_heartbeats() -> None:
    now = asyncio.get_running_loop().time()
    prepared = await asyncio.wait_for(service(started_at=now, heard_at=now + 0.5).prepare(REQUEST, "k"), 5)
    assert prepared.task.models == ["m"]
    assert asyncio.get_running_loop().time() - now >= 0.5


async def test_after_the_joining_window_a_model_no_node_serves_is_a_404_at_once() -> None:
    now = asyncio.get_running_loop().time()
    with pytest.raises(OpenAIError) as caught:
        await asyncio.wait_for(service(started_at=now - JOINING_S - 1, heard_at=None).prepare(REQUEST, "k"), 1)
    assert caught.value.status == 404 and caught.value.param == "model"
    with pytest.raises(OpenAIError):  # still joining: it waits the window out, then says so
        await asyncio.wait_for(service(started_at=now - JOINING_S + 0.3, heard_at=None).prepare(REQUEST, "k"), 2)


async def test_requests_waiting_for_the_heartbeats_count_against_the_pending_caps() -> None:
    # 300 requests for made-up models each waited the window out, uncounted (a reviewer's find).
    now = asyncio.get_running_loop().time()
    joining = service(started_at=now, heard_at=None, caps=PendingCaps(per_key=2, total=10))
    waiting = [asyncio.ensure_future(joining.prepare(REQUEST, "k")) for _ in range(2)]
    await asyncio.sleep(0.05)
    with pytest.raises(TooManyPendingError):
        await joining.prepare(REQUEST, "k")
    for future in waiting:
        future.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
    heard = service(started_at=now, heard_at=now + 0.2, caps=PendingCaps(per_key=1, total=10))
    await asyncio.wait_for(heard.prepare(REQUEST, "k"), 5)
    await asyncio.wait_for(heard.prepare(REQUEST, "k"), 5)  # its place came back once served
