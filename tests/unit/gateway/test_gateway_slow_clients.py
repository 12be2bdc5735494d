"""A real gateway over HTTP on 127.0.0.1 against clients that connect and then send their request slowly
or never (slowloris): each connection is closed, or answered 408, once `request_timeout` has passed;
connections that send their request in time are served, long polls included."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest_asyncio
from starlette.types import Receive, Scope, Send

from node.gateway.server import Gateway
from node.ops.http_api import HttpServer
from tests.support.gateway_net import gateway_over_silent_peer
from workflows import Simple

TIMEOUT = 1.0
HEAD = b"POST /v1/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"


@pytest_asyncio.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    """A gateway joined to one libp2p peer that never answers (its tasks stay pending)."""
    async with gateway_over_silent_peer(tmp_path, request_timeout=TIMEOUT) as gw:
        yield gw


async def answer_of(gateway: Gateway, sent: bytes) -> bytes:
    """What the gateway sends back on a connection that sent `sent` and then nothing, until it closes it
    (b"" for a close without an answer); fails if it is still open after three times the timeout."""
    assert gateway.http.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.http.port)
    try:
        writer.write(sent)
        await writer.drain()
        async with asyncio.timeout(3 * TIMEOUT):
            return await reader.read()
    finally:
        writer.close()


async def test_a_request_not_sent_in_time_is_closed_or_answered_408(gateway: Gateway) -> None:
    started = time.monotonic()
    closed, half_head, half_body, unended = await asyncio.gather(
        answer_of(gateway, b""),
        answer_of(gateway, HEAD),  # the head never ends
        answer_of(gateway, HEAD + b"Content-Length: 100\r\n\r\n{"),
        answer_of(gateway, HEAD + b"Transfer-Encoding: chunked\r\n\r\n1\r\n{\r\n"),  # no last chunk
    )
    assert closed == b"" and half_head == b""
    for answer in (half_body, unended):
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert b"request body not received within 1 s" in answer
    assert time.monotonic() - started < 3 * TIMEOUT


async def test_requests_sent_in_time_are_served_however_long_they_take(gateway: Gateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        for _ in range(3):  # one kept-alive connection, quiet for longer than the timeout in between
            assert (await http.get("/healthz")).status_code == 200
            await asyncio.sleep(1.5 * TIMEOUT)
        task = {"workflow": Simple().workflow(prompt="Hi"), "models": ["m"], "timeout": 30}
        task_id = (await http.post("/v1/tasks", json=task)).json()["id"]
        started = time.monotonic()
        answer = await http.get(f"/v1/tasks/{task_id}", params={"wait": 3 * TIMEOUT})  # a long poll
        assert answer.status_code == 200 and answer.json()["status"] == "pending"
        assert time.monotonic() - started >= 3 * TIMEOUT


async def test_a_client_that_stops_reading_a_streamed_answer_is_cut_off_after_the_timeout() -> None:
    # uvicorn waited for a reader that takes nothing for ever: a streamed chat's client that stopped
    # reading held its place against the pending caps (every other request of its key got 429) for good.
    disconnected = asyncio.Event()
    written = 0

    async def endless_stream(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal written
        if scope["type"] != "http":
            return

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            disconnected.set()

        watching = asyncio.create_task(watch())
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        chunk = b"data: " + b"x" * 65_536 + b"\n\n"
        while not disconnected.is_set() and written < 512 * len(chunk):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            written += len(chunk)
        await watching

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16_384)  # a network path's buffers, not loopback's
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    server = HttpServer(endless_stream, head_timeout_s=TIMEOUT)
    await server.start("127.0.0.1", 0, listener)
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        client.connect(listener.getsockname())
        client.sendall(b"GET /stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")  # and never reads
        started = time.monotonic()
        async with asyncio.timeout(5 * TIMEOUT):
            await disconnected.wait()
        assert TIMEOUT <= time.monotonic() - started + 0.1 and written < 512 * 65_544
    finally:
        client.close()
        await server.stop()
        listener.close()
