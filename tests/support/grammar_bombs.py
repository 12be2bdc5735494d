"""The grammar-bomb family: regexes and JSON schemas whose grammar is cheap to send and costly to run.

Issue 21: `(x?){1000}` repeated 90 times plus `x` froze llama.cpp's grammar engine
(each accepted token cost about the cube of the states); the same form with 19 groups
passed as a JSON-schema `pattern`; a `pattern` of 1000 `(` raised RecursionError.
Each bomb here scales nesting, repetition, alternation, counts, enums or schema
depth. On this node every one must either be refused (`Invalid prompt: `) or run
with a bounded cost per token, without stalling the sequences beside it.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

# How a bomb may fail as an honest task failure, not the node's: max_tokens cut its answer short, or the
# answer broke a keyword decoding did not enforce (models/grammar/checks.py).
HONEST_FAILURES = ("(max_tokens reached", "not complete JSON", "which decoding did not enforce")


@dataclass(frozen=True)
class GrammarBomb:
    """One constraint: a regex (the SDK's Ollama form) or a JSON schema."""

    name: str
    regex: str | None = None
    json_schema: dict[str, Any] | None = None

    def schema_field(self) -> str:
        """The workflow task's `schema` value: base64 of the regex, or the JSON schema as text."""
        if self.regex is not None:
            return base64.b64encode(self.regex.encode()).decode()
        return json.dumps(self.json_schema)

    def workflow(self, max_tokens: int) -> dict[str, Any]:
        """A one-step workflow that generates under this constraint."""
        return {
            "config": {"max_steps": 1, "max_time": 60, "max_tokens": max_tokens},
            "tasks": [
                {
                    "id": "g",
                    "operator": "generation",
                    "messages": [{"role": "user", "content": "Say hi."}],
                    "schema": self.schema_field(),
                    "outputs": [{"type": "write", "key": "r"}],
                }
            ],
            "steps": [{"source": "g", "target": "_end"}],
            "return_value": {"input": {"type": "read", "key": "r"}},
        }


def _nested_object(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


def _nested_array(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "number"}
    for _ in range(depth):
        schema = {"type": "array", "items": schema}
    return schema


# Within every workflow cap (tests/unit/workflows: these pass parse_workflow).
WORKFLOW_BOMBS = [
    GrammarBomb("regex_90_optional_groups", regex="(x?){1000}" * 90 + "x"),
    GrammarBomb("regex_4_optional_groups", regex="(x?){1000}" * 4 + "x"),
    GrammarBomb("pattern_19_optional_groups", json_schema={"type": "string", "pattern": "(x?){1000}" * 19 + "x"}),
    GrammarBomb("regex_nested_quantifiers", regex="((x?){50}){50}"),
    GrammarBomb("regex_nested_quantifiers_3", regex="(((x?){20}){20}){20}"),
    GrammarBomb("regex_alternation_repeated", regex="((x|xx|xxx)?){3000}"),
    GrammarBomb("regex_3000_alternatives", regex="(" + "|".join(f"a{i}b" for i in range(3000)) + ")*"),
    GrammarBomb("regex_huge_count", regex="[a-z]{10000}"),
    GrammarBomb("regex_overlapping_classes", regex="([a-z0-9]{0,30}[^a]{0,30}){100}"),
    GrammarBomb("regex_dot_stars", regex="(.*a.*b.*c.*d.*e.*f.*g.*h){100}"),
    GrammarBomb("regex_100_deep", regex="(" * 100 + "x" + ")" * 100),
    GrammarBomb("pattern_1000_open_parens", json_schema={"type": "string", "pattern": "(" * 1000}),
    GrammarBomb("pattern_1000_deep", json_schema={"type": "string", "pattern": "(" * 500 + "x" + ")" * 500}),
    GrammarBomb("schema_nested_objects", json_schema=_nested_object(11)),  # 23 levels of JSON: the cap is 24
    GrammarBomb("schema_nested_arrays", json_schema=_nested_array(22)),
    GrammarBomb("schema_nested_arrays_too_deep", json_schema=_nested_array(30)),
    GrammarBomb("schema_enum_1000", json_schema={"enum": [f"value {i}" for i in range(1000)]}),
    GrammarBomb(
        "schema_any_of_150",
        json_schema={
            "anyOf": [
                {"type": "object", "properties": {f"k{i}": {"type": "string"}}, "required": [f"k{i}"]}
                for i in range(150)
            ]
        },
    ),
    GrammarBomb(
        "schema_patterned_properties",
        json_schema={
            "type": "object",
            "properties": {f"p{i}": {"type": "string", "pattern": "(x?){40}y"} for i in range(150)},
        },
    ),
]

# Past the workflow caps, so only a caller of the batched runtime itself can send them.
RUNTIME_BOMBS = [
    GrammarBomb("regex_5000_open_parens", regex="(" * 5000),
    GrammarBomb("schema_enum_20000", json_schema={"enum": [f"value number {i}" for i in range(20000)]}),
    GrammarBomb("schema_nested_objects_200", json_schema=_nested_object(200)),
    GrammarBomb("schema_nested_objects_5000", json_schema=_nested_object(5000)),
    GrammarBomb("regex_expansion", regex="((x?){300}){300}"),
]

# Variants outside the issue's list, within the workflow caps: other keywords and regex features.
VARIANT_BOMBS = [
    GrammarBomb(
        "schema_recursive_ref",
        json_schema={
            "$defs": {"n": {"type": "object", "properties": {"c": {"type": "array", "items": {"$ref": "#/$defs/n"}}}}},
            "$ref": "#/$defs/n",
        },
    ),
    GrammarBomb("regex_backreference", regex="(a+)\\1{50}"),
    GrammarBomb("regex_lookahead", regex="(?=a{1000})a*"),
    GrammarBomb("regex_200_alternatives_of_optionals", regex="(" + "|".join("x?" * 50 for _ in range(200)) + ")y"),
    GrammarBomb("schema_pattern_properties", json_schema={"type": "object", "patternProperties": {"^(x?){200}$": {}}}),
    GrammarBomb("schema_one_of_1000_consts", json_schema={"oneOf": [{"const": f"v{i}"} for i in range(1000)]}),
    GrammarBomb("schema_string_min_length_huge", json_schema={"type": "string", "minLength": 100000}),
    GrammarBomb(
        "schema_array_min_items_huge", json_schema={"type": "array", "items": {"type": "integer"}, "minItems": 10**6}
    ),
    GrammarBomb(
        "schema_integer_range_multiple_of", json_schema={"type": "integer", "minimum": -(10**15), "multipleOf": 7}
    ),
]
