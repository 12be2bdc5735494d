"""Building the run's result string from the return value specification."""

from __future__ import annotations

import asyncio
import json

from workflows.errors import InvalidStepError, ResultTooLargeError, WorkflowError
from workflows.inputs import Entries, render, resolve
from workflows.key_sources import KeySources
from workflows.memory import Memory, render_entry
from workflows.schema import PostProcess, ReturnValue


async def build_result(
    spec: ReturnValue, memory: Memory, limit: int | None = None, sources: KeySources | None = None
) -> str:
    """The result text: resolved input(s), optionally as a JSON array, post-processed.

    With `limit`, a post-processing step that would grow the text past `limit`
    characters raises ResultTooLargeError before it runs (to_upper and to_lower, which
    can grow it, after). The steps are few (schema.MAX_POST_PROCESS), each may take tens
    of ms over millions of characters, and other tasks run between them. An input that names
    nothing raises InvalidStepError (deterministic) when `sources` says nothing
    in the task can ever fill it, a plain WorkflowError otherwise.
    """
    values = spec.input if isinstance(spec.input, list) else [spec.input]
    resolved = []
    for i, value in enumerate(values):
        item = await resolve(value, memory)
        if item is None and value.type == "get_all":
            item = Entries()  # an empty stack is an empty list, not a missing value
        if item is None:
            where = f"return_value.input[{i}]" if isinstance(spec.input, list) else "return_value.input"
            if sources is not None and sources.never_filled(value):
                raise InvalidStepError(
                    f"{where}: {value.type} {value.key!r} is filled by no step and no external_memory"
                )
            raise WorkflowError(f"{where}: {value.type} {value.key!r} holds nothing at the end of the run")
        resolved.append(item)

    is_list = isinstance(spec.input, list) or isinstance(resolved[0], Entries)
    parts: list[str] = []
    size = 0
    # Rendered piece by piece against `limit`: many inputs naming one large stack must not multiply it.
    for item in resolved:
        for piece in item if spec.to_json and is_list and isinstance(item, Entries) else [item]:
            parts.append(render_entry(piece) if spec.to_json and is_list else render(piece))
            size += len(parts[-1])
            if limit is not None and size > limit:
                raise ResultTooLargeError(f"result too large: the return value renders to more than {limit} characters")
    # A list (get_all, several inputs) with to_json becomes a JSON array of strings.
    text = json.dumps(parts, ensure_ascii=False) if spec.to_json and is_list else "\n".join(parts)
    for step in spec.post_process:
        await asyncio.sleep(0)  # each step may take tens of ms on millions of characters
        text = post_process(text, step, limit)
        if limit is not None and len(text) > limit:  # to_upper/to_lower can grow text (ß -> SS, ﬃ -> FFI)
            raise ResultTooLargeError(f"result too large: post_process made it more than {limit} characters")
    return text


def post_process(text: str, step: PostProcess, limit: int | None = None) -> str:
    """Apply one post-processing step."""
    match step.process_type:
        case "replace":
            if not step.lhs:
                return text
            rhs = step.rhs or ""
            if limit is not None and len(text) + text.count(step.lhs) * (len(rhs) - len(step.lhs)) > limit:
                raise ResultTooLargeError(f"result too large: post_process replace would pass {limit} characters")
            return text.replace(step.lhs, rhs)
        case "append":
            if limit is not None and len(text) + len(step.rhs or "") > limit:
                raise ResultTooLargeError(f"result too large: post_process append would pass {limit} characters")
            return text + (step.rhs or "")
        case "prepend":
            if limit is not None and len(text) + len(step.lhs or "") > limit:
                raise ResultTooLargeError(f"result too large: post_process prepend would pass {limit} characters")
            return (step.lhs or "") + text
        case "trim":
            return text.strip()
        case "trim_start":
            return text.lstrip()
        case "trim_end":
            return text.rstrip()
        case "to_lower":
            return text.lower()
        case "to_upper":
            return text.upper()
    raise AssertionError(f"unhandled post-process {step.process_type}")
