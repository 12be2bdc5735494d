"""The execution process's way to the web: each tool request goes to the daemon as `fetch`, and the daemon
makes it (node/daemon/processes/tool_egress.py).

The process itself opens no internet socket (its seccomp filter refuses one where the model is local,
privileges.py) and holds none of the operator's tool secrets (child_inputs.py): a workflow that took the
process over reaches no more of the network than an honest tool does, through the daemon's egress policy.
The channel keeps under the daemon's bounds on requests open and started a second (protocol.py), so an honest
process never meets them: a request waits for a slot, which it holds until the daemon answers (even when its
caller gave up: the daemon's request runs on), and for its turn.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable

from models.progress import request_owner
from node.execution.protocol import (
    MAX_TOOL_REQUESTS_OPEN,
    TOOL_REQUESTS_PER_SECOND,
    Message,
    ToolFetch,
    ToolFetched,
)
from workflows.allowance import Allowance
from workflows.errors import EgressRefusedError, ToolError
from workflows.tool_http import RawResponse, ToolRequest

# Past the daemon's own time limit for a request, the answer is not coming (a daemon that closed its end).
ANSWER_GRACE_S = 5.0
# Under the daemon's rate by this share: its bucket and this one start and count at other moments.
RATE_MARGIN = 0.9


class DaemonToolHttp:
    """Tool requests sent to the daemon; its answers come back through `answer`."""

    def __init__(self, send: Callable[[Message], None], timeout: float) -> None:
        self._send = send
        self._timeout = timeout + ANSWER_GRACE_S
        self._ids = itertools.count()
        self._open: dict[int, asyncio.Future[ToolFetched]] = {}  # sent, not answered: each holds a slot
        self._slots: asyncio.Semaphore | None = None  # made in the event loop, by the first request
        self._starts = Allowance(TOOL_REQUESTS_PER_SECOND * RATE_MARGIN, MAX_TOOL_REQUESTS_OPEN - 2)

    async def send(self, request: ToolRequest) -> RawResponse:
        """The daemon's answer to `request`; ToolError (EgressRefusedError when refused) if there is none."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(MAX_TOOL_REQUESTS_OPEN)
        await self._slots.acquire()
        try:
            while (left := self._starts.left()) < 1:
                await asyncio.sleep((1 - left) / (TOOL_REQUESTS_PER_SECOND * RATE_MARGIN))
        except BaseException:
            self._slots.release()
            raise
        self._starts.take(1)
        request_id = next(self._ids)
        future: asyncio.Future[ToolFetched] = asyncio.get_running_loop().create_future()
        self._open[request_id] = future
        self._send(ToolFetch(request_id=request_id, request=request, task_id=request_owner.get() or ""))
        try:
            async with asyncio.timeout(self._timeout):
                answer = await asyncio.shield(future)  # a caller that gives up leaves the slot to the answer
        except TimeoutError:
            self._close(request_id)
            raise ToolError("tool request: the node did not answer") from None
        if answer.response is not None:
            return answer.response
        error = answer.error or "tool request failed"
        raise EgressRefusedError(error) if answer.refused else ToolError(error)

    def answer(self, message: ToolFetched) -> None:
        """The daemon's answer to one request (one nobody waits for any more, a cancelled task's, frees its slot)."""
        future = self._close(message.request_id)
        if future is not None and not future.done():
            future.set_result(message)

    def _close(self, request_id: int) -> asyncio.Future[ToolFetched] | None:
        future = self._open.pop(request_id, None)
        if future is not None and self._slots is not None:
            self._slots.release()
        return future
