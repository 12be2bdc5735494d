"""The field at fault in a request that failed validation, named the same way on every API.

`tasks[0].workflow`, `messages[2].content`: the first error's location in the body (or the
query, or the path) and its message without pydantic's `Value error, ` prefix.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi.exceptions import RequestValidationError

_WHERE = ("body", "query", "path")


def field_path(loc: Sequence[int | str]) -> str:
    """`loc` as a path: `tasks[0].workflow` (without the leading `body`/`query`/`path`; empty for the body)."""
    parts = list(loc)
    if parts and parts[0] in _WHERE:
        parts = parts[1:]
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in parts).lstrip(".")


def first_error(exc: RequestValidationError) -> tuple[str, str]:
    """The path and message of the first error (the path is empty when the whole body is at fault)."""
    first = exc.errors()[0]
    return field_path(first["loc"]), str(first["msg"]).removeprefix("Value error, ")
