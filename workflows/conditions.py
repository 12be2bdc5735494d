"""The nine edge-condition expressions."""

from __future__ import annotations

import operator
from collections.abc import Callable

import structlog

from workflows.memory import FileStore
from workflows.schema import Expression

log = structlog.get_logger(__name__)

_NUMERIC: dict[str, Callable[[float, float], bool]] = {
    "GreaterThan": operator.gt,
    "LessThan": operator.lt,
    "GreaterThanOrEqual": operator.ge,
    "LessThanOrEqual": operator.le,
}


async def evaluate(expression: Expression, value: str, expected: str, files: FileStore) -> bool:
    """Whether `value <expression> expected` holds.

    A non-number in a numeric comparison makes the condition false (logged).
    """
    value, expected = value.strip(), expected.strip()
    match expression:
        case "Equal":
            return value == expected
        case "NotEqual":
            return value != expected
        case "Contains":
            return expected in value
        case "NotContains":
            return expected not in value
        case "HaveSimilar":
            return await files.have_similar(value)
    try:
        a, b = float(value), float(expected)
    except ValueError:
        log.warning("condition value not numeric", expression=expression, value=value[:80], expected=expected[:80])
        return False
    return _NUMERIC[expression](a, b)
