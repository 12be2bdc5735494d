"""What a client can make an HttpServer log (node/ops/log.py's LibraryNoiseFilter, node/ops/http_limits.py), on
127.0.0.1: malformed requests and upgrade attempts at most once a window per kind, with how many were not logged; a
broken body after a head no error at all; an app's own exception not held back by them, and counted when repeated.

uvicorn logged a warning for each malformed request, two for each upgrade attempt, and two tracebacks (its own
and asyncio's) for a request whose body broke after its head."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from starlette.types import Receive, Scope, Send

from node.ops.http_api import HttpServer
from node.ops.log import LibraryNoiseFilter

HOST = "127.0.0.1"
UVICORN_LOGGER = "uvicorn.error"
WINDOW_S = 0.5
GARBAGE = b"\x16\x03\x01 not http\r\n\r\n"  # a TLS hello's first bytes, say
UPGRADE = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, close\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n"
CHUNKED_HEAD = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
BROKEN_CHUNK = b"zz\r\n"  # not a chunk size
HELD_BACK = re.compile(r"\((\d+) more like it not logged since the last")


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers 200 without reading a body; /boom raises."""
    if scope["path"] == "/boom":
        raise RuntimeError("the app's own failure")
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


class Lines(logging.Handler):
    """The records of uvicorn's and asyncio's loggers that the daemon's handler would write (its filter, a short window)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.addFilter(LibraryNoiseFilter(WINDOW_S))

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def starting(self, text: str) -> list[str]:
        return [msg for record in self.records if (msg := record.getMessage()).startswith(text)]

    def errors(self) -> list[str]:
        return [record.getMessage() for record in self.records if record.levelno >= logging.ERROR]


@pytest.fixture
def lines() -> Iterator[Lines]:
    handler = Lines()
    loggers = [logging.getLogger(name) for name in (UVICORN_LOGGER, "asyncio")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING)
    yield handler
    for logger, level in zip(loggers, levels):
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.fixture
async def port() -> AsyncIterator[int]:
    server = HttpServer(app)
    await server.start(HOST, 0)
    assert server.port is not None
    yield server.port
    await server.stop()


async def exchange(port: int, *parts: bytes) -> bytes:
    """Send `parts` (0.2 s apart) on a new connection; what came back until the server closed it (or 2 s)."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        for index, part in enumerate(parts):
            if index:
                await asyncio.sleep(0.2)
            writer.write(part)
            await writer.drain()
        async with asyncio.timeout(2):
            return await reader.read()
    except (ConnectionError, TimeoutError):
        return b""
    finally:
        writer.close()


async def many(port: int, count: int, *parts: bytes) -> float:
    """`count` exchanges, 25 at a time; the seconds they took."""
    started = time.monotonic()
    for start in range(0, count, 25):
        await asyncio.gather(*(exchange(port, *parts) for _ in range(min(25, count - start))))
    return time.monotonic() - started


def held_back(lines: list[str]) -> int:
    return sum(int(match.group(1)) for line in lines if (match := HELD_BACK.search(line)))


async def test_malformed_requests_are_logged_once_a_window_with_how_many_were_not(port: int, lines: Lines) -> None:
    count = 300
    took = await many(port, count, GARBAGE)
    logged = lines.starting("Invalid HTTP request received.")
    assert 1 <= len(logged) <= 2 + took / WINDOW_S  # uvicorn: 300
    await asyncio.sleep(WINDOW_S)
    assert (await exchange(port, GARBAGE)).startswith(b"HTTP/1.1 400 ")  # still answered
    logged = lines.starting("Invalid HTTP request received.")
    assert len(logged) + held_back(logged) == count + 1  # every one counted
    for _ in range(3):
        assert (await exchange(port, b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(b"HTTP/1.1 500 ")
    failures = lines.starting("Exception in ASGI application")
    assert failures and not HELD_BACK.search(failures[0])  # another kind: not held back by the malformed ones
    await asyncio.sleep(WINDOW_S)
    assert (await exchange(port, b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(b"HTTP/1.1 500 ")
    failures = lines.starting("Exception in ASGI application")
    assert len(failures) + held_back(failures) == 4  # repeated within a window, each one counted


async def test_upgrade_attempts_are_logged_once_a_window(port: int, lines: Lines) -> None:
    count = 100
    took = await many(port, count, UPGRADE)
    for kind in ("Unsupported upgrade request.", "No supported WebSocket library detected."):
        assert 1 <= len(lines.starting(kind)) <= 2 + took / WINDOW_S, kind  # uvicorn: 100 each


async def test_a_body_broken_after_its_head_logs_no_error(port: int, lines: Lines) -> None:
    answers = await asyncio.gather(
        *(exchange(port, CHUNKED_HEAD + BROKEN_CHUNK) for _ in range(10)),  # broken before the app answers
        *(exchange(port, CHUNKED_HEAD, BROKEN_CHUNK) for _ in range(10)),  # broken after
    )
    assert all(answer.startswith(b"HTTP/1.1 400 ") for answer in answers[:10])
    assert all(answer.startswith(b"HTTP/1.1 200 ") for answer in answers[10:])  # its answer, then closed
    assert lines.errors() == []  # uvicorn: an "Exception in ASGI application" or asyncio's "Fatal error" each
