"""What an HTTP client may hold of an HttpServer (node/ops/http_limits.py), on 127.0.0.1: connections that
send nothing or part of a head are closed after the head timeout, and past the connection cap the oldest of
them goes for a new one; a connection in a request is never cut for another."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from node.ops.http_api import HttpServer, create_app
from node.ops.http_limits import connection_cap
from node.ops.metrics import NodeMetrics
from tests.unit.ops.test_http_api import FakeDaemonState

HOST = "127.0.0.1"
CAP = 8
TIMEOUT = 1.0

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def still_open(connections: list[Connection]) -> int:
    """How many of `connections` the server has not closed (EOF or reset on a read)."""
    await asyncio.sleep(0.2)  # the server's closes arrive
    count = 0
    for reader, _ in connections:
        try:
            async with asyncio.timeout(0.01):
                data = await reader.read(1)
            count += bool(data)
        except TimeoutError:
            count += 1  # nothing to read: open
        except ConnectionError:
            pass
    return count


async def connect(port: int, count: int, sent: bytes = b"") -> list[Connection]:
    connections = []
    for _ in range(count):
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(sent)
        connections.append((reader, writer))
    return connections


def close(connections: list[Connection]) -> None:
    for _, writer in connections:
        writer.close()


@pytest.fixture
async def node_endpoint() -> AsyncIterator[HttpServer]:
    """The node's own endpoint (create_app), at a small cap and timeout."""
    state = FakeDaemonState()
    server = HttpServer(
        create_app(NodeMetrics(), state.get_health, state.get_status), head_timeout_s=TIMEOUT, max_connections=CAP
    )
    await server.start(HOST, 0)
    yield server
    await server.stop()


async def test_past_the_cap_a_new_connection_closes_the_oldest_waiting_for_a_head(node_endpoint: HttpServer) -> None:
    # uvicorn held any number: 20,000 idle connections took every descriptor of a daemon (no peer could dial it).
    assert node_endpoint.port is not None
    idle = await connect(node_endpoint.port, 5 * CAP)
    partial = await connect(node_endpoint.port, 5 * CAP, b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    try:
        assert await still_open(idle) == 0  # the oldest went first: all of them, for the newer partial heads
        assert await still_open(partial) <= CAP
        async with httpx.AsyncClient(base_url=f"http://{HOST}:{node_endpoint.port}", timeout=5) as http:
            for _ in range(3):  # served while the flood goes on
                more = await connect(node_endpoint.port, CAP)
                partial += more
                assert (await http.get("/healthz")).status_code == 200
        assert await still_open(partial) <= CAP
    finally:
        close(idle + partial)


async def test_answered_requests_whose_body_never_comes_make_room_too(node_endpoint: HttpServer) -> None:
    # The endpoint answers without reading a body: a POST that promises one and never sends it stayed open until
    # uvicorn's keep-alive timeout (5 s), past the head timeout's reach: 64 such, reopened every 5 s, held the cap.
    assert node_endpoint.port is not None
    promised = b"POST /pause HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\n"
    held = await connect(node_endpoint.port, CAP, promised)
    try:
        for reader, _ in held:
            async with asyncio.timeout(5):
                head = await reader.readuntil(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 4")  # answered, its body unread (404 here: no pause route)
                length = re.search(rb"(?i)content-length: (\d+)", head)
                assert length is not None
                await reader.readexactly(int(length[1]))  # so that a close reads as one (still_open)
        async with httpx.AsyncClient(base_url=f"http://{HOST}:{node_endpoint.port}", timeout=2) as http:
            assert (await http.get("/healthz")).status_code == 200
        assert await still_open(held) < CAP
    finally:
        close(held)


async def test_a_connection_that_sends_no_head_in_time_is_closed(node_endpoint: HttpServer) -> None:
    assert node_endpoint.port is not None
    started = time.monotonic()
    quiet = await connect(node_endpoint.port, 2)
    partial = await connect(node_endpoint.port, 2, b"GET /metrics HTTP/1.1\r\n")
    try:
        for reader, _ in quiet + partial:
            async with asyncio.timeout(3 * TIMEOUT):
                assert await reader.read() == b""
        assert TIMEOUT - 0.1 <= time.monotonic() - started < 3 * TIMEOUT
    finally:
        close(quiet + partial)


async def test_connections_in_a_request_are_never_cut_for_a_new_one() -> None:
    release = asyncio.Event()
    started = 0

    async def slow(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal started
        if scope["type"] != "http":
            return
        started += 1
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    server = HttpServer(slow, head_timeout_s=30, max_connections=CAP)
    await server.start(HOST, 0)
    assert server.port is not None
    busy = await connect(server.port, CAP, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    try:
        async with asyncio.timeout(5):
            while started < CAP:
                await asyncio.sleep(0.01)
        late = await connect(server.port, 3)
        assert await still_open(late) == 0  # refused: nothing to make room with
        release.set()
        for reader, _ in busy:
            async with asyncio.timeout(5):
                assert (await reader.readuntil(b"ok")).startswith(b"HTTP/1.1 200 ")
    finally:
        close(busy)
        await server.stop()


def test_the_cap_stays_within_a_quarter_of_the_open_files_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    import resource

    monkeypatch.setattr(resource, "getrlimit", lambda _: (1024, 4096))
    assert connection_cap(4096) == 256
    assert connection_cap(64) == 64
