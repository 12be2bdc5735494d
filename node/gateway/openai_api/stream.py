"""A streamed chat completion as OpenAI's server-sent events, fed by direct delivery's progress frames.

The first event goes out with the first delta (or, from a node that only speaks gossip,
with the result). The text the caller ends with is the signed result's: what was streamed
must be its beginning, and the rest follows in the last content event; if the streamed
text is not a prefix of the signed result, the stream ends with an error event instead.
An error before anything was streamed is an ordinary HTTP error response.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator

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

DONE = "data: [DONE]\n\n"


def finish_reason(tools: bool, completion_tokens: int, max_tokens: int | None) -> FinishReason:
    if tools:
        return "tool_calls"
    return "length" if max_tokens is not None and completion_tokens >= max_tokens else "stop"


class StreamMismatchError(Exception):
    """The text streamed to the caller is not the beginning of the node's signed result."""


def rest_of(streamed: str, signed: str) -> str:
    """What of the signed result the caller has not seen yet; StreamMismatchError if what it saw is not its start."""
    if not signed.startswith(streamed):
        raise StreamMismatchError(
            f"{len(streamed)} characters were streamed that the signed result does not start with"
        )
    return signed[len(streamed) :]


def _event(chunk: ChatCompletionChunk | ErrorResponse) -> str:
    return f"data: {chunk.model_dump_json(exclude_none=True)}\n\n"


class ChatStream:
    """The events of one streamed completion."""

    def __init__(self, service: OpenAIService, key: str, prepared: Prepared, model: str, usage: bool) -> None:
        self.prepared = prepared
        self.model = model
        self.include_usage = usage
        self.id = f"chatcmpl-{secrets.token_urlsafe(16)}"
        self.created = int(time.time())
        self.sent = ""
        self._deltas: asyncio.Queue[str] = asyncio.Queue()
        self._first: str | None = None  # the delta taken off the queue while waiting to answer
        # Tool calls are sent whole, once the call is complete and signed: no progress frames asked for.
        self._run = service.start(key, prepared, None if prepared.tools else self._deltas.put_nowait)

    async def response(self) -> StreamingResponse | JSONResponse:
        """Wait for the first delta or the outcome; an error before any text is a plain error response."""
        first = asyncio.ensure_future(self._deltas.get())
        try:
            await asyncio.wait([first, self._run], return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            first.cancel()
            self._run.cancel()
            raise
        if first.done():
            self._first = first.result()
        else:
            first.cancel()
            if (exc := self._run.exception()) is not None:
                if isinstance(exc, OpenAIError):
                    return exc.response()
                raise exc
        return StreamingResponse(self._events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    def _chunk(self, delta: Delta, finish: FinishReason | None = None, node: str | None = None) -> ChatCompletionChunk:
        return ChatCompletionChunk(
            id=self.id,
            created=self.created,
            model=self.model,
            choices=[ChunkChoice(delta=delta, finish_reason=finish)],
            system_fingerprint=node,
        )

    def _content(self, text: str) -> str:
        delta = Delta(role="assistant", content=text) if not self.sent else Delta(content=text)
        self.sent += text
        return _event(self._chunk(delta))

    async def _events(self) -> AsyncIterator[str]:
        try:
            if self._first is not None:
                yield self._content(self._first)
            while not self._run.done() or not self._deltas.empty():
                text_task = asyncio.ensure_future(self._deltas.get())
                await asyncio.wait([text_task, self._run], return_when=asyncio.FIRST_COMPLETED)
                if text_task.done():
                    yield self._content(text_task.result())
                else:
                    text_task.cancel()
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

    def _final(self, result: TaskResult) -> list[str]:
        usage = usage_of(result)
        reason = finish_reason(self.prepared.tools, usage.completion_tokens, self.prepared.max_tokens)
        events: list[str] = []
        if self.prepared.tools:
            try:
                message = assistant_message(result.text, tools=True)
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
        final = self._chunk(Delta(), reason, result.node)
        if self.include_usage:
            final.usage = usage
        events.append(_event(final))
        return events
