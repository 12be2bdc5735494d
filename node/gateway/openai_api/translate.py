"""A chat completion request as a one-step workflow, and the step's result as OpenAI's message.

The engine's messages have the roles system, user and assistant. A `developer` message
is a system message; an assistant's tool calls are written as the JSON call the engine's
models produce (`{"name", "arguments"}`); a `tool` message becomes a user message that
names the call it answers. `tools` make the step `function_calling_raw` (the model's call
is returned, never executed); `response_format` becomes the step's `schema`.
"""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Mapping
from typing import Any

from node.gateway.openai_api.errors import OpenAIError
from node.gateway.openai_api.schemas import (
    AssistantMessage,
    ChatCompletionRequest,
    ChatMessage,
    FunctionCall,
    NamedToolChoice,
    ToolCall,
)
from workflows import EngineOptions, WorkflowValidationError, arguments_error, parse_workflow
from workflows.strict_json import finite_float, no_constant

# What a node generates when a workflow names no max_tokens; always sent, so the gateway knows the bound
# it compares completion_tokens with (finish_reason "length"), whatever a node's default.
DEFAULT_MAX_TOKENS: int = EngineOptions.model_fields["max_tokens"].default
STEP_ID = "chat"
RESULT_KEY = "answer"


def _text(message: ChatMessage, index: int) -> str:
    """A message's content as text; only text parts can be run."""
    if message.content is None:
        return ""
    if isinstance(message.content, str):
        return message.content
    texts: list[str] = []
    for part in message.content:
        if part.type != "text" or part.text is None:
            raise OpenAIError(400, f"content parts of type {part.type!r} are not supported", f"messages[{index}]")
        texts.append(part.text)
    return "".join(texts)


def _call_json(call: ToolCall, index: int) -> str:
    try:
        arguments = json.loads(call.function.arguments or "{}")
    except (ValueError, RecursionError):  # nested past the parser's depth: not JSON it can read either
        raise OpenAIError(400, "tool call arguments are not JSON", f"messages[{index}].tool_calls") from None
    return json.dumps({"name": call.function.name, "arguments": arguments}, separators=(",", ":"))


def engine_messages(messages: list[ChatMessage]) -> list[dict[str, str]]:
    """The conversation in the engine's roles (see the module doc)."""
    calls: dict[str, str] = {}  # tool call id -> function name
    result: list[dict[str, str]] = []
    for index, message in enumerate(messages):
        text = _text(message, index)
        if message.role in ("system", "developer"):
            result.append({"role": "system", "content": text})
        elif message.role == "user":
            result.append({"role": "user", "content": text})
        elif message.role == "assistant":
            parts = [text] if text else []
            for call in message.tool_calls or []:
                calls[call.id] = call.function.name
                parts.append(_call_json(call, index))
            result.append({"role": "assistant", "content": "\n".join(parts)})
        else:  # tool
            if not message.tool_call_id:
                raise OpenAIError(400, "a tool message needs tool_call_id", f"messages[{index}].tool_call_id")
            name = calls.get(message.tool_call_id, message.name or "the tool")
            result.append({"role": "user", "content": f"Result of {name} (call {message.tool_call_id}):\n{text}"})
    return result


def _refuse_unsupported(request: ChatCompletionRequest) -> None:
    if request.n not in (None, 1):
        raise OpenAIError(400, "only n=1 is supported", "n")
    if request.stop:
        raise OpenAIError(400, "stop sequences are not supported by the network's workflow engine", "stop")
    if request.logprobs or request.top_logprobs:
        raise OpenAIError(400, "logprobs are not supported", "logprobs" if request.logprobs else "top_logprobs")
    if request.functions or request.function_call is not None:
        param = "functions" if request.functions else "function_call"
        raise OpenAIError(400, "functions and function_call are deprecated and not supported: use tools", param)
    if request.logit_bias:
        raise OpenAIError(400, "logit_bias is not supported", "logit_bias")
    if request.audio is not None or any(m != "text" for m in request.modalities or []):
        raise OpenAIError(400, "only text output is supported", "modalities")
    if request.tool_choice not in (None, "none") and not request.tools:
        raise OpenAIError(400, "tool_choice is only allowed when tools are specified", "tool_choice")


def _tools(request: ChatCompletionRequest) -> list[dict[str, Any]] | None:
    """The custom tools of a `function_calling_raw` step, or None for a plain generation."""
    if not request.tools or request.tool_choice == "none":
        return None
    if request.response_format is not None and request.response_format.type != "text":
        raise OpenAIError(400, "tools and a JSON response_format cannot be combined", "response_format")
    tools = request.tools
    if isinstance(request.tool_choice, NamedToolChoice):
        wanted = request.tool_choice.function.name
        tools = [t for t in tools if t.function.name == wanted]
        if not tools:
            raise OpenAIError(400, f"tool_choice names {wanted!r}, which is not in tools", "tool_choice")
    return [
        {
            "name": t.function.name,
            "description": t.function.description,
            "mode": "custom",
            "parameters": t.function.parameters or {"type": "object", "properties": {}},
        }
        for t in tools
    ]


def _schema(request: ChatCompletionRequest) -> str | None:
    fmt = request.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return json.dumps({"type": "object"})
    if fmt.json_schema is None:
        raise OpenAIError(400, "response_format of type json_schema needs json_schema", "response_format")
    return json.dumps(fmt.json_schema.schema_)


def max_tokens_of(request: ChatCompletionRequest) -> int:
    """The completion tokens the request allows: its own bound, else the engine's default."""
    return request.max_completion_tokens or request.max_tokens or DEFAULT_MAX_TOKENS


def workflow_for(request: ChatCompletionRequest, timeout: float) -> dict[str, Any]:
    """The one-step workflow that answers `request`, validated as nodes validate it (400 if not)."""
    _refuse_unsupported(request)
    tools = _tools(request)
    step: dict[str, Any] = {
        "id": STEP_ID,
        "name": "Chat",
        "description": "chat completion",
        "messages": engine_messages(request.messages),
        "operator": "function_calling_raw" if tools else "generation",
        "outputs": [{"type": "write", "key": RESULT_KEY, "value": "__result"}],
    }
    if (schema := _schema(request)) is not None:
        step["schema"] = schema
    config: dict[str, Any] = {"max_steps": 2, "max_time": max(math.ceil(timeout), 1), "tools": []}
    if tools:
        config["custom_tools"] = tools
    config["max_tokens"] = max_tokens_of(request)
    workflow = {
        "config": config,
        "tasks": [step, {"id": "_end", "name": "End", "description": "", "messages": [], "operator": "end"}],
        "steps": [{"source": STEP_ID, "target": "_end"}],
        "return_value": {"input": {"type": "read", "key": RESULT_KEY}},
    }
    try:
        parse_workflow(workflow)
    except WorkflowValidationError as exc:
        raise OpenAIError(400, f"the request cannot run on the network: {exc}", _param_of(str(exc))) from None
    return workflow


def _param_of(message: str) -> str | None:
    if "schema" in message:
        return "response_format"
    if "custom_tools" in message:
        return "tools"
    return None


def offered_tools(workflow: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The tools the workflow's task may call, by name, with their parameters' schema (none: a plain generation)."""
    if workflow["tasks"][0]["operator"] != "function_calling_raw":
        return {}
    return {tool["name"]: tool["parameters"] for tool in workflow["config"]["custom_tools"]}


def assistant_message(text: str, tools: Mapping[str, dict[str, Any]]) -> AssistantMessage:
    """The answer as OpenAI's message: the text, or with `tools` offered (name -> parameters) the call made.

    The node's text is its own word: a call is passed on only as an honest node's engine makes one
    (workflows/tool_calls.py): one of the offered tools, its arguments a JSON object (numbers finite) that
    the tool's parameters accept. Anything else is a 502, never a call the client did not offer or cannot use."""
    if not tools:
        return AssistantMessage(content=text)
    try:
        call = json.loads(text, parse_float=finite_float, parse_constant=no_constant)
        name, arguments = call["name"], call["arguments"]
        if name not in tools or not isinstance(arguments, dict):
            raise ValueError("not a call to an offered tool with an object of arguments")
        function = FunctionCall(name=name, arguments=json.dumps(arguments, separators=(",", ":"), allow_nan=False))
    except (ValueError, KeyError, TypeError, RecursionError):  # pydantic's ValidationError is a ValueError
        raise OpenAIError(
            502, "the node's tool call is not a call to one of the request's tools with a JSON object of arguments"
        ) from None
    if (broken := arguments_error(tools[name], arguments)) is not None:
        raise OpenAIError(502, f"the node's tool call has arguments the tool's parameters refuse ({broken!r})")
    return AssistantMessage(
        content=None, tool_calls=[ToolCall(id=f"call_{secrets.token_urlsafe(12)}", function=function)]
    )
