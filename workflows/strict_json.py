"""JSON as the standard has it, for `json.loads`: Python's parser takes NaN, Infinity and -Infinity (no JSON
values) and reads a number too large for a float (1e999) as infinity; these hooks refuse them.

`json.loads(text, parse_constant=no_constant)` refuses the constants (a workflow, a JSON schema: schema.py);
adding `parse_float=finite_float` refuses every non-finite number (an execution process's JSON log lines, read
by the daemon: node/daemon/processes/child_output.py). Each raises ValueError, as the parser's own errors are.
"""

from __future__ import annotations

import math
from typing import Any


def no_constant(name: str) -> Any:
    """`parse_constant`: NaN, Infinity and -Infinity are not JSON."""
    raise ValueError(f"{name} is not JSON")


def finite_float(text: str) -> float:
    """`parse_float`: the number, unless it is past a float's range (1e999 would be read as infinity)."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is not finite")
    return value
