"""A streamed chat completion as OpenAI's server-sent events, fed by direct delivery's progress frames.

The first event goes out with the first delta (or, from a node that only speaks gossip,
with the result). The text the caller ends with is the signed result's: what was streamed
must be its beginning, and the rest follows in the last content event; if the streamed
text is not a prefix of the signed result, the stream ends with an error event instead.
An error before anything was streamed is an ordinary HTTP error response.

A stream holds its place against the pending caps until its last event is written (a caller
that does not read cannot open more than the caps allow), and the deltas that wait for a slow
reader go out together as one event (what waits is the text, never one event per frame).
A caller that leaves before the first event ends the task's wait at once.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import weakref
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from node.gateway.openai_api.errors import OpenAIError
from node.gateway.openai_api.schemas import (
    ChatCompletionChunk,
    ChunkChoice,
    ChunkToolCall,
    Delta,
    ErrorDetail,
    ErrorResponse,
    FinishReason,
)
from node.gateway.openai_api.service import OpenAIService, Prepared, usage_of
from node.gateway.openai_api.translate import assistant_message
from node.publisher.client import TaskResult
from node.wire.results import FinishReason as ReportedFinish

DONE = "data: [DONE]\n\n"
COMPACT_DELTAS = 1024  # deltas waiting for a slow reader are joined into one string past this many
T = TypeVar("T")


class ClientGoneError(Exception):
    """The HTTP caller disconnected before its answer was ready."""


async def client_gone(request: Request) -> None:
    """Return when the caller disconnects (its body was read already: the next ASGI message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_gone(request: Request, work: Awaitable[T]) -> T:
    """`work`'s result, or ClientGoneError (and `work` cancelled) as soon as the caller disconnects."""
    task, gone = asyncio.ensure_future(work), asyncio.ensure_future(client_gone(request))
    try:
        await asyncio.wait([task, gone], return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()
    if not task.done() or task.cancelled():
        raise ClientGoneError
    return task.result()


def finish_reason(
    tools: bool, completion_tokens: int, max_tokens: int, reported: ReportedFinish | None = None
) -> FinishReason:
    """`tool_calls` with tools; else the reason the node `reported` in the result's stats (TaskResult.finish_reason:
    only it sees a cut at its own max_tokens_cap, lower than the task's); else, from a node that did not say,
    `length` when it generated all the tokens the task allowed."""
    if tools:
        return "tool_calls"
    if reported is not None:
        return reported
    return "length" if completion_tokens >= max_tokens else "stop"


class StreamMismatchError(Exception):
    """The text streamed to the caller is not the beginning of the node's signed result."""


def rest_of(streamed: str, signed: str) -> str:
    """What of the signed result the caller has not seen yet; StreamMismatchError if what it saw is not its start."""
    if not signed.startswith(streamed):
        raise StreamMismatchError(
            f"{len(streamed)} characters were streamed that the signed result does not start with"
        )
    return signed[len(streamed) :]


# JSON leaves these raw inside strings and they end no SSE line, but clients that split lines as
# str.splitlines does (httpx's iter_lines, and SSE readers built on it) cut a `data:` line at them: a
# node's text could end an event early or add one (`data: [DONE]`). Escaped, they are the same JSON.
_LINE_BREAKS_JSON_KEEPS = str.maketrans({"\u0085": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def _event(chunk: ChatCompletionChunk | ErrorResponse) -> str:
    return f"data: {chunk.model_dump_json(exclude_none=True).translate(_LINE_BREAKS_JSON_KEEPS)}\n\n"


class ChatStream:
    """The events of one streamed completion."""

    def __init__(self, service: OpenAIService, key: str, prepared: Prepared, model: str, usage: bool) -> None:
        self.prepared = prepared
        self.model = model
        self.include_usage = usage
        self.id = f"chatcmpl-{secrets.token_urlsafe(16)}"
        self.created = int(time.time())
        self.sent = ""
        self._pending: list[str] = []  # deltas not yet written
        self._more = asyncio.Event()  # set when `_pending` has text
        self._release = service.hold(key)  # TooManyPendingError past a cap
        weakref.finalize(self, self._release)  # a response never started still gives its place back
        # Tool calls are sent whole, once the call is complete and signed: no progress frames asked for.
        self._run = service.start(key, prepared, None if prepared.tools else self._take)

    def _take(self, delta: str) -> None:
        self._pending.append(delta)
        if len(self._pending) > COMPACT_DELTAS:
            self._pending = ["".join(self._pending)]
        self._more.set()

    def _text(self) -> str:
        text = "".join(self._pending)
        self._pending.clear()
        self._more.clear()
        return text

    async def response(self, request: Request) -> StreamingResponse | JSONResponse:
        """Wait for the first delta or the outcome; an error before any text is a plain error response.

        ClientGoneError when the caller disconnects first."""
        more = asyncio.ensure_future(self._more.wait())
        try:
            await unless_gone(request, asyncio.wait([more, self._run], return_when=asyncio.FIRST_COMPLETED))
        except BaseException:
            self._run.cancel()
            self._release()
            raise
        finally:
            more.cancel()
        if not self._more.is_set() and (exc := self._run.exception()) is not None:
            self._release()
            if isinstance(exc, OpenAIError):
                return exc.response()
            raise exc
        return StreamingResponse(self._events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    def _chunk(
        self, delta: Delta | None, finish: FinishReason | None = None, node: str | None = None
    ) -> ChatCompletionChunk:
        """A chunk of `delta`; with None, the usage chunk's empty `choices`."""
        return ChatCompletionChunk(
            id=self.id,
            created=self.created,
            model=self.model,
            choices=[] if delta is None else [ChunkChoice(delta=delta, finish_reason=finish)],
            system_fingerprint=node,
        )

    def _content(self, text: str) -> str:
        delta = Delta(role="assistant", content=text) if not self.sent else Delta(content=text)
        self.sent += text
        return _event(self._chunk(delta))

    async def _events(self) -> AsyncIterator[str]:
        try:
            while True:
                if self._more.is_set():
                    yield self._content(self._text())
                    continue
                if self._run.done():
                    break
                more = asyncio.ensure_future(self._more.wait())
                try:
                    await asyncio.wait([more, self._run], return_when=asyncio.FIRST_COMPLETED)
                finally:  # also when the caller went away: the generator is closed in this wait
                    more.cancel()
            try:
                result = self._run.result()
            except OpenAIError as exc:
                yield _event(exc.body)
                return
            for event in self._final(result):
                yield event
            yield DONE
        finally:
            self._run.cancel()
            self._release()

    def _final(self, result: TaskResult) -> list[str]:
        usage = usage_of(result, self.prepared.max_tokens)
        reason = finish_reason(
            bool(self.prepared.tools), usage.completion_tokens, self.prepared.max_tokens, result.finish_reason
        )
        events: list[str] = []
        if self.prepared.tools:
            try:
                message = assistant_message(result.text, self.prepared.tools)
            except OpenAIError as exc:
                return [_event(exc.body)]
            calls = [ChunkToolCall(id=c.id, function=c.function) for c in message.tool_calls or []]
            events.append(_event(self._chunk(Delta(role="assistant", tool_calls=calls))))
        else:
            try:
                rest = rest_of(self.sent, result.text)
            except StreamMismatchError as exc:
                mismatch = f"the streamed text is not the node's signed result; discard it ({exc})"
                error = ErrorDetail(message=mismatch, type="api_error", code="stream_mismatch")
                return [_event(ErrorResponse(error=error))]
            if rest or not self.sent:
                events.append(self._content(rest))
        events.append(_event(self._chunk(Delta(), reason, result.node)))
        if self.include_usage:  # OpenAI: one more chunk before [DONE], its `choices` empty
            last = self._chunk(None, node=result.node)
            last.usage = usage
            events.append(_event(last))
        return events
