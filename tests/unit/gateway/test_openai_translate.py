"""The OpenAI adapter's translation: chat requests as one-step workflows the engine accepts,
answers as OpenAI messages, and the network's failures as OpenAI's status codes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from node.gateway.openai_api.errors import OpenAIError, from_client_error
from node.gateway.openai_api.schemas import ChatCompletionRequest
from node.gateway.openai_api.stream import StreamMismatchError, finish_reason, rest_of
from node.gateway.openai_api.translate import (
    DEFAULT_MAX_TOKENS,
    assistant_message,
    engine_messages,
    max_tokens_of,
    workflow_for,
)
from node.gateway.service import RETRY_AFTER
from node.publisher.client import NoNodeError, TaskFailedError, TaskTimeoutError
from node.wire.error_kinds import ErrorKind
from workflows import parse_workflow

TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Weather", "parameters": {"type": "object", "properties": {}}},
}


def request(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "smollm2:135m", "messages": [{"role": "user", "content": "hi"}], **fields}
    )


def step_of(workflow: dict[str, Any]) -> dict[str, Any]:
    parse_workflow(workflow)  # what a node will accept
    return dict(workflow["tasks"][0])


def test_a_plain_request_is_one_generation_step_with_its_token_budget() -> None:
    step = step_of(workflow_for(request(max_tokens=7), 30))
    assert step["operator"] == "generation"
    assert step["messages"] == [{"role": "user", "content": "hi"}]
    assert "schema" not in step
    assert workflow_for(request(max_completion_tokens=9), 30)["config"]["max_tokens"] == 9


def test_braces_in_messages_stay_literal() -> None:
    # No inputs are declared, so `{name}` in a user's text is never a placeholder.
    step = step_of(workflow_for(request(messages=[{"role": "user", "content": "{{__input}} {x}"}]), 30))
    assert step["messages"][0]["content"] == "{{__input}} {x}"
    assert step.get("inputs") is None


def test_roles_the_engine_lacks_are_translated() -> None:
    messages = request(
        messages=[
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "weather?"}]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"X"}'}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        ]
    ).messages
    assert engine_messages(messages) == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": '{"name":"get_weather","arguments":{"city":"X"}}'},
        {"role": "user", "content": "Result of get_weather (call c1):\nsunny"},
    ]


def test_response_formats_become_the_steps_schema() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}}
    assert json.loads(step_of(workflow_for(request(response_format=fmt), 30))["schema"]) == schema
    plain = step_of(workflow_for(request(response_format={"type": "json_object"}), 30))
    assert json.loads(plain["schema"]) == {"type": "object"}


def test_tools_make_a_raw_function_call_step_unless_none() -> None:
    workflow = workflow_for(request(tools=[TOOL]), 30)
    assert step_of(workflow)["operator"] == "function_calling_raw"
    assert [t["name"] for t in workflow["config"]["custom_tools"]] == ["get_weather"]
    assert step_of(workflow_for(request(tools=[TOOL], tool_choice="none"), 30))["operator"] == "generation"
    with pytest.raises(OpenAIError) as caught:
        workflow_for(request(tools=[TOOL], tool_choice={"type": "function", "function": {"name": "other"}}), 30)
    assert caught.value.status == 400 and caught.value.param == "tool_choice"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 2}, "n"),
        ({"stop": ["\n"]}, "stop"),
        ({"logprobs": True}, "logprobs"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0]"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
        ({"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "nonsense"}}}}, None),
        # Parameters that change the answer were dropped in silence: a plain text answer to `functions`.
        ({"functions": [{"name": "f", "parameters": {}}]}, "functions"),
        ({"function_call": "auto"}, "function_call"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"modalities": ["text", "audio"]}, "modalities"),
    ],
)
def test_what_the_network_cannot_run_is_a_400_naming_the_field(fields: dict[str, Any], param: str | None) -> None:
    with pytest.raises(OpenAIError) as caught:
        workflow_for(request(**fields), 30)
    assert caught.value.status == 400
    if param is not None:
        assert caught.value.param == param
    assert caught.value.body.error.type == "invalid_request_error"


def test_a_tool_call_result_becomes_tool_calls() -> None:
    message = assistant_message('{"name": "get_weather", "arguments": {"city": "Izmir"}}', {"get_weather": {}})
    assert message.content is None
    [call] = message.tool_calls or []
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Izmir"}
    with pytest.raises(OpenAIError) as caught:
        assistant_message("not a call", {"get_weather": {}})
    assert caught.value.status == 502


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "run_shell", "arguments": {"cmd": "rm -rf ~"}}',  # a tool the caller never offered
        '{"name": "get_weather", "arguments": [1, 2]}',  # arguments that are no object
        '{"name": "get_weather", "arguments": "{}"}',  # ... a string of one
        '{"name": "get_weather", "arguments": {"a": NaN}}',  # not JSON
        '{"name": "get_weather", "arguments": {"a": -Infinity}}',
        '{"name": "get_weather", "arguments": {"a": 1e999}}',  # JSON, but no finite number
        '{"name": "get_weather\\u0000", "arguments": {}}',
        '{"name": ["get_weather"], "arguments": {}}',
        '[{"name": "get_weather", "arguments": {}}]',
    ],
)
def test_a_tool_call_an_honest_engine_cannot_make_is_a_502(text: str) -> None:
    """The node's text is its own word: a call reaches the client only as workflows/tool_calls.py makes one."""
    with pytest.raises(OpenAIError) as caught:
        assistant_message(text, {"get_weather": {}, "get_time": {}})
    assert caught.value.status == 502 and "one of the request's tools" in caught.value.body.error.message


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (TaskFailedError("t", "Invalid prompt: no message", "0xab"), 400, "invalid_prompt"),
        (TaskFailedError("t", "busy: model m has 1 running and 8 queued tasks", "0xab"), 429, "nodes_busy"),
        (NoNodeError(5, ["m"], 2, 1), 429, "nodes_busy"),
        (NoNodeError(5, ["m"], 2), 404, "model_not_found"),  # none hosts it now: not a busy network
        (NoNodeError(5, ["m"], 0), 503, "no_nodes"),  # no node at all: the gateway lost the network
        (TaskTimeoutError("t", 5), 504, "timeout"),
        (TaskFailedError("t", "model error: out of memory", "0xab"), 502, "node_error"),
        # The same on every node, and the caller's to change: a 502 made OpenAI's client send it three times.
        (
            TaskFailedError("t", "step chat: not complete JSON (max_tokens reached; raise it)", "0xab"),
            400,
            "max_tokens_too_small",
        ),  # fmt: skip
        (
            TaskFailedError(
                "t",
                "Invalid prompt: step chat: not complete JSON for the schema (max_tokens reached: 12; raise it)",
                "0xab",
            ),
            400,
            "max_tokens_too_small",
        ),  # fmt: skip
        (
            TaskFailedError("t", "Invalid prompt: the task does not fit the model's context: 9000 > 2048", "0xab"),
            400,
            "context_length_exceeded",
        ),  # fmt: skip
    ],
)
def test_network_failures_map_to_openai_status_codes(error: Exception, status: int, code: str) -> None:
    mapped = from_client_error(error)  # type: ignore[arg-type]
    assert (mapped.status, mapped.code) == (status, code)
    assert set(mapped.body.model_dump()["error"]) == {"message", "type", "param", "code"}


def test_a_failure_maps_by_its_kind_not_by_words_in_its_reason() -> None:
    # The last node declined, busy: the decline's kind, not its text, makes it a busy network.
    declined = TaskFailedError("t", "busy: stream refused (reset)", "0xab", ErrorKind.BUSY)
    assert (from_client_error(declined).status, from_client_error(declined).code) == (429, "nodes_busy")
    # The publisher's own reason, quoting a node's model name that imitates the engine's words: a node's failure.
    quoted = "result names the model 'Invalid prompt: (max_tokens reached', which the task did not ask for"
    mapped = from_client_error(TaskFailedError("t", quoted, "0xab", ErrorKind.FAILED))
    assert (mapped.status, mapped.code) == (502, "node_error")


def test_a_stream_ends_with_the_rest_of_the_signed_result_or_fails() -> None:
    assert rest_of("Hello, wo", "Hello, world!") == "rld!"
    assert rest_of("", "Hi") == "Hi"
    assert rest_of("Hi", "Hi") == ""
    with pytest.raises(StreamMismatchError):
        rest_of("Hello, ma", "Hello, world!")  # a node (or a retry) streamed text the signed result lacks


def test_a_request_without_max_tokens_still_bounds_them_so_length_can_be_told() -> None:
    # A node stops at its default (250) when a workflow names none: that answer said "stop", cut short.
    bound = workflow_for(request(), 30)["config"]["max_tokens"]
    assert bound == max_tokens_of(request()) == DEFAULT_MAX_TOKENS
    assert finish_reason(False, DEFAULT_MAX_TOKENS, max_tokens_of(request())) == "length"
    assert finish_reason(False, 3, max_tokens_of(request())) == "stop"


def test_the_busy_429_says_when_to_retry() -> None:
    mapped = from_client_error(TaskFailedError("t", "busy: model m has 1 running and 8 queued tasks", "0xab"))
    assert mapped.response().headers["Retry-After"] == str(RETRY_AFTER)


def test_a_tool_call_whose_arguments_the_tools_parameters_refuse_is_a_502() -> None:
    """An honest engine decodes a call under the tool's parameters and checks it after: a node's answer that
    the schema refuses is no call the client can use."""
    parameters = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    tools = {"get_weather": parameters}
    assert assistant_message('{"name": "get_weather", "arguments": {"city": "Izmir"}}', tools).tool_calls
    for arguments in ('{"town": "Izmir"}', '{"city": 42}'):
        with pytest.raises(OpenAIError) as caught:
            assistant_message(f'{{"name": "get_weather", "arguments": {arguments}}}', tools)
        assert caught.value.status == 502 and "parameters refuse" in caught.value.body.error.message
