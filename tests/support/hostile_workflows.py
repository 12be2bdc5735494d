"""Hostile workflows: loops of every operator, memory bombs, oversize results, grammar bombs, SSRF.

Each is a plain workflow dict (as a publisher sends it), shared by the engine's
unit tests and the live hostile suite. `expect` is a substring of the error the
run must end with.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

HUGE_STEPS = 10**12
BLOCK = "x" * 60_000  # one literal: a workflow fits in a 256 KiB message


@dataclass(frozen=True)
class HostileWorkflow:
    name: str
    workflow: dict[str, Any]
    expect: str


def _loop(task: dict[str, Any], *, max_time: float, ret: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """A workflow whose single task loops to itself forever."""
    return {
        "config": {"max_steps": HUGE_STEPS, "max_time": max_time, **extra.pop("config", {})},
        "tasks": [task],
        "steps": [{"source": task["id"], "target": task["id"]}],
        "return_value": ret or {"input": {"type": "string", "key": "never"}},
        **extra,
    }


def end_loop(max_time: float = 600) -> dict[str, Any]:
    return _loop({"id": "e", "operator": "end"}, max_time=max_time)


def memory_only_loop(max_time: float = 600) -> dict[str, Any]:
    """An `end` task that rewrites memory each step (constant size) and never calls a model."""
    task = {
        "id": "m",
        "operator": "end",
        "outputs": [{"type": "write", "key": "k", "value": "v" * 1000}, {"type": "write", "key": "k", "value": "w"}],
    }
    return _loop(task, max_time=max_time)


def sample_loop(max_time: float = 600) -> dict[str, Any]:
    """`sample` over `get_all` pushing back onto the same stack: the entry doubles every step."""
    task = {
        "id": "s",
        "operator": "sample",
        "messages": [{"role": "user", "content": "{a}{a}"}],
        "inputs": [{"name": "a", "value": {"type": "get_all", "key": "pool"}}],
        "outputs": [{"type": "push", "key": "pool", "value": "__result"}],
    }
    return _loop(task, max_time=max_time, external_memory={"pool": ["seed" * 250]})


def generation_loop(max_time: float = 3, max_tokens: int = 10**9) -> dict[str, Any]:
    task = {"id": "g", "operator": "generation", "messages": [{"role": "user", "content": "Count on."}]}
    return _loop(task, max_time=max_time, config={"max_tokens": max_tokens})


def failing_fallback_loop(operator: str) -> dict[str, Any]:
    """A task that fails at once (`search` with no provider, `function_calling` with no tools)
    and falls back to itself: the failure path must yield and count steps too."""
    task = {"id": "f", "operator": operator, "messages": [{"role": "user", "content": '{"query": "q"}'}]}
    wf = _loop(task, max_time=600)
    wf["steps"] = [{"source": "f", "target": "f", "fallback": "f"}]
    return wf


def write_bomb() -> dict[str, Any]:
    """One step writing a 60 kB sample to 150 cache keys (9 MB)."""
    task = {
        "id": "w",
        "operator": "sample",
        "messages": [{"role": "user", "content": "{a}"}],
        "inputs": [{"name": "a", "value": {"type": "get_all", "key": "pool"}}],
        "outputs": [{"type": "write", "key": f"k{i}", "value": "__result"} for i in range(150)],
    }
    return _loop(task, max_time=600, external_memory={"pool": [BLOCK]})


def fan_out_bomb(where: str) -> dict[str, Any]:
    """A 1.8 MB stack, then 1500 inputs (of a task, or of the return value) each naming all of it."""
    fill_stack = {
        "id": "fill",
        "operator": "sample",
        "messages": [{"role": "user", "content": "{a}"}],
        "inputs": [{"name": "a", "value": {"type": "get_all", "key": "pool"}}],
        "outputs": [{"type": "push", "key": "big", "value": "__result"}] * 30,
    }
    every = {"type": "get_all", "key": "big"}
    use = {"id": "use", "operator": "end"}
    if where == "task":
        use = {"id": "use", "operator": "sample", "messages": [{"role": "user", "content": "x"}],
               "inputs": [{"name": f"i{n}", "value": every} for n in range(1500)]}  # fmt: skip
    return {
        "config": {"max_steps": 5, "max_time": 60},
        "external_memory": {"pool": [BLOCK]},
        "tasks": [fill_stack, use],
        "steps": [{"source": "fill", "target": "use"}, {"source": "use", "target": "_end"}],
        "return_value": {"input": [every] * 1500 if where == "return_value" else {"type": "string", "key": "x"}},
    }


def push_bomb() -> dict[str, Any]:
    """`push` of a 60 kB literal every step."""
    task = {"id": "p", "operator": "end", "outputs": [{"type": "push", "key": "s", "value": BLOCK}]}
    return _loop(task, max_time=600)


def insert_bomb(max_time: float = 600) -> dict[str, Any]:
    """`insert` of a 60 kB literal into the file store every step."""
    task = {"id": "i", "operator": "end", "outputs": [{"type": "insert", "key": "f", "value": BLOCK}]}
    return _loop(task, max_time=max_time)


def oversize_result() -> dict[str, Any]:
    """A result of 2 x 60 kB from a stack."""
    outputs = [{"type": "push", "key": "s", "value": BLOCK}] * 2
    return {
        "config": {"max_steps": 1, "max_time": 60},
        "tasks": [{"id": "p", "operator": "end", "outputs": outputs}],
        "steps": [{"source": "p", "target": "_end"}],
        "return_value": {"input": {"type": "get_all", "key": "s"}, "to_json": True},
    }


def replace_bomb() -> dict[str, Any]:
    """A small result that post_process `replace` would blow up a thousandfold."""
    return {
        "config": {"max_steps": 1, "max_time": 60},
        "tasks": [{"id": "e", "operator": "end"}],
        "steps": [{"source": "e", "target": "_end"}],
        "return_value": {
            "input": {"type": "string", "key": "a" * 20_000},
            "post_process": [{"process_type": "replace", "lhs": "a", "rhs": "b" * 1000}] * 3,
        },
    }


def _generation_on_a_block(messages: list[dict[str, str]]) -> dict[str, Any]:
    """One generation step of `messages`, whose input `a` reads a 60 kB entry of memory."""
    task = {
        "id": "g",
        "operator": "generation",
        "messages": messages,
        "inputs": [{"name": "a", "value": {"type": "read", "key": "big"}}],
    }
    return {
        "config": {"max_steps": 1, "max_time": 60, "max_tokens": 4},
        "external_memory": {"big": BLOCK},
        "tasks": [task],
        "steps": [{"source": "g", "target": "_end"}],
        "return_value": {"input": {"type": "string", "key": "done"}},
    }


def placeholder_bomb() -> dict[str, Any]:
    """A message repeating a 60 kB input 200 times (12 MB of prompt)."""
    return _generation_on_a_block([{"role": "user", "content": "{a}" * 200}])


def messages_fan_out_bomb() -> dict[str, Any]:
    """One step of 1,000 messages each naming a 60 kB input once (60 MB of prompt; each message alone is small)."""
    return _generation_on_a_block([{"role": "user", "content": "{a}."}] * 1000)


def sample_fan_out_bomb() -> dict[str, Any]:
    """400 inputs of one sample step, each a 4-character name of a stack whose one entry is 60 kB: each
    sample copies the entry (24 MB), while the inputs render to 1.6 kB."""
    task = {
        "id": "s",
        "operator": "sample",
        "messages": [{"role": "user", "content": "x"}],
        "inputs": [{"name": f"i{n}", "value": {"type": "string", "key": "pool"}} for n in range(400)],
    }
    return {
        "config": {"max_steps": 1, "max_time": 60},
        "external_memory": {"pool": [BLOCK]},
        "tasks": [task],
        "steps": [{"source": "s", "target": "_end"}],
        "return_value": {"input": {"type": "string", "key": "done"}},
    }


def post_process_bomb(steps: int) -> dict[str, Any]:
    """(In-process only: its memory is no message.) 1.2 M non-ASCII characters (their memory is charged as escaped JSON: 7.2 MB) tripled by a `replace`, then
    `steps` - 1 alternating to_upper / to_lower steps over the 3.6 M (each tens of ms)."""
    cases = [{"process_type": "replace", "lhs": "\u03b1", "rhs": "\u03b1" * 3}]
    cases += [{"process_type": "to_upper" if i % 2 else "to_lower"} for i in range(steps - 1)]
    return {
        "config": {"max_steps": 1, "max_time": 1},
        "external_memory": {"v": "\u03b1" * 1_200_000},
        "tasks": [{"id": "e", "operator": "end"}],
        "steps": [{"source": "e", "target": "_end"}],
        "return_value": {"input": {"type": "read", "key": "v"}, "post_process": cases},
    }


def schema_task(schema: Any, *, encode: str = "json") -> dict[str, Any]:
    text = json.dumps(schema)
    value = base64.b64encode(text.encode()).decode() if encode == "base64" else text
    return {
        "config": {"max_steps": 1, "max_time": 60, "max_tokens": 8},
        "tasks": [
            {"id": "g", "operator": "generation", "messages": [{"role": "user", "content": "Hi"}], "schema": value}
        ],
        "steps": [{"source": "g", "target": "_end"}],
        "return_value": {"input": {"type": "string", "key": "x"}},
    }


def _nested(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


def custom_tool_bomb() -> dict[str, Any]:
    wf = schema_task({"type": "string"})
    del wf["tasks"][0]["schema"]
    wf["tasks"][0]["operator"] = "function_calling_raw"
    wf["config"]["custom_tools"] = [
        {
            "name": "t",
            "mode": "custom",
            "description": "d",
            "parameters": {"type": "object", "properties": {"s": {"type": "string", "minLength": 10**7}}},
        }
    ]
    return wf


def many_tools_bomb() -> dict[str, Any]:
    """Each tool is small; together their call schema is not."""
    wf = custom_tool_bomb()
    wf["config"]["custom_tools"] = [
        {"name": f"t{i}", "mode": "http_request", "description": "d", "url": "https://example.org/",
         "body": {f"k{j}": "v" for j in range(40)}}
        for i in range(60)
    ]  # fmt: skip
    return wf


GRAMMAR_BOMBS = [
    HostileWorkflow("schema_max_length_huge", schema_task({"type": "string", "maxLength": 10**9}), "maxLength"),
    HostileWorkflow(
        "schema_min_items_huge",
        schema_task({"type": "array", "minItems": 10**6, "items": {"type": "integer"}}),
        "minItems",
    ),
    HostileWorkflow(
        "schema_nested_pattern", schema_task({"type": "string", "pattern": "((a{100}){100}){100}"}), "pattern"
    ),
    HostileWorkflow("schema_deep_nesting", schema_task(_nested(40)), "nests deeper"),
    HostileWorkflow(
        "schema_too_large", schema_task({"enum": [f"v{i}" * 20 for i in range(2000)]}), "characters of JSON"
    ),
    HostileWorkflow(
        "schema_base64_bomb", schema_task({"type": "string", "maxLength": 10**9}, encode="base64"), "maxLength"
    ),
    HostileWorkflow("custom_tool_parameters_bomb", custom_tool_bomb(), "minLength"),
    HostileWorkflow(
        "schema_huge_integer_range", schema_task({"type": "integer", "minimum": 0, "maximum": 10**4000}), "maximum"
    ),
    HostileWorkflow("schema_remote_ref", schema_task({"$ref": "https://169.254.169.254/latest/meta-data"}), "$ref"),
]

LOOPS = [
    HostileWorkflow("end_self_loop", end_loop(), "max_steps exceeded"),
    HostileWorkflow("memory_only_loop", memory_only_loop(), "max_steps exceeded"),
    HostileWorkflow("sample_doubling_loop", sample_loop(), "memory limit exceeded"),
    HostileWorkflow("search_fallback_loop", failing_fallback_loop("search"), "max_steps exceeded"),
    HostileWorkflow("function_calling_fallback_loop", failing_fallback_loop("function_calling"), "max_steps exceeded"),
]

MEMORY_BOMBS = [
    HostileWorkflow("write_bomb", write_bomb(), "memory limit exceeded"),
    HostileWorkflow("push_bomb", push_bomb(), "memory limit exceeded"),
    HostileWorkflow("placeholder_bomb", placeholder_bomb(), "memory limit exceeded"),
    HostileWorkflow("inputs_fan_out_bomb", fan_out_bomb("task"), "memory limit exceeded"),
    HostileWorkflow("return_value_fan_out_bomb", fan_out_bomb("return_value"), "result too large"),
    HostileWorkflow("messages_fan_out_bomb", messages_fan_out_bomb(), "memory limit exceeded"),
    HostileWorkflow("sample_fan_out_bomb", sample_fan_out_bomb(), "memory limit exceeded"),
]

OVERSIZE = [
    HostileWorkflow("oversize_result", oversize_result(), "result too large"),
    HostileWorkflow("replace_bomb_result", replace_bomb(), "result too large"),
]

# Hosts an http_request tool may name that must all be refused on a default node.
SSRF_HOSTS = [
    "127.0.0.1",
    "localhost",
    "[::1]",
    "0.0.0.0",
    "2130706433",
    "0x7f000001",
    "127.1",
    "0177.0.0.1",
    "[::ffff:127.0.0.1]",
    "[::127.0.0.1]",
    "[2002:7f00:1::]",
    "[64:ff9b::7f00:1]",
    "[fec0::1]",
    "169.254.169.254",
    "[fe80::1]",
    "10.0.0.1",
    "192.168.1.1",
    "[fc00::1]",
    "100.64.0.1",
]


def http_tool_workflow(url: str, *, max_time: float = 60) -> dict[str, Any]:
    """function_calling with one http_request tool that takes no arguments: the model can only call it."""
    return {
        "config": {
            "max_steps": 1, "max_time": max_time, "max_tokens": 48,
            "custom_tools": [{"name": "fetch_it", "mode": "http_request", "description": "Fetch the page.", "url": url}],
        },
        "tasks": [{"id": "f", "operator": "function_calling", "messages": [{"role": "user", "content": "Call fetch_it."}],
                   "outputs": [{"type": "write", "key": "r", "value": "__result"}]}],
        "steps": [{"source": "f", "target": "_end"}],
        "return_value": {"input": {"type": "read", "key": "r"}},
    }  # fmt: skip
