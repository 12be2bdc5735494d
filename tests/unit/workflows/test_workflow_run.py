"""The protocol's example workflows and the run limits, on the real SmolLM2 runtime."""

from __future__ import annotations

import base64
import json
import time
from typing import Any, cast

import pytest

from models.batching import BatchedLlamaModel
from models.requests import Generation, GenerationRequest, TextSink
from node.wire.topics import CUT_SHORT_MARK
from tests.support.protocol_files import EXAMPLES
from workflows import (
    EngineOptions,
    LimitExceededError,
    Simple,
    WorkflowError,
    parse_workflow,
    run_workflow,
)
from workflows.errors import INVALID_PROMPT, public_error_text

# Keeps every generation short so the suite stays fast on 2 cores.
FAST = EngineOptions(max_tokens_cap=64)


def _example(name: str) -> dict[str, Any]:
    return json.loads((EXAMPLES / name).read_text())


@pytest.mark.parametrize("name", ["simple.json", "simple_omitted.json"])
async def test_simple_examples_answer(model: BatchedLlamaModel, name: str) -> None:
    result = await run_workflow(parse_workflow(_example(name)), model, prompt="What colour is the sky?", options=FAST)
    assert result.text.strip() and result.steps == 1
    assert 0 < result.completion_tokens <= 64 and result.prompt_tokens > 0


async def test_simple_omitted_uses_the_prompt_and_trims(model: BatchedLlamaModel) -> None:
    result = await run_workflow(
        parse_workflow(_example("simple_omitted.json")), model, prompt="What is the capital of France?", options=FAST
    )
    assert "Paris" in result.text and result.text == result.text.strip()


async def test_simple_builder_round_trip(model: BatchedLlamaModel) -> None:
    builder = Simple()
    result = await run_workflow(parse_workflow(builder.workflow("Name a colour.", max_tokens=16)), model)
    assert builder.parse_result(result.text) and result.completion_tokens <= 16


async def test_structured_example_returns_json_with_required_keys(model: BatchedLlamaModel) -> None:
    result = await run_workflow(parse_workflow(_example("structured.json")), model)
    facts = json.loads(result.text)
    assert isinstance(facts["country"], str) and isinstance(facts["description"], str)


async def test_loop_questions_returns_at_least_three_strings(model: BatchedLlamaModel) -> None:
    result = await run_workflow(parse_workflow(_example("loop_questions.json")), model, options=FAST)
    questions = json.loads(result.text)
    assert isinstance(questions, list) and len(questions) >= 3 and all(isinstance(q, str) for q in questions)
    assert questions[0] == "What is lava?" and result.steps == len(questions) - 1


async def test_sample_and_fallback_reaches_recover(model: BatchedLlamaModel) -> None:
    result = await run_workflow(parse_workflow(_example("sample_and_fallback.json")), model, options=FAST)
    picked, fruit = json.loads(result.text)
    assert picked in ("Colour: red", "Colour: green", "Colour: blue") and fruit.strip()
    assert result.steps == 3 and result.completion_tokens > 0  # pick, needs_missing (failed), recover


def _forever(max_time: float, max_steps: int, max_tokens: int, schema: dict[str, Any] | None = None) -> Any:
    return parse_workflow(
        {
            "config": {"max_steps": max_steps, "max_time": max_time, "max_tokens": max_tokens},
            "tasks": [
                {
                    "id": "again",
                    "messages": [{"role": "user", "content": "List numbers."}],
                    "operator": "generation",
                    "schema": json.dumps(schema) if schema else None,
                    "outputs": [{"type": "push", "key": "out", "value": "__result"}],
                }
            ],
            "steps": [{"source": "again", "target": "again"}],
            "return_value": {"input": {"type": "get_all", "key": "out"}},
        }
    )


async def _still_usable(model: BatchedLlamaModel) -> None:
    started = time.monotonic()
    result = await run_workflow(
        parse_workflow(_example("simple_omitted.json")), model, prompt="What is the capital of France?", options=FAST
    )
    assert "Paris" in result.text and time.monotonic() - started < 10


async def test_endless_loop_fails_with_max_steps(model: BatchedLlamaModel) -> None:
    with pytest.raises(LimitExceededError, match="max_steps") as excinfo:
        await run_workflow(_forever(max_time=60, max_steps=3, max_tokens=2), model)
    assert excinfo.value.limit == "max_steps" and "3 task executions" in str(excinfo.value)
    await _still_usable(model)


async def test_max_time_cancels_a_running_generation(model: BatchedLlamaModel) -> None:
    # The grammar forces 400 numbers: far more than one second of decoding.
    long_output = {"type": "array", "items": {"type": "integer"}, "minItems": 400, "maxItems": 400}
    started = time.monotonic()
    with pytest.raises(LimitExceededError, match="max_time") as excinfo:
        await run_workflow(_forever(max_time=1, max_steps=5, max_tokens=900, schema=long_output), model)
    elapsed = time.monotonic() - started
    assert excinfo.value.limit == "max_time" and "'again'" in str(excinfo.value)
    assert 1.0 <= elapsed < 2.0, elapsed
    await _still_usable(model)


async def test_operator_caps_apply(model: BatchedLlamaModel) -> None:
    with pytest.raises(LimitExceededError, match="max_steps"):
        await run_workflow(
            _forever(max_time=60, max_steps=50, max_tokens=2), model, options=EngineOptions(max_steps_cap=2)
        )


async def test_required_prompt_missing_names_the_problem(model: BatchedLlamaModel) -> None:
    with pytest.raises(WorkflowError, match=r"required input 'question' \(the task's prompt \(none was given\)\)"):
        await run_workflow(parse_workflow(_example("simple_omitted.json")), model)


def _one_generation(content: str, **task: Any) -> dict[str, Any]:
    workflow = Simple().workflow(content, max_tokens=8)
    workflow["tasks"][0].update(task)
    return workflow


async def test_a_regex_schema_whose_matches_are_not_json_answers(model: BatchedLlamaModel) -> None:
    schema = base64.b64encode(b"(yes|no)").decode()  # Dria's SDK form: base64 of a regex
    workflow = parse_workflow(_one_generation("Is the sky blue? Answer yes or no.", schema=schema))
    result = await run_workflow(workflow, model, options=FAST)
    assert result.text in ("yes", "no")  # was: "not complete JSON for the schema" on every node


async def test_a_lone_surrogate_escaped_in_memory_reaches_the_model_as_text(model: BatchedLlamaModel) -> None:
    workflow = _one_generation("Repeat: {{x}}")
    workflow["tasks"][0]["inputs"] = [{"name": "x", "required": True, "value": {"type": "read", "key": "x"}}]
    workflow["external_memory"] = {"x": '"\\ud800 and \\udfff"'}  # valid JSON text; decoded, no UTF-8
    result = await run_workflow(parse_workflow(workflow), model, options=FAST)
    assert result.text.strip() and result.steps == 1  # was: internal error (UnicodeEncodeError) on every node
    assert model.tokenize("a\ud800b")  # the runtime reads such text as a replacement character


class _CutShort:
    """A model stand-in whose every answer is JSON cut short by max_tokens; it records what it was allowed."""

    name = "cut"

    def __init__(self) -> None:
        self.allowed: list[int] = []

    async def generate(self, request: GenerationRequest, on_text: TextSink | None = None) -> Generation:
        self.allowed.append(request.max_tokens)
        return Generation(text='{"a": "', finish_reason="length", prompt_tokens=3, completion_tokens=request.max_tokens)


@pytest.mark.parametrize(
    ("asked", "cap", "advice", "deterministic"),
    [
        (3000, 120, "this node allows 120 of the 3000 asked", False),  # a node with a higher cap may do
        (50, 120, "50; raise it", True),  # the workflow's own max_tokens: as short on any node
        (None, 120, "this node allows 120 of the", False),  # none asked: each node has its own default
    ],
)
async def test_json_cut_short_names_the_limit_that_cut_it(
    asked: int | None, cap: int, advice: str, deterministic: bool
) -> None:
    for schema in (json.dumps({"type": "object"}), base64.b64encode(b'[a-z{}":]+').decode()):  # JSON, a regex
        workflow = _one_generation("Give JSON.", schema=schema)
        workflow["config"]["max_tokens"] = asked
        with pytest.raises(WorkflowError, match=r"not (complete JSON for|a complete match of) the schema") as caught:
            await run_workflow(
                parse_workflow(workflow), cast(Any, _CutShort()), options=EngineOptions(max_tokens_cap=cap)
            )
        assert advice in str(caught.value)  # raising max_tokens cannot help when this node's cap cut it
        assert CUT_SHORT_MARK in str(caught.value)  # what publishers and the gateway look for
        assert caught.value.deterministic is deterministic
        assert public_error_text(caught.value).startswith(INVALID_PROMPT) is deterministic


class _Says:
    """A model stand-in that answers every generation with one text."""

    name = "says"

    def __init__(self, text: str) -> None:
        self.text = text

    async def generate(self, request: GenerationRequest, on_text: TextSink | None = None) -> Generation:
        return Generation(text=self.text, finish_reason="stop", prompt_tokens=3, completion_tokens=4)


# Keywords llguidance leaves out of a grammar: the answer is checked against them after decoding.
UNENFORCED = [
    ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, "[1, 2, 2]", "[1, 2]", "uniqueItems"),
    ({"type": "array", "items": {"type": "integer"}, "contains": {"const": 5}}, "[1, 2]", "[1, 5]", "contains"),
    ({"type": "object", "not": {"required": ["b"]}}, '{"b": 1}', '{"a": 1}', "not"),
    ({"oneOf": [{"type": "integer"}, {"type": "number"}]}, "3", "3.5", "oneOf"),  # compiled as anyOf
]


@pytest.mark.parametrize(("schema", "breaks", "keeps", "keyword"), UNENFORCED, ids=[u[3] for u in UNENFORCED])
async def test_an_answer_that_breaks_what_decoding_cannot_enforce_fails(
    schema: dict[str, Any], breaks: str, keeps: str, keyword: str
) -> None:
    workflow = parse_workflow(_one_generation("Give JSON.", schema=json.dumps(schema)))
    with pytest.raises(WorkflowError, match=f"breaks the schema's '{keyword}', which decoding did not enforce"):
        await run_workflow(workflow, cast(Any, _Says(breaks)))
    assert json.loads((await run_workflow(workflow, cast(Any, _Says(keeps)))).text) == json.loads(keeps)


async def test_a_hostile_pattern_is_never_run_by_the_answer_check() -> None:
    # decoding enforces `pattern` in linear time; Python's re would backtrack for ever on this one
    schema = {
        "type": "object",
        "properties": {"a": {"type": "string", "pattern": "^(a+)+$"}},
        "not": {"required": ["b"]},
    }
    workflow = parse_workflow(_one_generation("Give JSON.", schema=json.dumps(schema)))
    started = time.monotonic()
    result = await run_workflow(workflow, cast(Any, _Says(json.dumps({"a": "a" * 64 + "!"}))))
    assert result.text and time.monotonic() - started < 5


async def test_an_answer_a_remote_engine_did_not_fit_to_its_schema_fails() -> None:
    # A remote engine gets the schema with strict: false: nothing held its answer to it before.
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    workflow = parse_workflow(_one_generation("Give JSON.", schema=json.dumps(schema)))
    with pytest.raises(WorkflowError, match="breaks the schema's 'required'"):
        await run_workflow(workflow, cast(Any, _Says('{"b": 1}')))
    tool = {
        "name": "weather",
        "description": "The weather in a city.",
        "mode": "custom",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
    raw = _one_generation("Weather in Izmir?", operator="function_calling_raw")
    raw["config"]["custom_tools"] = [tool]
    with pytest.raises(WorkflowError, match="breaks the schema's"):  # a call without its required argument
        await run_workflow(parse_workflow(raw), cast(Any, _Says('{"name": "weather", "arguments": {}}')))
    result = await run_workflow(
        parse_workflow(raw), cast(Any, _Says('{"name": "weather", "arguments": {"city": "Izmir"}}'))
    )
    assert json.loads(result.text) == {"name": "weather", "arguments": {"city": "Izmir"}}
