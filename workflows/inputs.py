"""Resolving an InputValue against memory, and writing a step's outputs."""

from __future__ import annotations

from workflows.errors import InvalidStepError, LimitExceededError
from workflows.memory import Entry, Memory, render_entry
from workflows.schema import RESULT_VALUE, InputValue, StepInput, StepOutput


class Entries(list[Entry]):
    """Several entries (`get_all`, `search`): told apart from one entry that is a JSON array."""


# What an input resolves to: an entry (a JSON array is one entry), several entries, or None for "nothing".
Resolved = Entry | Entries | None


async def resolve(value: InputValue, memory: Memory) -> Resolved:
    """The value an input names; None when it names nothing."""
    match value.type:
        case "input":
            return memory.read("__input")
        case "read":
            return memory.read(value.key)
        case "pop":
            return memory.pop(value.key)
        case "peek":
            return memory.peek(value.key, value.index or 0)
        case "get_all":
            return Entries(memory.get_all(value.key)) or None
        case "size":
            return str(memory.size(value.key))
        case "string":
            return value.key
        case "search":
            assert value.search_query is not None  # enforced by the schema
            query = render(await resolve(value.search_query, memory))
            return Entries(await memory.files.search(query)) or None
    raise AssertionError(f"unhandled input type {value.type}")


def render(resolved: Resolved) -> str:
    """Text of a resolved value: several entries joined by " \\n", JSON (arrays too) compact, nothing as ""."""
    if resolved is None:
        return ""
    if isinstance(resolved, Entries):
        return " \n".join(render_entry(e) for e in resolved)
    return render_entry(resolved)


def check_rendered(size: int, limit: int | None) -> None:
    """Raise LimitExceededError once rendered inputs pass `limit` characters."""
    if limit is not None and size > limit:
        raise LimitExceededError(
            "memory", f"memory limit exceeded: the task's inputs render to more than {limit} characters"
        )


async def resolve_inputs(inputs: list[StepInput], memory: Memory, limit: int | None = None) -> dict[str, str]:
    """Render every declared input; a required one that resolves to nothing fails.

    With `limit`, inputs rendering to more than `limit` characters together
    raise LimitExceededError (many inputs naming one large stack).
    """
    rendered: dict[str, str] = {}
    size = 0
    for item in inputs:
        resolved = await resolve(item.value, memory)
        if resolved is None and item.required:
            source = (
                "the task's prompt (none was given)"
                if item.value.type == "input"
                else (f"{item.value.type} {item.value.key!r}")
            )
            raise InvalidStepError(f"required input {item.name!r} ({source}) resolved to nothing")
        rendered[item.name] = render(resolved)
        size += len(rendered[item.name])
        check_rendered(size, limit)
    return rendered


async def write_outputs(outputs: list[StepOutput], result: str, memory: Memory) -> None:
    """Store the step's result (or literal values) where its outputs say."""
    for out in outputs:
        value = result if out.value == RESULT_VALUE else out.value
        match out.type:
            case "write":
                memory.write(out.key, value)
            case "push":
                memory.push(out.key, value)
            case "insert":
                await memory.files.insert(value)
