"""What a remote engine can cost the node: answers are capped in bytes, requests in wall-clock time.

The engine is a real HTTP server on 127.0.0.1 (tests/support/http_server.py) that floods
(a 50 MiB answer) or trickles (one byte a second)."""

from __future__ import annotations

import asyncio
import json
import time
import tracemalloc
from collections.abc import Iterator

import pytest

from models.remote.endpoint import (
    HEALTH_TIMEOUT,
    MAX_RESPONSE_BYTES,
    EngineResponseTooLargeError,
    EngineUnavailableError,
)
from models.requests import ChatMessage, GenerationRequest
from tests.support.http_server import LocalServer, Route
from tests.support.remote_engines import ENGINE_MODEL, chat_answer, open_remote

HELLO = [ChatMessage(role="user", content="Say hello.")]
MODELS = json.dumps({"object": "list", "data": [{"id": ENGINE_MODEL, "object": "model"}]}).encode()
FLOOD = json.dumps({"data": [{"id": "x" * (50 * 1024 * 1024)}]}).encode()  # a 50 MiB JSON answer
CHAT = json.dumps(chat_answer()).encode()


@pytest.fixture
def engine() -> Iterator[LocalServer]:
    server = LocalServer({"/v1/models": Route(body=MODELS), "/v1/chat/completions": Route(body=CHAT)})
    yield server
    server.close()


async def _until_hung_up(server: LocalServer) -> None:
    for _ in range(500):
        if server.hung_up:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the engine's answer was read to the end")


@pytest.mark.parametrize("content_length", [True, False], ids=["declared", "undeclared"])
async def test_a_50_mib_answer_is_dropped_at_the_cap(engine: LocalServer, content_length: bool) -> None:
    model = await open_remote(engine.url("/v1"))
    engine.routes["/v1/chat/completions"] = Route(body=FLOOD, content_length=content_length)
    tracemalloc.start()
    try:
        with pytest.raises(EngineResponseTooLargeError, match=f"more than {MAX_RESPONSE_BYTES} bytes"):
            await model.generate(GenerationRequest(messages=HELLO))
        _, peak = tracemalloc.get_traced_memory()
        assert peak < 3 * MAX_RESPONSE_BYTES  # a full read costs ~4x the 50 MiB answer
        await _until_hung_up(engine)
        assert engine.sent_bytes < len(FLOOD) // 2
        # The engine serves again: a normal answer goes through.
        engine.routes["/v1/chat/completions"] = Route(body=CHAT)
        assert (await model.generate(GenerationRequest(messages=HELLO))).text == "hello"
    finally:
        tracemalloc.stop()
        await model.close()


async def test_a_50_mib_model_list_marks_the_engine_down(engine: LocalServer) -> None:
    model = await open_remote(engine.url("/v1"))
    try:
        assert model.available
        engine.routes["/v1/models"] = Route(body=FLOOD, content_length=False)
        assert not await model.check_health()
        await _until_hung_up(engine)
    finally:
        await model.close()


async def test_a_trickling_model_list_ends_the_health_check_at_its_timeout(engine: LocalServer) -> None:
    model = await open_remote(engine.url("/v1"))
    try:
        # Each byte comes well within the per-read timeout; the whole list would take 2 minutes.
        engine.routes["/v1/models"] = Route(body=MODELS, trickle_s=1.0)
        started = time.monotonic()
        assert not await model.check_health()
        assert time.monotonic() - started < 6 * HEALTH_TIMEOUT
        await _until_hung_up(engine)
    finally:
        await model.close()


async def test_a_trickling_answer_ends_at_the_request_timeout(engine: LocalServer) -> None:
    model = await open_remote(engine.url("/v1"), request_timeout=2.0, retry_seconds=0.0)
    try:
        engine.routes["/v1/chat/completions"] = Route(body=CHAT, trickle_s=1.0)  # ~160 s for all of it
        started = time.monotonic()
        with pytest.raises(EngineUnavailableError, match="no complete answer within 2 s"):
            await model.generate(GenerationRequest(messages=HELLO))
        assert time.monotonic() - started < 30
        await _until_hung_up(engine)
    finally:
        await model.close()
