"""Remote models against real OpenAI-compatible engines on 127.0.0.1, running the real workflow engine.

- llama-cpp-python's own server (`python -m llama_cpp.server`, the test extra
  installs its dependencies) serving the test model; it takes JSON schemas as
  `{"type": "json_object", "schema": ...}` (structured_output = "json_object").
- upstream `llama-server`, when the benchmarks already built it (never built here).
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from benchmarks.llama_server import binary_path, running_server
from models.registry import Registry
from models.remote.benchmark import benchmark_remote
from models.remote.openai import RemoteModel
from models.requests import ChatMessage, EmbeddingRequest, GenerationRequest
from tests.support.model_file import SMOLLM2
from tests.support.remote_engines import ENGINE_MODEL, LlamaCppServer
from workflows import EngineOptions, Simple, parse_workflow, run_workflow

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]


@pytest.fixture(scope="module")
def llama_cpp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaCppServer]:
    server = LlamaCppServer(tmp_path_factory.mktemp("engine") / "engine.log")
    server.start()
    yield server
    server.stop()


def remote_spec(base_url: str, **fields: Any):
    entry = {"backend": "openai", "base_url": base_url, "retry_seconds": 5.0, **fields}
    return Registry.builtin().with_overrides({"remote:smol": entry}).get("remote:smol")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def model(llama_cpp_server: LlamaCppServer) -> AsyncIterator[RemoteModel]:
    spec = remote_spec(llama_cpp_server.base_url, model=ENGINE_MODEL, structured_output="json_object", max_concurrent=2)
    remote = await RemoteModel.open(spec, default_n_ctx=1024)
    yield remote
    await remote.close()


def one_task_workflow(operator: str, prompt: str, max_tokens: int = 64, **task: Any) -> dict[str, Any]:
    workflow = copy.deepcopy(Simple().workflow(prompt, max_tokens=max_tokens))
    workflow["tasks"][0].update(operator=operator, **task)
    return workflow


WEATHER_TOOL = {
    "mode": "custom",
    "name": "get_weather",
    "description": "The weather forecast of a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


async def test_chat_with_max_tokens_stop_and_temperature(model: RemoteModel) -> None:
    assert model.available
    messages = [
        ChatMessage(role="system", content="You are terse."),
        ChatMessage(role="user", content="Count from 1 to 20, separated by commas."),
    ]
    capped = await model.generate(GenerationRequest(messages=messages, max_tokens=5))
    assert capped.finish_reason == "length" and capped.completion_tokens == 5 and capped.prompt_tokens > 5
    stopped = await model.generate(GenerationRequest(messages=messages, max_tokens=60, stop=["5"]))
    assert "5" not in stopped.text and stopped.completion_tokens < 60
    again = await model.generate(GenerationRequest(messages=messages, max_tokens=5))
    assert again.text == capped.text  # temperature 0 is deterministic on the engine too
    sampled = await model.generate(GenerationRequest(messages=messages, max_tokens=5, temperature=1.0, seed=7))
    assert sampled.completion_tokens >= 1


async def test_a_generation_workflow_with_a_schema_answers_valid_json(model: RemoteModel) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    workflow = parse_workflow(
        one_task_workflow("generation", "Invent a person: name and age.", schema=json.dumps(schema))
    )
    result = await run_workflow(workflow, model, options=EngineOptions())
    answer = json.loads(result.text)
    assert isinstance(answer["name"], str) and isinstance(answer["age"], int)
    assert result.completion_tokens > 0


async def test_function_calling_on_a_remote_model(model: RemoteModel) -> None:
    workflow_dict = one_task_workflow("function_calling_raw", "What is the weather in Paris?")
    workflow_dict["config"].update(tools=[], custom_tools=[WEATHER_TOOL])
    result = await run_workflow(parse_workflow(workflow_dict), model, options=EngineOptions())
    call = json.loads(result.text)
    assert call["name"] == "get_weather" and isinstance(call["arguments"].get("city"), str)


async def test_embeddings_from_the_engine(model: RemoteModel) -> None:
    texts = ["The cat sat on the mat.", "A cat was sitting on a mat.", "Quarterly revenue grew by 4 percent."]
    vectors = await model.embed(EmbeddingRequest(texts=texts))
    assert len(vectors) == 3 and len(vectors[0]) == 576
    assert all(math.isclose(sum(x * x for x in v), 1.0, rel_tol=1e-6) for v in vectors)
    similar = sum(a * b for a, b in zip(vectors[0], vectors[1]))
    unrelated = sum(a * b for a, b in zip(vectors[0], vectors[2]))
    assert similar > unrelated


async def test_startup_benchmark_against_the_engine(model: RemoteModel) -> None:
    result = await benchmark_remote(model)
    assert result.generation_tps > 0 and result.prompt_tps > 0


@pytest.mark.skipif(not binary_path().exists(), reason="llama-server is not built (python -m benchmarks builds it)")
async def test_llama_server_with_json_schema_and_its_own_timings() -> None:
    with running_server(Path(SMOLLM2), parallel=2, threads=1) as url:
        remote = await RemoteModel.open(remote_spec(f"{url}/v1", max_concurrent=2), default_n_ctx=1024)
        try:
            schema = {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 20}},
                "required": ["city"],
            }
            result = await remote.generate(
                GenerationRequest(
                    messages=[ChatMessage(role="user", content="Name a city.")], max_tokens=40, json_schema=schema
                )
            )
            assert isinstance(json.loads(result.text)["city"], str)
            assert result.generation_seconds > 0
            workflow_dict = one_task_workflow("function_calling_raw", "What is the weather in Paris?")
            workflow_dict["config"].update(tools=[], custom_tools=[WEATHER_TOOL])
            call = json.loads((await run_workflow(parse_workflow(workflow_dict), remote)).text)
            assert call["name"] == "get_weather"
        finally:
            await remote.close()
