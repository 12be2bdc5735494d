"""Budgets that hold: steps yield, caps a workflow cannot raise, memory/result/schema limits, public error texts."""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

import pytest

from config.settings import Settings
from models.batching import BatchedLlamaModel
from models.requests import ModelError
from node.execution.workflow_setup import engine_options
from node.wire.topics import CONTEXT_OVERFLOW_MARK
from tests.support.hostile_workflows import (
    GRAMMAR_BOMBS,
    LOOPS,
    MEMORY_BOMBS,
    OVERSIZE,
    HostileWorkflow,
    end_loop,
    generation_loop,
    insert_bomb,
    many_tools_bomb,
    memory_only_loop,
    post_process_bomb,
)
from workflows import (
    EngineOptions,
    LimitExceededError,
    Simple,
    WorkflowValidationError,
    parse_workflow,
    run_workflow,
)
from workflows.errors import (
    INVALID_PROMPT,
    InvalidStepError,
    InvalidToolError,
    ModelFailedError,
    ResultTooLargeError,
    ToolError,
    public_error_text,
)
from workflows.schema import MAX_POST_PROCESS
from workflows.schema_limits import MAX_PATTERN_EXPANSION, pattern_expansion


def _calls_done(model: BatchedLlamaModel) -> int:
    progress = model.progress()
    assert progress is not None
    return progress.calls_done


async def _max_loop_gap(work: Any) -> tuple[float, BaseException | None]:
    """Run `work` while a ticker measures the longest time the event loop did not answer."""
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.monotonic()
        while not done.is_set():
            await asyncio.sleep(0.005)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    tick = asyncio.create_task(ticker())
    error: BaseException | None = None
    try:
        await work
    except Exception as exc:  # noqa: BLE001 - returned to the test
        error = exc
    done.set()
    await tick
    return max(gaps, default=0.0), error


@pytest.mark.timeout(30)  # without a yield per step, max_time never fires and the run never ends
@pytest.mark.parametrize("build", [end_loop, memory_only_loop], ids=["end", "memory_only"])
async def test_steps_that_never_await_still_yield_and_max_time_holds(model: BatchedLlamaModel, build: Any) -> None:
    workflow = parse_workflow(build(max_time=2.0))
    started = time.monotonic()
    gap, error = await _max_loop_gap(run_workflow(workflow, model, options=EngineOptions(max_steps_cap=10**12)))
    assert isinstance(error, LimitExceededError) and error.limit == "max_time", error
    assert time.monotonic() - started < 10
    # Without a yield per step the loop is frozen for the whole max_time (2 s).
    assert gap < 1.0, f"the event loop was starved for {gap:.3f} s"


@pytest.mark.parametrize("case", [*LOOPS, *MEMORY_BOMBS, *OVERSIZE], ids=lambda c: c.name)
async def test_hostile_workflows_end_within_their_budget(model: BatchedLlamaModel, case: HostileWorkflow) -> None:
    started = time.monotonic()
    gap, error = await _max_loop_gap(run_workflow(parse_workflow(case.workflow), model))
    assert error is not None and case.expect in str(error), error
    assert not public_error_text(error).startswith(INVALID_PROMPT)
    assert time.monotonic() - started < 30
    assert gap < 1.0, f"the event loop was starved for {gap:.3f} s"


async def test_default_step_cap_and_operator_tightening(model: BatchedLlamaModel) -> None:
    with pytest.raises(LimitExceededError, match="max_steps exceeded: 1000 task executions"):
        await run_workflow(parse_workflow(end_loop()), model)
    options = engine_options(Settings.load(max_steps_cap=7))
    assert options.max_steps_cap == 7
    with pytest.raises(LimitExceededError, match="max_steps exceeded: 7 task executions"):
        await run_workflow(parse_workflow(end_loop()), model, options=options)


async def test_the_file_store_is_inside_the_memory_budget(model: BatchedLlamaModel) -> None:
    options = EngineOptions(max_memory_bytes=300_000)
    with pytest.raises(LimitExceededError, match="memory limit exceeded: an insert into the file store") as caught:
        await run_workflow(parse_workflow(insert_bomb()), model, options=options)
    assert caught.value.limit == "memory"


async def test_token_budget_per_task(model: BatchedLlamaModel) -> None:
    options = EngineOptions(max_task_tokens=20, max_tokens_cap=8)
    with pytest.raises(LimitExceededError, match="token budget exceeded") as caught:
        await run_workflow(parse_workflow(generation_loop(max_time=120)), model, options=options)
    assert caught.value.limit == "max_tokens"


async def test_result_size_cap_is_the_operators() -> None:
    workflow = parse_workflow({
        "config": {"max_steps": 1, "max_time": 5},
        "tasks": [{"id": "e", "operator": "end"}],
        "steps": [{"source": "e", "target": "_end"}],
        "return_value": {"input": {"type": "string", "key": "é" * 600}},
    })  # fmt: skip
    model: Any = None  # `end` never calls a model
    assert (await run_workflow(workflow, model, options=EngineOptions(max_result_bytes=1200))).text == "é" * 600
    with pytest.raises(ResultTooLargeError, match=r"result too large: 1200 bytes \(this node sends at most 1199\)"):
        await run_workflow(workflow, model, options=EngineOptions(max_result_bytes=1199))


@pytest.mark.parametrize("case", GRAMMAR_BOMBS, ids=lambda c: c.name)
def test_grammar_bombs_are_invalid_workflows(case: HostileWorkflow) -> None:
    with pytest.raises(WorkflowValidationError, match=re.escape(case.expect)) as caught:
        parse_workflow(case.workflow)
    text = public_error_text(caught.value)
    assert text.startswith("Invalid prompt: invalid workflow: tasks[0].") or "custom_tools" in text, text


def test_reasonable_schemas_pass_the_caps() -> None:
    schema = {
        "type": "object",
        "properties": {
            "date": {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}$"},
            "email": {"type": "string", "pattern": "[a-z]{1,64}@[a-z]{1,64}\\.[a-z]{2,8}"},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 100}, "maxItems": 50},
        },
        "required": ["date"],
    }
    parse_workflow({
        "config": {"max_steps": 1, "max_time": 5},
        "tasks": [{"id": "g", "operator": "generation", "messages": [{"role": "user", "content": "x"}],
                   "schema": json.dumps(schema)}],
        "steps": [{"source": "g", "target": "_end"}],
        "return_value": {"input": {"type": "string", "key": "x"}},
    })  # fmt: skip
    assert pattern_expansion("(a{100}){100}") == 10_000 <= MAX_PATTERN_EXPANSION
    assert pattern_expansion("((a{100}){100}){100}") == 1_000_000


@pytest.mark.parametrize(
    "text", ['{"config": {"max_steps": 1, "max_time": Infinity}}', '{"a": NaN}', '{"a": -Infinity}']
)
def test_non_json_numbers_are_refused(text: str) -> None:
    with pytest.raises(WorkflowValidationError, match="not JSON|not valid JSON"):
        parse_workflow(text)


def test_infinite_max_time_is_refused_in_a_parsed_body() -> None:
    workflow = json.loads(json.dumps(end_loop()))
    workflow["config"]["max_time"] = float("inf")
    with pytest.raises(WorkflowValidationError, match="config.max_time"):
        parse_workflow(workflow)


def test_public_error_texts() -> None:
    assert public_error_text(InvalidStepError("required input 'x' resolved to nothing")) == (
        "Invalid prompt: required input 'x' resolved to nothing"
    )
    assert public_error_text(InvalidToolError("unknown tool 'z'")).startswith("Invalid prompt: unknown tool")
    assert public_error_text(WorkflowValidationError("config: bad")) == "Invalid prompt: invalid workflow: config: bad"
    # Transient errors never carry the phrase, even when a workflow names a task after it.
    forged = LimitExceededError("max_steps", "max_steps exceeded: task 'Invalid prompt: x' would run next")
    assert "invalid prompt" not in public_error_text(forged).lower()
    for transient in (ModelFailedError("model 'm' failed: oom"), ToolError("tool request failed"),
                      ResultTooLargeError("result too large: 1 bytes"), ModelError("decode failed")):  # fmt: skip
        assert "Invalid prompt" not in public_error_text(transient)
    assert public_error_text(KeyError("secret-key-name")) == "internal error: KeyError"
    assert len(public_error_text(InvalidStepError("x" * 10_000))) <= 520


async def test_error_texts_carry_no_model_output_or_memory_values(model: BatchedLlamaModel) -> None:
    secret = "TOP-SECRET-PROMPT-TEXT"
    workflow = parse_workflow({
        "config": {"max_steps": 2, "max_time": 5},
        "external_memory": {"pool": []},
        "tasks": [{"id": "s", "operator": "sample", "messages": [{"role": "user", "content": "{a}"}],
                   "inputs": [{"name": "a", "value": {"type": "input"}}]}],
        "steps": [{"source": "s", "target": "_end"}],
        "return_value": {"input": {"type": "string", "key": "x"}},
    })  # fmt: skip
    with pytest.raises(Exception) as caught:
        await run_workflow(workflow, model, prompt=secret)
    assert secret not in public_error_text(caught.value) and secret not in str(caught.value)


@pytest.mark.parametrize(("value", "expect"), [("deep", "nests too deeply"), (float("nan"), "not JSON")])
def test_external_memory_must_be_plain_json(value: Any, expect: str) -> None:
    if value == "deep":
        value = nested = {}
        for _ in range(5000):
            nested["a"] = {}
            nested = nested["a"]
    workflow = end_loop()
    workflow["external_memory"] = {"k": value}
    with pytest.raises(WorkflowValidationError, match=f"external_memory: .*{expect}"):
        parse_workflow(workflow)


async def test_many_small_tools_cannot_make_a_grammar_bomb(model: BatchedLlamaModel) -> None:
    with pytest.raises(
        InvalidToolError, match="the tools together make a call schema that is [0-9]+ characters of JSON"
    ) as caught:
        await run_workflow(parse_workflow(many_tools_bomb()), model)
    assert public_error_text(caught.value).startswith("Invalid prompt: task 'g' failed: the tools together")


async def test_a_task_that_cannot_fit_the_context_is_refused_as_invalid_prompt(model: BatchedLlamaModel) -> None:
    workflow = parse_workflow(Simple().workflow("Tell a story.", max_tokens=model.n_ctx))
    calls_done = _calls_done(model)
    with pytest.raises(InvalidStepError) as caught:
        await run_workflow(workflow, model, options=EngineOptions(max_tokens_cap=None))
    text = public_error_text(caught.value)
    assert text.startswith(INVALID_PROMPT) and f"{CONTEXT_OVERFLOW_MARK}: the prompt's " in text, text  # the gateway's
    assert f"plus max_tokens {model.n_ctx} need" in text and f"the {model.n_ctx}-token context" in text, text
    assert _calls_done(model) == calls_done  # refused before it ran: not one native call
    fits = parse_workflow(Simple().workflow("Tell a story.", max_tokens=model.n_ctx // 2))
    assert (await run_workflow(fits, model, options=EngineOptions(max_tokens_cap=None))).text
    # Asked more than this node's cap: the error quotes what was sent and what was asked (it quoted the cap alone).
    huge = parse_workflow(Simple().workflow("Tell a story.", max_tokens=100_000))
    with pytest.raises(InvalidStepError) as caught:
        await run_workflow(huge, model, options=EngineOptions(max_tokens_cap=model.n_ctx))
    text = public_error_text(caught.value)
    assert f"plus max_tokens {model.n_ctx} need" in text, text
    assert f"(of the 100000 max_tokens asked, this node allows {model.n_ctx})" in text, text


async def test_the_most_post_process_steps_over_millions_of_characters_end_within_their_budget(
    model: BatchedLlamaModel,
) -> None:
    gap, error = await _max_loop_gap(run_workflow(parse_workflow(post_process_bomb(MAX_POST_PROCESS)), model))
    assert error is not None and "result too large" in str(error), error
    assert gap < 1.0, f"the event loop was starved for {gap:.3f} s"


def test_a_return_value_takes_a_few_post_process_steps_only() -> None:
    # Each step rewrites the whole result synchronously: 3,000 of them over millions of characters held the
    # execution process's event loop for 90 s, past any max_time.
    parse_workflow(post_process_bomb(MAX_POST_PROCESS))
    with pytest.raises(WorkflowValidationError, match="post_process"):
        parse_workflow(post_process_bomb(MAX_POST_PROCESS + 1))
