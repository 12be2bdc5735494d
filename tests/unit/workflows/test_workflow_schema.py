"""Workflow parsing and validation (no model needed)."""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.protocol_files import EXAMPLES
from workflows import Simple, WorkflowValidationError, parse_workflow


def _simple() -> dict[str, Any]:
    return json.loads((EXAMPLES / "simple.json").read_text())


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.json")), ids=lambda p: p.name)
def test_every_example_parses(path: Path) -> None:
    workflow = parse_workflow(path.read_text())
    assert workflow.steps and workflow.edges


def test_null_dumped_and_omitted_optionals_mean_the_same() -> None:
    dumped = parse_workflow(_simple())
    omitted = _simple()
    del omitted["config"]["custom_tools"]
    del omitted["tasks"][0]["schema"]
    del omitted["steps"][0]["condition"], omitted["steps"][0]["fallback"]
    omitted["return_value"] = {"input": {"type": "read", "key": "response"}}
    assert parse_workflow(omitted) == dumped
    assert dumped.config.custom_tools == [] and dumped.return_value.post_process == []


def test_legacy_prompt_becomes_one_user_message_and_unknown_keys_are_ignored() -> None:
    raw = _simple()
    raw["future_field"] = {"anything": 1}
    task = raw["tasks"][0]
    del task["messages"]
    task["prompt"] = "Say hi"
    workflow = parse_workflow(raw)
    assert [(m.role, m.content) for m in workflow.steps[0].messages] == [("user", "Say hi")]


def test_schema_string_and_base64_schema_are_decoded() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    raw = _simple()
    raw["tasks"][0]["schema"] = json.dumps(schema)
    assert parse_workflow(raw).steps[0].json_schema == schema
    raw["tasks"][0]["schema"] = base64.b64encode(json.dumps(schema).encode()).decode()
    assert parse_workflow(raw).steps[0].json_schema == schema


@pytest.mark.parametrize("blank", ["", "   ", "\n"])
def test_a_blank_schema_means_no_schema(blank: str) -> None:
    # "" is valid base64 of nothing: read as an empty regex it failed every answer, retried on every node
    raw = _simple()
    raw["tasks"][0]["schema"] = blank
    assert parse_workflow(raw).steps[0].json_schema is None


def _set(path: list[Any], value: Any) -> Callable[[dict[str, Any]], None]:
    def apply(raw: dict[str, Any]) -> None:
        node = raw
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value

    return apply


INVALID = [
    ("unknown operator", _set(["tasks", 0, "operator"], "teleport"), "tasks[0].operator"),
    ("edge to missing task", _set(["steps", 0, "target"], "nowhere"), "steps[0].target: no task with id 'nowhere'"),
    ("edge from missing task", _set(["steps", 0, "source"], "ghost"), "steps[0].source: no task with id 'ghost'"),
    ("missing fallback task", _set(["steps", 0, "fallback"], "ghost"), "steps[0].fallback"),
    ("empty steps", _set(["steps"], []), "steps:"),
    ("empty tasks", _set(["tasks"], []), "tasks:"),
    ("bad input type", _set(["return_value", "input", "type"], "teleport"), "return_value.input.type"),
    ("schema not JSON", _set(["tasks", 0, "schema"], "{not json"), "tasks[0].schema"),
    (
        "bad expression",
        _set(
            ["steps", 0, "condition"],
            {"input": {"type": "read", "key": "x"}, "expected": "1", "expression": "Bigger", "target_if_not": "_end"},
        ),
        "steps[0].condition.expression",
    ),
    ("bad tool mode", _set(["config", "custom_tools"], [{"name": "t", "mode": "magic"}]), "config.custom_tools[0]"),
    (
        "bad post-process",
        _set(["return_value", "post_process"], [{"process_type": "explode"}]),
        "return_value.post_process[0].process_type",
    ),
    (
        "replace without lhs",
        _set(["return_value", "post_process"], [{"process_type": "replace"}]),
        "return_value.post_process[0]",
    ),
    ("missing config", lambda raw: raw.pop("config"), "config"),
    ("duplicate task id", lambda raw: raw["tasks"].append(copy.deepcopy(raw["tasks"][0])), "tasks[2].id: duplicate"),
]


@pytest.mark.parametrize(("mutate", "field"), [case[1:] for case in INVALID], ids=[case[0] for case in INVALID])
def test_invalid_workflows_are_refused_naming_the_field(mutate: Callable[[dict[str, Any]], None], field: str) -> None:
    raw = _simple()
    mutate(raw)
    with pytest.raises(WorkflowValidationError) as excinfo:
        parse_workflow(raw)
    assert str(excinfo.value).startswith(field) or field in str(excinfo.value), str(excinfo.value)


def test_text_that_is_not_json_is_refused() -> None:
    with pytest.raises(WorkflowValidationError, match="not valid JSON"):
        parse_workflow("{oops")


def test_end_nodes_need_not_be_declared() -> None:
    raw = _simple()
    raw["tasks"] = raw["tasks"][:1]
    raw["steps"][0]["target"] = "__end"
    assert parse_workflow(raw).edges[0].target == "__end"


def test_simple_builder_produces_the_simple_example_shape() -> None:
    built = Simple().workflow("Write a haiku about Cappadocia.", max_tokens=1000)
    assert built == _simple()
    assert parse_workflow(built).steps[0].messages[0].content == "Write a haiku about Cappadocia."
    assert Simple().parse_result("  An answer.\n") == "An answer."


@pytest.mark.parametrize("keyword", ["$ref", "$dynamicRef", "$recursiveRef"])
def test_a_reference_outside_the_schema_is_refused(keyword: str) -> None:
    raw = _simple()
    raw["tasks"][0]["schema"] = json.dumps({"type": "integer", keyword: "http://169.254.169.254/latest/meta-data/"})
    with pytest.raises(WorkflowValidationError, match=f"has a \\{keyword} outside the schema"):
        parse_workflow(raw)
