"""The daemon's side of an execution process's tool requests: it makes them, under the egress policy.

An execution process has no internet socket of its own (its seccomp filter refuses one where the model is
local) and none of the operator's tool secrets (child_inputs.py). Its tools send each HTTP request here as
`fetch` (node/execution/tool_channel.py); the daemon makes it with workflows/egress.py (addresses checked at
every hop, secrets added where they may go, the body capped as received) and answers `fetched` with the body
undecoded: decompressing and decoding a stranger's bytes is left to the process that runs the workflow.

A process may have at most MAX_IN_FLIGHT requests open, start MAX_RATE a second on average, each at most
MAX_REQUEST_BYTES, and none while more than MAX_UNREAD_BYTES of its answers wait unread in the socket's buffer
(a process that asks and never reads would have the daemon hold every answer); past any of these, a request is
answered with an error at once and counted against the process as an answer nobody asked for (strays.py: an
honest process meets none). An answer that would take the unread ones past MAX_UNREAD_BYTES is an error too.
Each request ends within the operator's `tool_timeout`; those still open when the process exits are cancelled.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog
from pydantic_core import to_json

from node.daemon.processes.tool_settings import without_secrets
from node.execution.protocol import (
    MAX_ERROR_CHARS,
    MAX_TOOL_REQUESTS_OPEN,
    TOOL_REQUESTS_PER_SECOND,
    Message,
    ToolFetch,
    ToolFetched,
)
from node.wire.envelope import base64_chars
from workflows.allowance import Allowance
from workflows.egress import Egress  # httpx loads with the first request (egress.py)
from workflows.errors import EgressRefusedError, ToolError
from workflows.options import ToolSettings

log = structlog.get_logger(__name__)

# Requests one process may have open, and start a second on average (MAX_IN_FLIGHT at once): the child's channel
# keeps under both (tool_channel.py), so only a process that sends what it likes meets them. Each request costs the
# event loop its lookup, connection and parse, even one refused at its first hop.
MAX_IN_FLIGHT = MAX_TOOL_REQUESTS_OPEN
MAX_RATE = TOOL_REQUESTS_PER_SECOND
# A request as JSON (URL, headers, query, body): an honest one carries the model's arguments, a few KiB; the
# daemon holds each while it is open.
MAX_REQUEST_BYTES = 1 << 20
# What the daemon holds for a process that does not read its socket: answers are up to `tool_max_bytes` each.
MAX_UNREAD_BYTES = 16 << 20


class ToolEgress:
    """One execution process's tool requests, made by the daemon."""

    def __init__(
        self,
        tools: ToolSettings | None,
        answer: Callable[[Message], None],
        model: str,
        unread: Callable[[], int] = lambda: 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._tools = tools  # None: this process gets no tool request made (an error answers each)
        self._unread = unread  # bytes sent to the process and not read yet (its socket's write buffer)
        self.told = ToolSettings() if tools is None else without_secrets(tools)  # what the process is told of them
        self._answer = answer
        self._model = model
        self._open: set[asyncio.Task[None]] = set()
        self._egress: Egress | None = None  # its own lookups and TLS context (egress.py), made by the first request
        self._starts = Allowance(MAX_RATE, MAX_IN_FLIGHT, clock)

    @property
    def in_flight(self) -> int:
        """Requests being made now."""
        return len(self._open)

    def start(self, message: ToolFetch, task_id: str = "") -> bool:
        """Make the request in the background; its answer goes back as `fetched`. False when it was refused
        for the bounds (MAX_IN_FLIGHT, MAX_RATE, MAX_UNREAD_BYTES, MAX_REQUEST_BYTES), which an honest process never
        meets. `task_id`: the task it is for (checked by the caller), named on the request's log lines."""
        if self._tools is None:
            self._fail(message.request_id, "tool request failed: this node makes no tool requests")
            return True
        if len(self._open) >= MAX_IN_FLIGHT:
            self._fail(message.request_id, f"tool request failed: {MAX_IN_FLIGHT} requests are open already")
            return False
        if self._starts.left() < 1:
            self._fail(message.request_id, f"tool request failed: more than {MAX_RATE:g} a second")
            return False
        if self._unread() > MAX_UNREAD_BYTES:
            self._fail(message.request_id, "tool request failed: the answers to earlier ones are not read yet")
            return False
        if len(to_json(message.request)) > MAX_REQUEST_BYTES:
            self._fail(message.request_id, f"tool request failed: larger than {MAX_REQUEST_BYTES} bytes")
            return False
        self._starts.take(1)
        if self._egress is None:
            self._egress = Egress(self._tools)
        task = asyncio.create_task(self._make(self._egress, message, task_id), name=f"exec-{self._model}-fetch")
        self._open.add(task)
        task.add_done_callback(self._open.discard)
        return True

    async def close(self) -> None:
        """Cancel the requests still open (the process exited: nobody reads their answers)."""
        for task in self._open:
            task.cancel()
        await asyncio.gather(*self._open, return_exceptions=True)

    async def _make(self, egress: Egress, message: ToolFetch, task_id: str) -> None:
        if task_id:
            structlog.contextvars.bind_contextvars(task_id=task_id)  # this request's own context only
        try:
            response = await egress.send(message.request)
        except EgressRefusedError as exc:
            self._answer(ToolFetched(request_id=message.request_id, error=str(exc)[:MAX_ERROR_CHARS], refused=True))
        except ToolError as exc:
            self._answer(ToolFetched(request_id=message.request_id, error=str(exc)[:MAX_ERROR_CHARS]))
        except Exception as exc:  # noqa: BLE001 - a bug here fails one tool call, never the daemon
            # The error's type only: its text may hold the URL, which may come from the task.
            log.error("tool request failed", model=self._model, error=type(exc).__name__)
            self._answer(ToolFetched(request_id=message.request_id, error="tool request failed: internal error"))
        else:
            if self._unread() + base64_chars(len(response.body)) > MAX_UNREAD_BYTES:  # the body travels in base64
                self._fail(message.request_id, "tool request failed: the answers to earlier ones are not read yet")
            else:
                self._answer(ToolFetched(request_id=message.request_id, response=response))

    def _fail(self, request_id: int, error: str) -> None:
        self._answer(ToolFetched(request_id=request_id, error=error))
