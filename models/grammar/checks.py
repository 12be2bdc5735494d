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

import functools
import json
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

import structlog

from models.grammar.schema import normalize_schema

log = structlog.get_logger(__name__)

AnswerCheck = Callable[[Any], "str | None"]

# What one check may cost, in keyword evaluations (an `enum` counts its values, a combinator its branches,
# `uniqueItems` its items): a few us each here, so at most ~0.1 s of CPU. A workflow's schema and its answer are bounded (32 KiB of
# schema, max_tokens of answer), but `anyOf` over 500 branches on 2,000 items is a million evaluations
# (6 s). Past the budget the answer is not checked: decoding enforced what it could.
CHECK_BUDGET = 20_000


# Keywords whose cost grows with their own value: the values an `enum` compares, the branches of a combinator.
_PER_VALUE = frozenset({"enum", "anyOf", "oneOf", "allOf"})


class _OverBudget(Exception):
    pass


def answer_check(schema: dict[str, Any]) -> AnswerCheck | None:
    """A check of a parsed answer against `schema`; None when the schema cannot be checked here (jsonschema
    cannot read it, or leaving its regexes out would make the check refuse valid answers: `_NEGATING`).

    The check returns None for an answer the schema accepts, or one it cannot judge (within CHECK_BUDGET,
    or a schema that fails to evaluate: a `$ref` loop, a reference outside it), else the name of the first
    keyword it breaks (never the answer's text: error texts carry no task data).
    """
    normalized = normalize_schema(schema)
    if _has_key(normalized, _REGEX_KEYWORDS) and _has_key(normalized, _NEGATING):
        return None  # without its regexes, `not {pattern}` is `not {}` and oneOf's branches all match: false refusals
    plain = _without_regexes(normalized)
    import jsonschema  # on first use: the daemon never needs it
    import referencing

    try:
        # An empty registry: no reference is ever retrieved. jsonschema's default GETs, with urllib, no
        # timeout and outside the egress policy, any URL a `$dynamicRef` (or a `$ref` under a remote `$id`) names.
        validator = _counted(jsonschema.validators.validator_for(plain))(plain, registry=referencing.Registry())
    except Exception:  # noqa: BLE001 - a schema jsonschema cannot read: decoding enforced what it could
        return None

    def check(answer: Any) -> str | None:
        budget = _BUDGET.set([CHECK_BUDGET])
        try:
            error = jsonschema.exceptions.best_match(validator.iter_errors(answer))
        except _OverBudget:
            log.info("answer not checked against its schema: past the check's budget", budget=CHECK_BUDGET)
            return None
        except Exception as exc:  # noqa: BLE001 - a `$ref` loop (RecursionError), a reference not in the schema...
            # ...: the check cannot judge the answer, which is not the answer's fault. Decoding enforced what it could.
            log.info("answer not checked against its schema: the check cannot read it", error=type(exc).__name__)
            return None
        finally:
            _BUDGET.reset(budget)
        return None if error is None else str(error.validator)

    return check


# What the check running now has left of CHECK_BUDGET (a list: the keywords charge it in place).
_BUDGET: ContextVar[list[int]] = ContextVar("answer_check_budget")


@functools.cache
def _counted(base: Any) -> Any:
    """`base`, a jsonschema validator class, whose every keyword charges the running check's budget.

    Made once per class (jsonschema's `extend` takes ~0.5 ms, ten times a check of a small answer).
    """
    import jsonschema

    def counted(name: str, keyword: Callable[..., Any]) -> Callable[..., Iterator[Any]]:
        def evaluate(validator: Any, value: Any, instance: Any, schema: Any) -> Iterator[Any]:
            sized = value if name in _PER_VALUE else instance if name == "uniqueItems" else ()
            left = _BUDGET.get()
            left[0] -= 1 + (len(sized) if isinstance(sized, list) else 0)
            if left[0] < 0:
                raise _OverBudget
            errors = keyword(validator, value, instance, schema)
            if errors is not None:
                yield from errors

        return evaluate

    keywords = {
        name: counted(name, keyword) for name, keyword in {**base.VALIDATORS, "uniqueItems": _unique_items}.items()
    }
    return jsonschema.validators.extend(base, keywords)  # type: ignore[no-untyped-call]


def _unique_items(validator: Any, unique: Any, instance: Any, schema: Any) -> Iterator[Any]:
    """`uniqueItems` in linear time (jsonschema compares unhashable items pairwise: 2 s for 2,000 objects)."""
    if not unique or not validator.is_type(instance, "array"):
        return
    seen: set[str] = set()
    for item in instance:
        key = json.dumps(_canonical(item), sort_keys=True)
        if key in seen:
            import jsonschema

            yield jsonschema.exceptions.ValidationError("has non-unique elements")
            return
        seen.add(key)


def _canonical(value: Any) -> Any:
    """`value` with JSON Schema's equality made plain: 1.0 is 1, true is not 1."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_canonical(item) for item in value]
    if isinstance(value, dict):
        return {key: _canonical(item) for key, item in value.items()}
    return value


# Keywords under which leaving a regex keyword out makes the check reject more, not less.
_NEGATING = ("not", "if", "oneOf", "unevaluatedProperties", "unevaluatedItems", "maxContains")


def _has_key(schema: Any, keys: tuple[str, ...]) -> bool:
    """Whether any object in `schema` has one of `keys` (a property of that name counts too: a safe overestimate)."""
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if any(key in node for key in keys):
                return True
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False


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
