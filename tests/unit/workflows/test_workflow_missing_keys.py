"""A read of a memory key nothing in the task can fill fails the same on every node: `Invalid prompt: `.

A miss on a key some step could have filled depends on the path the run took, so it keeps
its plain error (publishers may retry it elsewhere)."""

from __future__ import annotations

from typing import Any

import pytest

from models.batching import BatchedLlamaModel
from workflows import WorkflowError, parse_workflow, public_error_text, run_workflow
from workflows.errors import INVALID_PROMPT


def _workflow(
    return_input: Any,
    *,
    outputs: list[dict[str, str]] | None = None,
    external: dict[str, Any] | None = None,
    inputs: list[dict[str, Any]] | None = None,
    operator: str = "end",
) -> dict[str, Any]:
    """Task `a` (run) then `_end`; task `never` (not reachable) holds the given outputs."""
    return {
        "config": {"max_steps": 5, "max_time": 30},
        "external_memory": external or {},
        "tasks": [
            {"id": "a", "operator": operator, "inputs": inputs or [], "messages": [{"role": "user", "content": "x"}]},
            {"id": "never", "operator": "end", "outputs": outputs or []},
        ],
        "steps": [{"source": "a", "target": "_end"}, {"source": "never", "target": "_end"}],
        "return_value": {"input": return_input},
    }


async def _failure(model: BatchedLlamaModel, workflow: dict[str, Any], prompt: str | None = None) -> str:
    with pytest.raises(WorkflowError) as failed:
        await run_workflow(parse_workflow(workflow), model, prompt=prompt)
    return public_error_text(failed.value)


DETERMINISTIC = {
    "read of a key no step writes": _workflow({"type": "read", "key": "nobody"}),
    "read of a key only pushed": _workflow(
        {"type": "read", "key": "k"}, outputs=[{"type": "push", "key": "k", "value": "v"}]
    ),
    "pop of a key only written": _workflow(
        {"type": "pop", "key": "k"}, outputs=[{"type": "write", "key": "k", "value": "v"}]
    ),
    "peek of an empty external list": _workflow({"type": "peek", "key": "k"}, external={"k": []}),
    "one of several inputs": _workflow([{"type": "string", "key": "ok"}, {"type": "read", "key": "nobody"}]),
    "input without a prompt": _workflow({"type": "input"}),
    "search without inserts": _workflow({"type": "search", "search_query": {"type": "string", "key": "q"}}),
    "sample of a key nothing fills": _workflow(
        {"type": "string", "key": "unused"},
        operator="sample",
        inputs=[{"name": "pick", "value": {"type": "read", "key": "nobody"}}],
    ),
}


@pytest.mark.parametrize("workflow", DETERMINISTIC.values(), ids=DETERMINISTIC.keys())
async def test_reading_what_nothing_fills_is_invalid_prompt(model: BatchedLlamaModel, workflow: dict[str, Any]) -> None:
    text = await _failure(model, workflow)
    assert text.startswith(INVALID_PROMPT) and "filled by no step and no external_memory" in text


@pytest.mark.parametrize("messages", [[], [{"role": "user", "content": " \n"}]], ids=["none", "blank"])
async def test_a_generation_with_no_message_as_written_is_invalid_prompt(
    model: BatchedLlamaModel, messages: list[dict[str, str]]
) -> None:
    workflow = _workflow({"type": "string", "key": "unused"}, operator="generation")
    workflow["tasks"][0]["messages"] = messages
    text = await _failure(model, workflow)
    assert text == "Invalid prompt: task 'a' failed: the task has no non-empty message to send to the model"


async def test_a_message_left_blank_by_memory_is_not_invalid_prompt(model: BatchedLlamaModel) -> None:
    workflow = _workflow(
        {"type": "string", "key": "unused"},
        operator="generation",
        inputs=[{"name": "q", "value": {"type": "read", "key": "k"}, "required": False}],
        outputs=[{"type": "write", "key": "k", "value": "v"}],
    )
    workflow["tasks"][0]["messages"] = [{"role": "user", "content": "{q}"}]
    text = await _failure(model, workflow)
    assert text == "task 'a' failed: the task has no non-empty message to send to the model"


async def test_a_key_a_skipped_step_would_write_is_not_invalid_prompt(model: BatchedLlamaModel) -> None:
    workflow = _workflow({"type": "read", "key": "k"}, outputs=[{"type": "write", "key": "k", "value": "v"}])
    text = await _failure(model, workflow)
    assert text == "return_value.input: read 'k' holds nothing at the end of the run"


async def test_filled_keys_still_resolve(model: BatchedLlamaModel) -> None:
    workflow = _workflow(
        [{"type": "input"}, {"type": "read", "key": "c"}, {"type": "pop", "key": "s"}],
        external={"c": "cached", "s": ["stacked"]},
    )
    result = await run_workflow(parse_workflow(workflow), model, prompt="asked")
    assert result.text == "asked\ncached\nstacked"
