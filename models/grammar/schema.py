"""JSON schema -> checked GBNF, for the schema forms Dria's SDK sends.

- OpenAI form: a strict JSON schema, converted by llama-cpp-python's converter.
- Gemini form: upper-case type names (`"OBJECT"`, `"STRING"`), a property given as a
  bare type name (`"kind": "STRING"`), and a nested type object (`{"type": {"type":
  "ARRAY", ...}}`): normalized into a JSON schema first.
- `pattern` keywords go through this package's regex converter, and literals through
  its escaping: llama-cpp-python 0.3.36 mis-escapes `"`, `\\` and `\\.` in both.
Every result passes `check_gbnf`.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from models.grammar.gbnf import GrammarError, check_gbnf
from models.grammar.regex import gbnf_literal, regex_expression

_TYPES = {"OBJECT", "ARRAY", "STRING", "INTEGER", "NUMBER", "BOOLEAN", "NULL"}


def normalize_schema(schema: Any) -> Any:
    """A copy of `schema` with Gemini-style type names and shapes turned into JSON schema."""
    if isinstance(schema, list):
        return [normalize_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "type" and isinstance(value, dict):  # {"type": {"type": "ARRAY", ...}}
            out.update(normalize_schema(value))
        elif key == "type" and isinstance(value, str) and value in _TYPES:
            out["type"] = value.lower()
        elif key == "type" and isinstance(value, list):
            out["type"] = [v.lower() if isinstance(v, str) and v in _TYPES else v for v in value]
        elif key == "properties" and isinstance(value, dict):
            out["properties"] = {
                name: {"type": prop.lower()} if isinstance(prop, str) and prop in _TYPES else normalize_schema(prop)
                for name, prop in value.items()
            }
        else:
            out[key] = normalize_schema(value)
    return out


@cache
def _converter_class() -> type:
    """llama-cpp-python's converter with this package's literal escaping and regex translation.

    Its own `_format_literal` leaves a backslash unescaped (`"b\\"c"` for the constant
    `b"c`), which breaks the grammar. Built on first use: importing llama_cpp maps
    llama.cpp's libraries, which the daemon (it validates no workflow) never needs.
    """
    from llama_cpp.llama_grammar import SchemaConverter

    class Converter(SchemaConverter):
        def _format_literal(self, literal: str) -> str:
            return gbnf_literal(literal)

        def _visit_pattern(self, pattern: str, name: str) -> str:
            rule: str = self._add_rule(name, '"\\"" (' + regex_expression(pattern) + ') "\\"" space')  # type: ignore[no-untyped-call]
            return rule

    return Converter


def json_schema_to_gbnf(schema: dict[str, Any]) -> str:
    """A checked GBNF grammar (root `root`) for JSON following `schema`; GrammarError names the problem."""
    try:
        converter = _converter_class()(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
        resolved = converter.resolve_refs(normalize_schema(schema), "input")
        converter.visit(resolved, "")
        gbnf = converter.format_grammar()
    except GrammarError:
        raise
    except RecursionError:
        raise GrammarError("json_schema nests too deeply") from None
    except Exception as exc:  # the converter raises assorted errors (KeyError, AssertionError, ...) on bad schemas
        # The converter's message quotes the schema: task data, which error texts never carry.
        raise GrammarError(f"json_schema cannot be turned into a grammar ({type(exc).__name__})") from None
    return check_gbnf(gbnf)
