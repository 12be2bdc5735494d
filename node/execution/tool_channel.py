"""The execution process's way to the web: each tool request goes to the daemon as `fetch`, and the daemon
makes it (node/daemon/processes/tool_egress.py).

The process itself opens no internet socket (its seccomp filter refuses one where the model is local,
privileges.py) and holds none of the operator's tool secrets (child_inputs.py): a workflow that took the
process over reaches no more of the network than an honest tool does, through the daemon's egress policy.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable

from node.execution.protocol import Message, ToolFetch, ToolFetched
from workflows.errors import EgressRefusedError, ToolError
from workflows.tool_http import RawResponse, ToolRequest

# Past the daemon's own time limit for a request, the answer is not coming (a daemon that closed its end).
ANSWER_GRACE_S = 5.0


class DaemonToolHttp:
    """Tool requests sent to the daemon; its answers come back through `answer`."""

    def __init__(self, send: Callable[[Message], None], timeout: float) -> None:
        self._send = send
        self._timeout = timeout + ANSWER_GRACE_S
        self._ids = itertools.count()
        self._waiting: dict[int, asyncio.Future[ToolFetched]] = {}

    async def send(self, request: ToolRequest) -> RawResponse:
        """The daemon's answer to `request`; ToolError (EgressRefusedError when refused) if there is none."""
        request_id = next(self._ids)
        future: asyncio.Future[ToolFetched] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        try:
            self._send(ToolFetch(request_id=request_id, request=request))
            async with asyncio.timeout(self._timeout):
                answer = await future
        except TimeoutError:
            raise ToolError("tool request: the node did not answer") from None
        finally:
            self._waiting.pop(request_id, None)
        if answer.response is not None:
            return answer.response
        error = answer.error or "tool request failed"
        raise EgressRefusedError(error) if answer.refused else ToolError(error)

    def answer(self, message: ToolFetched) -> None:
        """The daemon's answer to one request (one nobody waits for any more, a cancelled task's, is dropped)."""
        future = self._waiting.get(message.request_id)
        if future is not None and not future.done():
            future.set_result(message)
