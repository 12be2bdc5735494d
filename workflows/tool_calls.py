"""Asking a model for a tool call: the constraining schema, the prompt, the parsing.

The model answers with one JSON object `{"name": ..., "arguments": {...}}`,
decoded under a JSON schema so even a tiny model produces a well-formed call.
Strings get a maxLength and arrays a maxItems so it cannot loop forever.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from models.grammar import answer_check
from models.requests import ChatMessage
from workflows.errors import StepError
from workflows.tools.base import Tool

MAX_ITEMS = 10


def bounded(schema: Any, max_length: int) -> Any:
    """A copy of a JSON schema whose strings, arrays and objects are bounded."""
    schema = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item)
            return
        if not isinstance(node, dict):
            return
        kind = node.get("type")
        if kind == "string" and "enum" not in node and "const" not in node:
            node["maxLength"] = min(node.get("maxLength", max_length), max_length)
        if kind == "array":
            node["maxItems"] = min(node.get("maxItems", MAX_ITEMS), MAX_ITEMS)
        if kind == "object" and "additionalProperties" not in node:
            node["additionalProperties"] = False
        for value in node.values():
            walk(value)

    walk(schema)
    return schema


def call_schema(tools: list[Tool], max_length: int) -> dict[str, Any]:
    """The schema of one call to any of `tools`."""
    variants = [
        {
            "type": "object",
            "properties": {
                "name": {"type": "string", "enum": [tool.name]},
                "arguments": bounded(tool.parameters or {"type": "object", "properties": {}}, max_length),
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for tool in tools
    ]
    return variants[0] if len(variants) == 1 else {"anyOf": variants}


def arguments_error(parameters: dict[str, Any] | None, arguments: dict[str, Any]) -> str | None:
    """The keyword of a tool's `parameters` schema that `arguments` break (None: none, or past the check's
    budget): the check every call an engine makes passed (models/grammar/checks.py), for a reader of calls
    it did not make (the gateway, of a node's answer)."""
    check = answer_check(parameters or {"type": "object", "properties": {}})
    return None if check is None else check(arguments)


def with_tool_prompt(messages: list[ChatMessage], tools: list[Tool]) -> list[ChatMessage]:
    """The step's messages with a system message describing the tools first."""
    listing = "\n".join(
        f"- {tool.name}: {tool.description} Parameters: {json.dumps(tool.parameters, separators=(',', ':'))}"
        for tool in tools
    )
    text = (
        "You can call one of these tools:\n"
        f"{listing}\n"
        'Answer with only a JSON object {"name": <tool name>, "arguments": {<parameter>: <value>}}.'
    )
    if messages and messages[0].role == "system":
        return [ChatMessage(role="system", content=f"{text}\n\n{messages[0].content}"), *messages[1:]]
    return [ChatMessage(role="system", content=text), *messages]


def parse_call(text: str, tools: list[Tool]) -> dict[str, Any]:
    """The call the model made; a StepError if it is not one of `tools`."""
    try:
        call = json.loads(text)
    except ValueError:
        raise StepError(f"the model did not produce a complete tool call ({len(text)} characters of output)") from None
    names = {tool.name for tool in tools}
    if not isinstance(call, dict) or call.get("name") not in names or not isinstance(call.get("arguments"), dict):
        raise StepError(f"the model's tool call is not a call to one of {sorted(names)}")
    return {"name": call["name"], "arguments": call["arguments"]}
