"""The nine edge-condition expressions."""

from __future__ import annotations

import operator
import re
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
# A number as JSON and most languages write one, in ASCII. Python's float() also takes
# "1_000", other scripts' digits ("٣"), "inf" and "nan", which are not numbers here.
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)


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
    if not (_NUMBER.fullmatch(value) and _NUMBER.fullmatch(expected)):
        log.warning("condition value not numeric", expression=expression, value=value[:80], expected=expected[:80])
        return False
    return _NUMERIC[expression](float(value), float(expected))
