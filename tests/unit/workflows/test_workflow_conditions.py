"""Conditions: every expression, and the steps that branch on them (loops until a condition holds, fallbacks)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from models.batching import BatchedLlamaModel
from tests.support.workflow_memory import sample_memory
from workflows import StepError, parse_workflow, run_workflow
from workflows.conditions import evaluate

EXPRESSIONS = [
    ("Equal", "yes", "yes", True),
    ("Equal", " yes\n", "yes", True),
    ("Equal", "no", "yes", False),
    ("NotEqual", "no", "yes", True),
    ("NotEqual", "yes", "yes", False),
    ("Contains", "a yes b", "yes", True),
    ("Contains", "a b", "yes", False),
    ("NotContains", "a b", "yes", True),
    ("NotContains", "yes", "yes", False),
    ("GreaterThan", "3", "2", True),
    ("GreaterThan", "2", "2", False),
    ("LessThan", "1.5", "2", True),
    ("LessThan", "2", "2", False),
    ("GreaterThanOrEqual", "2", "2", True),
    ("GreaterThanOrEqual", "1", "2", False),
    ("LessThanOrEqual", "2", "2", True),
    ("LessThanOrEqual", "3", "2", False),
    ("GreaterThan", "three", "2", False),
    ("LessThan", "1", "two", False),  # not numbers: false, no crash
    ("GreaterThan", "1e3", "999", True),
    ("LessThan", "-.5", "0", True),
    # Python's float() reads these; they are not numbers as a workflow writes one
    ("GreaterThan", "1_000", "999", False),
    ("GreaterThan", "\u0661\u0660", "9", False),  # Arabic-Indic "10"
    ("GreaterThan", "\uff19", "1", False),  # fullwidth 9
    ("GreaterThan", "inf", "1", False),
    ("LessThan", "1", "Infinity", False),
    ("LessThan", "nan", "1", False),
]


@pytest.mark.parametrize(("expression", "value", "expected", "holds"), EXPRESSIONS)
async def test_expressions(model: BatchedLlamaModel, expression: Any, value: str, expected: str, holds: bool) -> None:
    assert await evaluate(expression, value, expected, sample_memory(model).files) is holds


def _no_model_workflow(steps: list[dict[str, Any]], tasks: list[dict[str, Any]], **config: Any) -> Any:
    return parse_workflow(
        {
            "config": {"max_steps": 20, "max_time": 30, **config},
            "external_memory": {"colours": ["red", "green", "blue"], "count": []},
            "tasks": tasks + [{"id": "_end", "operator": "end"}],
            "steps": steps,
            "return_value": {"input": {"type": "get_all", "key": "count"}, "to_json": True},
        }
    )


SAMPLE_TASK = {
    "id": "pick",
    "messages": [{"role": "user", "content": "Colour"}],
    "inputs": [{"name": "c", "value": {"type": "string", "key": "colours"}, "required": True}],
    "operator": "sample",
    "outputs": [{"type": "push", "key": "count", "value": "__result"}],
}


async def test_sample_loop_until_condition_holds(model: BatchedLlamaModel) -> None:
    workflow = _no_model_workflow(
        [
            {
                "source": "pick",
                "target": "_end",
                "condition": {
                    "input": {"type": "size", "key": "count"},
                    "expected": "4",
                    "expression": "GreaterThanOrEqual",
                    "target_if_not": "pick",
                },
            }
        ],
        [SAMPLE_TASK],
    )
    result = await run_workflow(workflow, model)
    picks = json.loads(result.text)
    assert result.steps == 4 and len(picks) == 4
    assert all(p in ("Colour: red", "Colour: green", "Colour: blue") for p in picks)
    assert result.completion_tokens == 0


async def test_failed_task_goes_to_fallback_and_without_fallback_fails(model: BatchedLlamaModel) -> None:
    failing = {
        "id": "bad",
        "messages": [{"role": "user", "content": "{{x}}"}],
        "inputs": [{"name": "x", "value": {"type": "pop", "key": "nothing"}, "required": True}],
        "operator": "generation",
    }
    recovered = _no_model_workflow(
        [{"source": "bad", "target": "_end", "fallback": "pick"}, {"source": "pick", "target": "_end"}],
        [failing, SAMPLE_TASK],
    )
    result = await run_workflow(recovered, model)
    assert result.steps == 2 and len(json.loads(result.text)) == 1

    unrecovered = _no_model_workflow([{"source": "bad", "target": "_end"}], [failing])
    with pytest.raises(StepError, match="task 'bad' failed: required input 'x'"):
        await run_workflow(unrecovered, model)


async def test_non_numeric_condition_is_false_and_does_not_crash(model: BatchedLlamaModel) -> None:
    workflow = _no_model_workflow(
        [
            {
                "source": "pick",
                "target": "_end",
                "condition": {
                    "input": {"type": "peek", "key": "count"},
                    "expected": "1",
                    "expression": "GreaterThan",
                    "target_if_not": "__end",
                },
            }
        ],
        [SAMPLE_TASK],
    )
    assert (await run_workflow(workflow, model)).steps == 1
