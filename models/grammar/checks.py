"""A JSON schema checked on the answer: what constrained decoding did not enforce.

llguidance compiles a schema with keywords it does not implement (`uniqueItems`, `not`,
`if`/`then`/`else`, `contains`, `dependentRequired`, `propertyNames`, `unevaluated*`, ...)
by leaving them out, and `oneOf` as `anyOf` (`compile.py`: lenient); a remote engine is sent
the schema with `strict: false` and may enforce none of it. So every answer of a JSON-schema
step (a tool call's arguments among them) is validated against the schema (jsonschema): a
result is never valid JSON that the schema rejects.

The check runs no regular expression: `pattern` and `patternProperties` are enforced by
local decoding (in Rust, in linear time), and Python's `re` on a hostile pattern can
backtrack for ever. They are taken out of the schema the check reads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from models.grammar.schema import normalize_schema

AnswerCheck = Callable[[Any], "str | None"]


def answer_check(schema: dict[str, Any]) -> AnswerCheck | None:
    """A check of a parsed answer against `schema`, or None when jsonschema cannot read the schema.

    The check returns None for an answer the schema accepts, else the name of the first
    keyword it breaks (never the answer's text: error texts carry no task data).
    """
    plain = _without_regexes(normalize_schema(schema))
    import jsonschema  # only for the schemas that need it: most never do

    try:
        validator_class = jsonschema.validators.validator_for(plain)
        validator = validator_class(plain)
    except Exception:  # noqa: BLE001 - a schema jsonschema cannot read: decoding enforced what it could
        return None

    def check(answer: Any) -> str | None:
        try:
            error = jsonschema.exceptions.best_match(validator.iter_errors(answer))
        except RecursionError:
            return "nesting"
        except Exception as exc:  # noqa: BLE001 - e.g. a pattern jsonschema's `re` cannot compile
            return type(exc).__name__
        return None if error is None else str(error.validator)

    return check


# Keywords whose value maps names (of properties, definitions) to schemas: the names are data.
_NAMED_SCHEMAS = ("properties", "$defs", "definitions", "dependentSchemas")
# Enforced by decoding with regexes (llguidance implements them); `additionalProperties` is read
# against `patternProperties`' regexes, so it goes with them.
_REGEX_KEYWORDS = ("pattern", "patternProperties")


def _without_regexes(schema: Any) -> Any:
    """A copy of `schema` without the keywords that need a regular expression to check."""
    if isinstance(schema, list):
        return [_without_regexes(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _REGEX_KEYWORDS or (key == "additionalProperties" and "patternProperties" in schema):
            continue
        if key in _NAMED_SCHEMAS and isinstance(value, dict):
            out[key] = {name: _without_regexes(sub) for name, sub in value.items()}
        elif key in ("enum", "const", "default", "examples"):  # values, not schemas
            out[key] = value
        else:
            out[key] = _without_regexes(value)
    return out
