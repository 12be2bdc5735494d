"""Remote models (registry backend "openai"): registry entries, API keys, retries, cancellation, health.

The engine is `FaultEngine`, a real HTTP server on 127.0.0.1 whose answers each
test scripts; real engines are exercised in tests/e2e/test_remote_engines.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
import structlog

from models.benchmark import BenchResult
from models.registry import Registry, RegistryError
from models.remote.benchmark import RemoteBenchmarkCache
from models.remote.endpoint import EngineRequestError, EngineUnavailableError
from models.requests import (
    ChatMessage,
    ContextOverflowError,
    DeadlineExceededError,
    EmbeddingRequest,
    GenerationRequest,
    ModelLoadError,
    UnsupportedRequestError,
)
from models.store import ModelStore
from tests.support.remote_engines import (
    ENGINE_MODEL,
    FaultEngine,
    Scripted,
    chat_answer,
    open_remote,
    spec_of,
)

HELLO = [ChatMessage(role="user", content="Say hello.")]


# ------------------------------------------------------------------ registry
def test_registry_accepts_a_remote_entry_as_in_the_readme() -> None:
    spec = (
        Registry.builtin()
        .with_overrides(
            {
                "llama3.1:8b-instruct-fp16": {
                    "backend": "openai",
                    "base_url": "http://10.0.0.5:8000/v1",
                    "model": "meta-llama/Llama-3.1-8B-Instruct",
                    "api_key_env": "VLLM_KEY",
                    "max_concurrent": 64,
                }
            }
        )
        .get("llama3.1:8b-instruct-fp16")
    )
    assert spec.is_remote and spec.max_concurrent == 64 and spec.file_name == ""
    assert ModelStore(Path("/nonexistent")).locate(spec) is None


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"backend": "openai"}, "no base_url"),
        ({"backend": "openai", "base_url": "http://h/v1", "path": "/m.gguf"}, "cannot also have path"),
        ({"path": "/m.gguf", "base_url": "http://h/v1"}, 'need backend = "openai"'),
        ({"backend": "openai", "base_url": "ftp://h/v1"}, "base_url"),
        ({"backend": "openai", "base_url": "http://user:pw@h/v1"}, "base_url"),
        ({"backend": "openai", "base_url": "http://h/v1", "api_key": "k", "api_key_env": "K"}, "not both"),
        ({"backend": "vllm", "base_url": "http://h/v1"}, "backend"),
    ],
)
def test_registry_names_the_problem_of_a_bad_remote_entry(fields: dict[str, object], problem: str) -> None:
    with pytest.raises(RegistryError, match="'bad'") as info:
        Registry.builtin().with_overrides({"bad": fields})
    assert problem in str(info.value)


def test_api_key_is_hidden_in_reprs_and_logs(capsys: pytest.CaptureFixture[str]) -> None:
    spec = spec_of("http://127.0.0.1:9/v1", api_key="sk-very-secret")
    structlog.get_logger("t").info("spec", spec=spec)
    assert "sk-very-secret" not in repr(spec) and "sk-very-secret" not in str(spec.model_dump())
    out, err = capsys.readouterr()
    assert "spec" in out + err and "sk-very-secret" not in out + err


async def test_a_missing_key_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REMOTE_TEST_KEY", raising=False)
    with pytest.raises(ModelLoadError, match="REMOTE_TEST_KEY"):
        await open_remote("http://127.0.0.1:9/v1", api_key_env="REMOTE_TEST_KEY")


# ------------------------------------------------------------------ requests
async def test_request_carries_the_workflow_settings_and_the_key_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REMOTE_TEST_KEY", "sk-env-key")
    async with FaultEngine() as engine:
        model = await open_remote(engine.base_url, api_key_env="REMOTE_TEST_KEY", max_concurrent=3)
        try:
            assert (model.parallel, model.slots_free, model.queued, model.n_ctx) == (3, 3, 0, 1024)
            schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
            engine.script.append(Scripted(body=chat_answer('{"a": 1}', finish="length")))
            result = await model.generate(
                GenerationRequest(
                    messages=HELLO, max_tokens=17, temperature=0.5, stop=["\n\n"], seed=4, json_schema=schema
                )
            )
        finally:
            await model.close()
    assert (result.text, result.finish_reason, result.prompt_tokens, result.completion_tokens) == (
        '{"a": 1}',
        "length",
        7,
        3,
    )
    path, headers, body = engine.requests[-1]
    assert path == "/v1/chat/completions"
    assert headers["authorization"] == "Bearer sk-env-key"
    assert body["model"] == ENGINE_MODEL and body["messages"] == [{"role": "user", "content": "Say hello."}]
    assert (body["max_tokens"], body["temperature"], body["stop"], body["seed"]) == (17, 0.5, ["\n\n"], 4)
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": schema, "strict": False},
    }


async def test_regex_goes_as_guided_regex_only_where_the_entry_says_the_engine_can() -> None:
    async with FaultEngine() as engine:
        plain = await open_remote(engine.base_url)
        guided = await open_remote(engine.base_url, guided_regex=True)
        try:
            with pytest.raises(UnsupportedRequestError) as info:
                await plain.generate(GenerationRequest(messages=HELLO, regex=r"\d+"))
            # this node's engine: another node's may take it, so not `Invalid prompt: ` (PROTOCOL.md section 5)
            assert str(info.value).startswith("schema form not supported by openai")
            await guided.generate(GenerationRequest(messages=HELLO, regex=r"\d+"))
        finally:
            await plain.close()
            await guided.close()
    assert len(engine.requests) == 1 and engine.requests[0][2]["guided_regex"] == r"\d+"


async def test_max_tokens_that_leave_no_room_for_a_prompt_are_refused_before_the_request() -> None:
    async with FaultEngine() as engine:
        model = await open_remote(engine.base_url)  # a 1024-token context
        try:
            with pytest.raises(ContextOverflowError, match="1024-token context"):
                await model.generate(GenerationRequest(messages=HELLO, max_tokens=1024))
            await model.generate(GenerationRequest(messages=HELLO, max_tokens=1000))
        finally:
            await model.close()
    assert len(engine.requests) == 1  # the refused one never reached the engine


async def test_429_and_5xx_are_retried_with_backoff_then_succeed() -> None:
    async with FaultEngine() as engine:
        engine.script.extend([Scripted(429, headers={"retry-after": "0.3"}), Scripted(503), Scripted(502)])
        model = await open_remote(engine.base_url)
        try:
            started = time.monotonic()
            result = await model.generate(GenerationRequest(messages=HELLO))
            elapsed = time.monotonic() - started
        finally:
            await model.close()
    assert result.text == "hello" and len(engine.requests) == 4
    assert elapsed >= 0.3  # Retry-After was honoured


async def test_an_engine_that_keeps_failing_ends_in_a_transient_error_within_the_retry_budget() -> None:
    async with FaultEngine() as engine:
        engine.script.extend([Scripted(500)] * 100)
        model = await open_remote(engine.base_url, retry_seconds=1.5)
        try:
            started = time.monotonic()
            with pytest.raises(EngineUnavailableError) as info:
                await model.generate(GenerationRequest(messages=HELLO))
            assert time.monotonic() - started < 5
            assert not model.available
        finally:
            await model.close()
    message = str(info.value)
    assert "HTTP 500" in message and "Invalid prompt" not in message and "Say hello" not in message
    assert len(engine.requests) >= 2


async def test_a_refused_request_fails_at_once_without_the_engines_text() -> None:
    async with FaultEngine() as engine:
        engine.script.append(Scripted(400, body={"error": {"message": "prompt 'Say hello.' is bad"}}))
        model = await open_remote(engine.base_url)
        try:
            with pytest.raises(EngineRequestError) as info:
                await model.generate(GenerationRequest(messages=HELLO))
        finally:
            await model.close()
    assert "HTTP 400" in str(info.value) and "Say hello" not in str(info.value)
    assert len(engine.requests) == 1


async def test_redirects_are_not_followed_so_the_key_goes_to_no_other_host() -> None:
    async with FaultEngine() as engine, FaultEngine() as elsewhere:
        engine.script.append(Scripted(307, body={}, headers={"location": f"{elsewhere.base_url}/chat/completions"}))
        model = await open_remote(engine.base_url, api_key="sk-config-key")
        try:
            with pytest.raises(EngineRequestError):
                await model.generate(GenerationRequest(messages=HELLO))
        finally:
            await model.close()
    assert elsewhere.requests == []


async def test_cancelling_the_task_closes_the_http_request() -> None:
    async with FaultEngine() as engine:
        engine.script.append(Scripted(delay=30))
        model = await open_remote(engine.base_url)
        try:
            task = asyncio.create_task(model.generate(GenerationRequest(messages=HELLO)))
            while not engine.requests:
                await asyncio.sleep(0.02)
            assert model.slots_free == model.parallel - 1
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            for _ in range(250):
                if engine.disconnects:
                    break
                await asyncio.sleep(0.02)
            assert engine.disconnects == 1
            assert model.slots_free == model.parallel
            # The pool still serves the next request.
            assert (await model.generate(GenerationRequest(messages=HELLO))).text == "hello"
        finally:
            await model.close()


async def test_a_deadline_stops_a_slow_engine_request() -> None:
    async with FaultEngine() as engine:
        engine.script.append(Scripted(delay=30))
        model = await open_remote(engine.base_url)
        try:
            with pytest.raises(DeadlineExceededError):
                await model.generate(GenerationRequest(messages=HELLO, deadline_seconds=0.5))
            for _ in range(250):
                if engine.disconnects:
                    break
                await asyncio.sleep(0.02)
            assert engine.disconnects == 1
        finally:
            await model.close()


async def test_max_concurrent_bounds_requests_in_flight() -> None:
    async with FaultEngine() as engine:
        engine.script.extend([Scripted(body=chat_answer(), delay=0.5)] * 3)
        model = await open_remote(engine.base_url, max_concurrent=2)
        try:
            tasks = [asyncio.create_task(model.generate(GenerationRequest(messages=HELLO))) for _ in range(3)]
            while len(engine.requests) < 2:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)
            assert (len(engine.requests), model.slots_free, model.queued) == (2, 0, 1)
            await asyncio.gather(*tasks)
        finally:
            await model.close()


async def test_embeddings_are_pooled_and_normalised() -> None:
    async with FaultEngine() as engine:
        engine.script.extend(
            [
                Scripted(body={"data": [{"index": 0, "embedding": [0.0, 2.0]}]}),
                Scripted(body={"data": [{"index": 0, "embedding": [[3.0, 0.0], [3.0, 0.0]]}]}),  # per token: pooled
            ]
        )
        model = await open_remote(engine.base_url, max_concurrent=1)  # one at a time: answers in order
        try:
            vectors = await model.embed(EmbeddingRequest(texts=["a", "b"]))
            engine.script.append(Scripted(body={"data": []}))
            with pytest.raises(EngineRequestError, match="unknown form"):
                await model.embed(EmbeddingRequest(texts=["c"]))
        finally:
            await model.close()
    assert vectors == [[0.0, 1.0], [1.0, 0.0]]
    assert [(path, body["input"]) for path, _, body in engine.requests] == [
        ("/v1/embeddings", ["a"]),
        ("/v1/embeddings", ["b"]),
        ("/v1/embeddings", ["c"]),
    ]


# -------------------------------------------------------------------- health
async def test_an_engine_down_at_start_is_opened_unavailable() -> None:
    async with FaultEngine() as engine:
        base_url = engine.base_url
    model = await open_remote(base_url)  # nothing listens there any more
    try:
        assert not model.available
    finally:
        await model.close()


async def test_the_benchmark_is_cached_per_engine(tmp_path: Path) -> None:
    async with FaultEngine() as engine:
        model = await open_remote(engine.base_url)
        cache = RemoteBenchmarkCache(tmp_path / "benchmarks.json")
        try:
            first = await cache.measure(model)
            asked = len(engine.requests)
            second = await cache.measure(model)
        finally:
            await model.close()
    assert asked == 3 and len(engine.requests) == asked  # the second came from the cache
    assert first == second and isinstance(first, BenchResult) and first.generation_tps > 0
    assert json.loads((tmp_path / "benchmarks.json").read_text())
