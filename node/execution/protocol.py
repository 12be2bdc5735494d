"""The typed IPC boundary between the daemon and an execution process.

Every message is a pydantic model, sent as one line of JSON (JSON never holds a raw
newline) over a Unix socketpair; `asyncio.StreamReader.readline` does the framing.
Daemon -> child: configure (once, first), run, cancel, probe, fetched (the answer to a fetch).
Child -> daemon: ready or load_failed (once, answering configure), fetch (a tool's HTTP request, which the
daemon makes: the process has no network and no operator secret, workflows/tool_http.py), delta (text of a
streaming run as it generates, in order, before its answer), done or failed
(one per run), pong (one per probe, with the decode loop's progress: the daemon's
stall watchdog reads it, see stall.py), benchmarked (only after a `ready` that said its
speed is measured later: a clean figure, after a few provisional ones at most), measured
(a speed measured, for the daemon's cache: before `ready` or after it).
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from workflows.options import ToolSettings
from workflows.tool_http import RawResponse, ToolRequest

# A workflow or a result is at most a few MB; a line past this is a broken peer.
MAX_FRAME_BYTES = 64 * 1024 * 1024
# The daemon reads what a child sends as untrusted (a hostile workflow may have taken the child over):
# every field is bounded, so no line costs the daemon more than its bytes, whatever it holds.
MAX_TEXT_CHARS = 4 * 1024 * 1024  # a result's text: far past what the 256 KiB result envelope carries
MAX_ERROR_CHARS = 2000  # an error result's text (the engine's own are cut at 500)
MAX_TRACES = 4096  # generations of one task with a proof (the proof keeps the last 256)
MAX_TRACE_TOKENS = 1 << 17  # per list of a trace: far beyond any context a node serves
MAX_PARALLEL = 1024  # sequences one execution process runs at once
MAX_ID_CHARS = 256  # a task id or model name a child names (the wire's task ids are at most 128)
MAX_TPS = 1e6  # tokens/s a child may report: what publishers clamp a heartbeat's `tps` to
MAX_PROVISIONAL_SPEEDS = 8  # provisional `benchmarked` a child may send (measured beside tasks)
MAX_MEASURED_SPEEDS = 4  # `measured` a child may send (one per startup benchmark; the daemon keeps them while taskless)
MAX_STEP_SECONDS = 3600.0  # a full batch step at the measured speed a child may report (it sizes the stall bound)
# Descriptors an execution process may hold (RLIMIT_NOFILE; the daemon counts them too): an honest one ~30.
MAX_OPEN_FILES = 4096
# Tool requests (`fetch`) a process may have open, and start a second on average (the first MAX_TOOL_REQUESTS_OPEN
# at once): the daemon refuses past them (node/daemon/processes/tool_egress.py); the child's channel keeps under.
MAX_TOOL_REQUESTS_OPEN = 32
TOOL_REQUESTS_PER_SECOND = 8.0
# What the daemon reads from a child: parsing costs its event loop ~0.03-0.3 s a MiB, and the largest useful
# line (a result past 256 KiB is sent as an error; a proof past 4 MiB is refused by publishers) is far below.
MAX_CHILD_LINE_BYTES = 16 * 1024 * 1024

# A task's deadline, as the execution process and the daemon's runner both report it.
DEADLINE_BEFORE_START = "deadline passed before the task started"
DEADLINE_WHILE_RUNNING = "deadline passed while the task was running"


# A task id or model name as a child sends it back.
ChildId = Annotated[str, Field(max_length=MAX_ID_CHARS)]


class Message(BaseModel):
    """A message between the daemon and an execution process: strict, frozen, finite numbers only."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class SandboxPolicy(BaseModel):
    """What an execution process may not touch (node/execution/sandbox.py enforces it). It travels on the
    child's command line (`--sandbox`, JSON), not in `configure`: the child confines itself before its
    imports start threads, and a confinement covers only the thread that applies it and those it starts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    required: bool = False  # `sandbox = "on"`: a child that cannot confine itself serves nothing
    private: list[str]  # no access at all: the data dir (key, journal, ledger), the key file, the config file
    readable: list[str] = []  # read only, though inside a private path: the models dir, the interpreter's code
    # Any access (elsewhere: read only): scratch folders (the temporary folder, /var/tmp), never one inside a
    # private path.
    writable: list[str] = []
    # Devices (globs) it may open, any access, though /dev is private: expanded where the child confines
    # itself, so a device a driver made after the daemon started is reached at the next start.
    devices: list[str] = []
    # TCP ports it may connect to, its remote engines' (their HTTP clients'); none: no internet socket at all, as
    # for a local model, whose tools' requests the daemon makes (node/daemon/processes/tool_egress.py).
    connect_ports: list[Annotated[int, Field(ge=1, le=65535)]] = []


class Configure(Message):
    """Which model to load, with the daemon's full settings (JSON) to build it from."""

    kind: Literal["configure"] = "configure"
    model: str
    settings: dict[str, Any]
    # The daemon's cache of measured speeds (key -> entry, models/benchmark.py): the child reads it and reports
    # what it measures in `measured`; the file lies in the data dir, which the child cannot open.
    speeds: dict[str, dict[str, Any]] = {}
    # The tools it offers workflows, without the operator's secrets: the daemon adds those to the requests it makes.
    tools: ToolSettings = ToolSettings()


class RunTask(Message):
    """Run one workflow; the child answers with `done` or `failed` for this task_id."""

    kind: Literal["run"] = "run"
    task_id: str
    workflow: dict[str, Any]
    prompt: str | None = None
    deadline_ns: int
    proof: bool = False  # record every generation's trace (models/tracing.py) and return them in `done`
    # Send `delta` messages with the text of the step whose generation is the result.
    stream: bool = False


class Cancel(Message):
    """Stop a running task; the child answers `failed` with `reason` for it."""

    kind: Literal["cancel"] = "cancel"
    task_id: str
    reason: str


class Probe(Message):
    """Are you alive and is your event loop free? Answered by `pong`."""

    kind: Literal["probe"] = "probe"
    probe_id: int


class ToolFetched(Message):
    """The answer to a `fetch`: the response as received, or the error that stopped it."""

    kind: Literal["fetched"] = "fetched"
    request_id: int = Field(ge=0)
    response: RawResponse | None = None
    error: str | None = None  # a ToolError's text (never the URL)
    refused: bool = False  # the egress policy refused the address (EgressRefusedError)


class ToolFetch(Message):
    """A tool's HTTP request, for the daemon to make under the egress policy; answered by `fetched`."""

    kind: Literal["fetch"] = "fetch"
    request_id: int = Field(ge=0, le=2**63)
    request: ToolRequest
    task_id: ChildId = ""  # the task whose tool asks, for the daemon's log lines only ("" outside a task)


class Ready(Message):
    """The model loaded (and, if asked, was benchmarked); the child runs tasks."""

    kind: Literal["ready"] = "ready"
    model: ChildId
    parallel: int = Field(ge=1, le=MAX_PARALLEL)
    generation_tps: float | None = Field(default=None, ge=0, le=MAX_TPS)
    max_rss_mb: int | None = Field(default=None, ge=1)  # the RSS limit the daemon enforces (None: none)
    # Expected seconds of one full batch step (a prompt chunk plus a token per slot), from the
    # benchmark; sizes the stall watchdog's bound for a decode call (None: not measured).
    step_seconds: float | None = Field(default=None, ge=0, le=MAX_STEP_SECONDS)
    # No speed cached: the child measures it once it is idle after `ready`, and says so in `benchmarked`...
    benchmark_later: bool = False
    # ...for this key of the daemon's speed cache (where the daemon asks the next start to measure before `ready`
    # if a task comes first: never a key a child names after a task, which could be any).
    speed_key: str | None = Field(default=None, pattern=r"^[0-9a-f]{1,64}$")


class Benchmarked(Message):
    """The speed a child measured after `ready` (it said `benchmark_later`): one clean figure, after at most
    MAX_PROVISIONAL_SPEEDS provisional ones (measured beside tasks: advertised until the clean one, never cached)."""

    kind: Literal["benchmarked"] = "benchmarked"
    model: ChildId
    generation_tps: float = Field(gt=0, le=MAX_TPS)
    step_seconds: float | None = Field(default=None, ge=0, le=MAX_STEP_SECONDS)
    provisional: bool = False


class Measured(Message):
    """A speed the child measured, as an entry of the daemon's speed cache under `key` (sent at once, before
    `ready` or after it). The daemon keeps it only if it had sent the process no task yet: a process a
    workflow took over could report any figure, and a kept one would outlive it."""

    kind: Literal["measured"] = "measured"
    key: str = Field(pattern=r"^[0-9a-f]{1,64}$")
    model: ChildId
    prompt_tps: float = Field(gt=0, le=MAX_TPS)
    generation_tps: float = Field(gt=0, le=MAX_TPS)
    measured_at: datetime


class LoadFailed(Message):
    """The model cannot serve here (missing file, too slow...); the child exits after this."""

    kind: Literal["load_failed"] = "load_failed"
    model: ChildId
    error: str = Field(max_length=MAX_ERROR_CHARS)


class TaskDelta(Message):
    """More of a streaming run's result text (coalesced; the deltas concatenate to a prefix of it)."""

    kind: Literal["delta"] = "delta"
    task_id: ChildId
    text: str = Field(max_length=MAX_TEXT_CHARS)


class Trace(Message):
    """One generation's trace (models/tracing.py's GenerationTrace, as the wire carries it)."""

    prompt_tokens: list[int] = Field(max_length=MAX_TRACE_TOKENS)
    tokens: list[int] = Field(max_length=MAX_TRACE_TOKENS)
    logprobs: list[float] = Field(max_length=MAX_TRACE_TOKENS)
    temperature: float
    seed: int | None = None
    constrained: bool = False
    ignore_eos: bool = False


class TaskDone(Message):
    """A task finished: its result text and counts."""

    kind: Literal["done"] = "done"
    task_id: ChildId
    text: str = Field(max_length=MAX_TEXT_CHARS)
    steps: int = Field(ge=0)
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    # Why the generation that is the result's text ended; None when the result is not one generation's text.
    finish_reason: Literal["stop", "length"] | None = None
    # With RunTask.proof: one trace per generation step, in order.
    traces: list[Trace] | None = Field(default=None, max_length=MAX_TRACES, fail_fast=True)


class TaskFailed(Message):
    """The task ended with an error; `error` is the text of its error result."""

    kind: Literal["failed"] = "failed"
    task_id: ChildId
    error: str = Field(max_length=MAX_ERROR_CHARS)


class Progress(Message):
    """The local runtime's decode progress when the probe was answered (models/progress.py)."""

    calls_done: int = Field(ge=0)  # native calls finished since load: grows while the runtime progresses
    busy: int = Field(ge=0)  # sequences running in slots
    call: Literal["start", "decode", "sample"] | None = None  # the native call running now
    task_ids: list[ChildId] = Field(default_factory=list, max_length=MAX_PARALLEL)  # the tasks inside that call
    call_seconds: float = Field(default=0.0, ge=0)
    call_tokens: int = Field(default=0, ge=0)  # tokens in that call (a decode's batch)
    seconds_per_token: float = Field(default=0.0, ge=0)  # the slowest recent decode, per token (0: none yet)


class Pong(Message):
    """The answer to a probe: the event loop is free, and how far the decode loop got."""

    kind: Literal["pong"] = "pong"
    probe_id: int
    progress: Progress | None = None  # None for a backend without native calls here (a remote engine)


ToChild = Annotated[Configure | RunTask | Cancel | Probe | ToolFetched, Field(discriminator="kind")]
FromChild = Annotated[
    Ready | LoadFailed | TaskDelta | TaskDone | TaskFailed | Pong | Benchmarked | Measured | ToolFetch,
    Field(discriminator="kind"),
]
_TO_CHILD: TypeAdapter[ToChild] = TypeAdapter(ToChild)
_FROM_CHILD: TypeAdapter[FromChild] = TypeAdapter(FromChild)


class ProtocolError(Exception):
    """A line from the other side is not a message of the protocol."""


def encode(message: Message) -> bytes:
    """The message as one line of JSON."""
    return message.model_dump_json().encode("utf-8") + b"\n"


def decode_to_child(line: bytes) -> ToChild:
    """A line from the daemon as its message; ProtocolError if it is none."""
    try:
        return _TO_CHILD.validate_json(line)
    except ValidationError as exc:
        raise ProtocolError(f"bad message to the execution process: {exc}") from None


def decode_from_child(line: bytes) -> FromChild:
    """A line from the execution process as its message; ProtocolError if it is none."""
    try:
        return _FROM_CHILD.validate_json(line)
    except ValidationError as exc:
        raise ProtocolError(f"bad message from the execution process: {exc}") from None


async def read_line(reader: asyncio.StreamReader, limit: int = MAX_FRAME_BYTES) -> bytes | None:
    """The next frame, or None at end of stream (the other side closed or died); `limit`: the reader's."""
    try:
        line = await reader.readline()
    except (asyncio.LimitOverrunError, ValueError) as exc:
        raise ProtocolError(f"frame longer than {limit} bytes") from exc
    except ConnectionError:
        return None
    if not line or not line.endswith(b"\n"):
        return None
    return line
