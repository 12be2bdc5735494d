"""The typed IPC boundary between the daemon and an execution process.

Every message is a pydantic model, sent as one line of JSON (JSON never holds a raw
newline) over a Unix socketpair; `asyncio.StreamReader.readline` does the framing.
Daemon -> child: configure (once, first), run, cancel, probe.
Child -> daemon: ready or load_failed (once, answering configure), done or failed
(one per run), pong (one per probe).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

# A workflow or a result is at most a few MB; a line past this is a broken peer.
MAX_FRAME_BYTES = 64 * 1024 * 1024


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Configure(Message):
    """Which model to load, with the daemon's full settings (JSON) to build it from."""

    kind: Literal["configure"] = "configure"
    model: str
    settings: dict[str, Any]


class RunTask(Message):
    """Run one workflow; the child answers with `done` or `failed` for this task_id."""

    kind: Literal["run"] = "run"
    task_id: str
    workflow: dict[str, Any]
    prompt: str | None = None
    deadline_ns: int


class Cancel(Message):
    """Stop a running task; the child answers `failed` with `reason` for it."""

    kind: Literal["cancel"] = "cancel"
    task_id: str
    reason: str


class Probe(Message):
    """Are you alive and is your event loop free? Answered by `pong`."""

    kind: Literal["probe"] = "probe"
    probe_id: int


class Ready(Message):
    """The model loaded (and, if asked, was benchmarked); the child runs tasks."""

    kind: Literal["ready"] = "ready"
    model: str
    parallel: int = Field(ge=1)
    generation_tps: float | None = None
    prompt_tps: float | None = None
    max_rss_mb: int | None = Field(default=None, ge=1)  # the RSS limit the daemon enforces (None: none)


class LoadFailed(Message):
    """The model cannot serve here (missing file, too slow...); the child exits after this."""

    kind: Literal["load_failed"] = "load_failed"
    model: str
    error: str


class TaskDone(Message):
    kind: Literal["done"] = "done"
    task_id: str
    text: str
    steps: int
    prompt_tokens: int
    completion_tokens: int


class TaskFailed(Message):
    """The task ended with an error; `error` is the text of its error result."""

    kind: Literal["failed"] = "failed"
    task_id: str
    error: str


class Pong(Message):
    kind: Literal["pong"] = "pong"
    probe_id: int
    running: int
    slots_free: int
    queued: int


ToChild = Annotated[Configure | RunTask | Cancel | Probe, Field(discriminator="kind")]
FromChild = Annotated[Ready | LoadFailed | TaskDone | TaskFailed | Pong, Field(discriminator="kind")]
_TO_CHILD: TypeAdapter[ToChild] = TypeAdapter(ToChild)
_FROM_CHILD: TypeAdapter[FromChild] = TypeAdapter(FromChild)


class ProtocolError(Exception):
    """A line from the other side is not a message of the protocol."""


def encode(message: Message) -> bytes:
    return message.model_dump_json().encode("utf-8") + b"\n"


def decode_to_child(line: bytes) -> ToChild:
    try:
        return _TO_CHILD.validate_json(line)
    except ValidationError as exc:
        raise ProtocolError(f"bad message to the execution process: {exc}") from None


def decode_from_child(line: bytes) -> FromChild:
    try:
        return _FROM_CHILD.validate_json(line)
    except ValidationError as exc:
        raise ProtocolError(f"bad message from the execution process: {exc}") from None


async def read_line(reader: asyncio.StreamReader) -> bytes | None:
    """The next frame, or None at end of stream (the other side closed or died)."""
    try:
        line = await reader.readline()
    except (asyncio.LimitOverrunError, ValueError) as exc:
        raise ProtocolError(f"frame longer than {MAX_FRAME_BYTES} bytes") from exc
    except ConnectionError:
        return None
    if not line or not line.endswith(b"\n"):
        return None
    return line
