"""Memory, inputs and outputs.

Table-driven; the file store uses real embeddings from the SmolLM2 runtime.
"""

from __future__ import annotations

from typing import Any

import pytest

from models.batching import BatchedLlamaModel
from tests.support.workflow_memory import sample_memory
from workflows import StepError
from workflows.conditions import evaluate
from workflows.inputs import render, resolve, resolve_inputs, write_outputs
from workflows.memory import chunk_text, coerce_entry
from workflows.schema import InputValue, StepInput, StepOutput


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("42", 42),
        ("4.5", 4.5),
        ('{"a": [1, 2]}', {"a": [1, 2]}),
        ("[1]", [1]),
        ("true", True),
        ("hello", "hello"),
        ("null", "null"),
        ("", ""),
        ({"k": "v"}, {"k": "v"}),
        (7, 7),
    ],
)
def test_entry_coercion_keeps_json_looking_strings_as_json(raw: Any, expected: Any) -> None:
    assert coerce_entry(raw) == expected


INPUTS = [
    ({"type": "input"}, "the prompt"),
    ({"type": "read", "key": "name"}, "Ada"),
    ({"type": "read", "key": "num"}, "42"),
    ({"type": "read", "key": "obj"}, '{"a":1}'),
    ({"type": "read", "key": "missing"}, None),
    ({"type": "pop", "key": "s"}, "z"),
    ({"type": "pop", "key": "missing"}, None),
    ({"type": "peek", "key": "s"}, "z"),
    ({"type": "peek", "key": "s", "index": 2}, "x"),
    ({"type": "peek", "key": "s", "index": 3}, None),
    ({"type": "get_all", "key": "s"}, "x \ny \nz"),
    ({"type": "get_all", "key": "missing"}, None),
    ({"type": "size", "key": "s"}, "3"),
    ({"type": "size", "key": "missing"}, "0"),
    ({"type": "string", "key": "literal {x}"}, "literal {x}"),
]


@pytest.mark.parametrize(
    ("value", "expected"), INPUTS, ids=[f"{v['type']}-{v.get('key', '')}-{v.get('index', '')}" for v, _ in INPUTS]
)
async def test_input_types(model: BatchedLlamaModel, value: dict[str, Any], expected: str | None) -> None:
    resolved = await resolve(InputValue.model_validate(value), sample_memory(model))
    assert (None if resolved is None else render(resolved)) == expected


async def test_pop_removes_and_peek_does_not(model: BatchedLlamaModel) -> None:
    memory = sample_memory(model)
    await resolve(InputValue(type="peek", key="s"), memory)
    assert memory.size("s") == 3
    assert await resolve(InputValue(type="pop", key="s"), memory) == "z"
    assert memory.get_all("s") == ["x", "y"]


async def test_required_input_that_resolves_to_nothing_fails_optional_renders_empty(model: BatchedLlamaModel) -> None:
    memory = sample_memory(model)
    missing = InputValue(type="read", key="missing")
    assert await resolve_inputs([StepInput(name="m", value=missing, required=False)], memory) == {"m": ""}
    with pytest.raises(StepError, match="required input 'm'"):
        await resolve_inputs([StepInput(name="m", value=missing, required=True)], memory)


async def test_file_store_insert_search_and_have_similar(model: BatchedLlamaModel) -> None:
    memory = sample_memory(model)
    volcano = "Volcanoes erupt molten rock called lava from inside the earth."
    texts = [
        volcano,
        "The stock market closed higher on Tuesday after bank earnings.",
        "A recipe for bread needs flour, water, salt and yeast.",
    ]
    await write_outputs([StepOutput(type="insert", key="docs", value="__result")], texts[0], memory)
    for text in texts[1:]:
        await write_outputs([StepOutput(type="insert", key="docs", value=text)], "ignored", memory)
    query = InputValue.model_validate(
        {"type": "search", "key": "docs", "search_query": {"type": "string", "key": "lava and eruptions"}}
    )
    found = await resolve(query, memory)
    assert isinstance(found, list) and len(found) == 3 and found[0] == volcano
    assert await evaluate("HaveSimilar", volcano, "", memory.files) is True
    assert await evaluate("HaveSimilar", "Quarterly tax filing deadlines", "", memory.files) is False


def test_chunking_is_about_250_characters() -> None:
    text = " ".join(f"word{i}" for i in range(300))
    chunks = chunk_text(text)
    assert all(len(c) <= 250 for c in chunks) and len(chunks) > 5
    assert " ".join(chunks) == text
    assert chunk_text("x" * 600) == ["x" * 250, "x" * 250, "x" * 100]


async def test_write_and_push_outputs_store_result_or_literal(model: BatchedLlamaModel) -> None:
    memory = sample_memory(model)
    outputs = [
        StepOutput(type="write", key="w", value="__result"),
        StepOutput(type="push", key="s", value="__result"),
        StepOutput(type="write", key="lit", value='{"b": 2}'),
    ]
    await write_outputs(outputs, "17", memory)
    assert memory.read("w") == 17 and memory.get_all("s")[-1] == 17 and memory.read("lit") == {"b": 2}
