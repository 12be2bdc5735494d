"""Size and depth caps (and local-only `$ref`) on the JSON schemas a workflow hands to constrained decoding.

A schema becomes a grammar; a small schema can expand into a huge
one (`maxLength: 10**9`, `minItems` in the millions, a regex `pattern` of
nested counted repetitions). These caps run at workflow validation, before
anything reaches the batched runtime, and fail with a ValueError naming the cap.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_SCHEMA_CHARS = 32 * 1024
MAX_SCHEMA_DEPTH = 24
MAX_SCHEMA_NODES = 2000
MAX_BOUND = 4096  # largest minItems/maxItems/minLength/... a schema may name
MAX_PATTERN_CHARS = 1024
MAX_PATTERN_EXPANSION = 20_000  # characters a `pattern` may expand to once counts are unrolled
MAX_PATTERN_NESTING = 100  # groups inside groups in a `pattern`

_COUNT = re.compile(r"\{\s*(\d+)\s*(,)?\s*(\d*)\s*\}", re.ASCII)
MAX_NUMBER = 2**63
_NUMBERS = frozenset({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"})
_BOUNDS = frozenset(
    {"minItems", "maxItems", "minLength", "maxLength", "minProperties", "maxProperties", "minContains", "maxContains"}
)


class SchemaTooLargeError(ValueError):
    """A schema passes one of this module's caps."""


def check_schema(schema: Any) -> None:
    """Raise SchemaTooLargeError when `schema` passes a size, depth or repetition cap."""
    try:
        size = len(json.dumps(schema, separators=(",", ":")))
    except (ValueError, RecursionError):
        raise SchemaTooLargeError(f"nests deeper than {MAX_SCHEMA_DEPTH} levels") from None
    if size > MAX_SCHEMA_CHARS:
        raise SchemaTooLargeError(f"is {size} characters of JSON; this node accepts at most {MAX_SCHEMA_CHARS}")
    nodes = 0
    stack: list[tuple[Any, int]] = [(schema, 1)]
    while stack:
        node, depth = stack.pop()
        nodes += 1
        if depth > MAX_SCHEMA_DEPTH:
            raise SchemaTooLargeError(f"nests deeper than {MAX_SCHEMA_DEPTH} levels")
        if nodes > MAX_SCHEMA_NODES:
            raise SchemaTooLargeError(f"has more than {MAX_SCHEMA_NODES} values")
        if isinstance(node, list):
            stack.extend((item, depth + 1) for item in node)
        elif isinstance(node, dict):
            _check_keywords(node)
            stack.extend((value, depth + 1) for value in node.values())


def _check_keywords(node: dict[str, Any]) -> None:
    for key in ("$ref", "$dynamicRef", "$recursiveRef"):
        ref = node.get(key)
        if ref is not None and not (isinstance(ref, str) and ref.startswith("#")):
            # A remote reference would have a schema library fetch a URL (egress outside the tools' policy).
            raise SchemaTooLargeError(f"has a {key} outside the schema; only local references ('#...') are accepted")
    for key in _BOUNDS & node.keys():
        value = node[key]
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > MAX_BOUND:
            raise SchemaTooLargeError(f"{key} {value} is larger than this node's limit of {MAX_BOUND}")
    for key in _NUMBERS & node.keys():
        value = node[key]
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not -MAX_NUMBER <= value <= MAX_NUMBER:
            # Integer ranges become digit-by-digit grammar rules: keep them to int64 sizes.
            raise SchemaTooLargeError(f"{key} is outside -2^63..2^63")
    pattern = node.get("pattern")
    if isinstance(pattern, str):
        if len(pattern) > MAX_PATTERN_CHARS:
            raise SchemaTooLargeError(f"has a pattern of {len(pattern)} characters (at most {MAX_PATTERN_CHARS})")
        expansion = pattern_expansion(pattern)
        if expansion > MAX_PATTERN_EXPANSION:
            raise SchemaTooLargeError(
                f"has a pattern whose counted repetitions expand to about {expansion} characters "
                f"(at most {MAX_PATTERN_EXPANSION})"
            )


def pattern_expansion(pattern: str) -> int:
    """About how long `pattern` gets once every `{m,n}` count is written out.

    Alternatives and sequences add up, a counted repetition multiplies its atom
    by its largest count (the lower one for `{m,}`); `*`, `+` and `?` count once.
    Malformed patterns are measured as well as they parse; the converter
    rejects them later.
    """
    total, _ = _sequence(pattern, 0, 0)
    return total


def _sequence(pattern: str, i: int, depth: int) -> tuple[int, int]:
    """Expansion of alternatives from `i` up to a closing `)` (or the end); returns (size, next index)."""
    if depth > MAX_PATTERN_NESTING:
        raise SchemaTooLargeError(f"has a pattern whose groups nest more than {MAX_PATTERN_NESTING} deep")
    total = 0
    current = 0
    last = 0  # size of the last atom, which a quantifier applies to
    while i < len(pattern):
        char = pattern[i]
        if char == ")":
            return total + current, i + 1
        if char == "|":
            total, current, last = total + current, 0, 0
            i += 1
            continue
        if char == "(":
            last, i = _sequence(pattern, i + 1, depth + 1)
            last = max(last, 1)
        elif char == "[":
            i = _class_end(pattern, i)
            last = 1
        elif char == "\\":
            i += 2
            last = 1
        elif char == "{":
            count, i = _count(pattern, i)
            if count is not None:
                current += last * (count - 1)
                last *= count
                continue
            last = 1
        else:
            i += 1
            last = 1 if char not in "*+?" else 0
        current += last
    return total + current, i


def _class_end(pattern: str, i: int) -> int:
    i += 1
    if i < len(pattern) and pattern[i] == "^":
        i += 1
    if i < len(pattern) and pattern[i] == "]":
        i += 1
    while i < len(pattern) and pattern[i] != "]":
        i += 2 if pattern[i] == "\\" else 1
    return i + 1


def _count(pattern: str, i: int) -> tuple[int | None, int]:
    """The largest count of a `{m}`, `{m,}` or `{m,n}` at `i`, or None for a literal brace."""
    match = _COUNT.match(pattern, i)
    if match is None:
        return None, i + 1
    low, comma, high = match.groups()
    count = int(high) if high else int(low) + (1 if comma else 0)
    return max(count, 1), match.end()
