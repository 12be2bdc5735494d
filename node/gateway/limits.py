"""Limits on what a client sends: the request body's size and how long a request may take to arrive.

`BodyLimitMiddleware` (ASGI): `413` before the app sees a too-large body, `408` for a body
not received within `timeout_s`. The body is read up to the limit (a chunked one too), then
handed to the app as one message. A too-large body is read on (and dropped) up to
`DISCARD_BYTES` before the 413 is sent: closing a socket with unread data makes the kernel
reset the connection, and the client would lose the 413. A body declared larger than that is
refused without reading it.

The request head, a reader that stops taking a streamed answer, and the number of connections open
are bounded below the app, by the HTTP server's protocol (node/ops/http_limits.py): a streamed
answer's reader that stops reading would otherwise hold that stream's place against the pending caps.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

DISCARD_BYTES = 16 * 1024 * 1024


ErrorBody = Callable[[str, int, str], bytes]  # (path, status, detail) -> the JSON body of an error answered early


def plain_error(path: str, status: int, detail: str) -> bytes:
    """The gateway's own error body, `{"detail": ...}` (the OpenAI paths have theirs: openai_api/errors.py)."""
    return json.dumps({"detail": detail}).encode("utf-8")


class BodyLimitMiddleware:
    """Refuse request bodies larger than `max_bytes` with 413, and bodies not received within `timeout_s` with 408;
    `error_body` shapes those answers by path."""

    def __init__(
        self, app: ASGIApp, max_bytes: int, timeout_s: float = 30.0, error_body: ErrorBody = plain_error
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.error_body = error_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Read the request body within the size and time limits (413, 408 past them), then pass it on."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            if declared <= DISCARD_BYTES:
                await _discard_body(receive, timeout_s=self.timeout_s)
            detail = f"request body of {declared} bytes exceeds the limit of {self.max_bytes}"
            await _refuse(send, 413, self.error_body(scope["path"], 413, detail))
            return
        try:
            async with asyncio.timeout(self.timeout_s):
                body = await self._read(scope["path"], receive, send)
        except TimeoutError:
            detail = f"request body not received within {self.timeout_s:g} s"
            await _refuse(send, 408, self.error_body(scope["path"], 408, detail))
            return
        if body is None:
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _read(self, path: str, receive: Receive, send: Send) -> bytes | None:
        """The whole body; None when the client went away or it was too large (then answered 413)."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                if message.get("more_body", False):
                    await _discard_body(receive, size)
                detail = f"request body exceeds the limit of {self.max_bytes} bytes"
                await _refuse(send, 413, self.error_body(path, 413, detail))
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


async def _refuse(send: Send, status: int, payload: bytes) -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


async def _discard_body(receive: Receive, size: int = 0, timeout_s: float | None = None) -> None:
    """Read and drop the rest of a request body, up to DISCARD_BYTES in all (for at most `timeout_s`)."""
    try:
        async with asyncio.timeout(timeout_s):
            while size <= DISCARD_BYTES:
                message = await receive()
                if message["type"] != "http.request" or not message.get("more_body", False):
                    return
                size += len(message.get("body", b""))
    except TimeoutError:
        return  # refused all the same; the rest of the body is the client's to lose


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
