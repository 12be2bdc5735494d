"""What the engine knows about a tool: a name, a description, a parameter schema, the function that runs it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

ToolFunction = Callable[[dict[str, Any]], Awaitable[str]]


@dataclass(frozen=True)
class Tool:
    """A tool offered to the model; `run` is None for call-only (`custom`) tools."""

    name: str
    description: str
    parameters: dict[str, Any]
    run: ToolFunction | None = None
