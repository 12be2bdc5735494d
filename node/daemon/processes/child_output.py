"""An execution process's stderr, relayed into the daemon's log with the process named on every line.

The child logs JSON lines to a pipe the daemon reads (anything else it or llama.cpp's native code writes
there, a Python traceback, an abort's message, comes as plain text). The daemon reads them as untrusted: a
workflow that took the process over could otherwise write lines that look like the daemon's own ("result
published" for a task never run) or escape sequences for the operator's terminal. So each line is logged
again by the daemon's own logger, in its format (JSON escapes control characters, the console renderer makes
them inert), with `exec_model` and `exec_pid` set by the daemon whatever the line said; a line is cut at
MAX_LINE_BYTES and a process logs at most MAX_LINES per WINDOW_S (the rest is counted, not written).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from typing import Any

import structlog

log = structlog.get_logger(__name__)

MAX_LINE_BYTES = 16 * 1024  # a traceback's line is far shorter; the JSON line of a long error fits
MAX_LINES = 2000  # lines relayed per window: a model's load logs a few dozen, a crash's traceback ~100
WINDOW_S = 10.0
READ_BYTES = 1 << 16
# What structlog's processors set or read: never taken from the child's line.
_RESERVED = frozenset({"event", "level", "logger", "timestamp", "exc_info", "stack_info", "exec_model", "exec_pid"})
_LEVELS = ("debug", "info", "warning", "error", "critical")


async def read_pipe(fd: int) -> asyncio.StreamReader:
    """A stream reader on the read end of a pipe (the transport owns the descriptor from now on)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=READ_BYTES)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0))
    return reader


async def relay_output(stream: asyncio.StreamReader, model: str, pid: int) -> None:
    """Log each line the process writes until its end of stream."""
    loop = asyncio.get_running_loop()
    window_end, relayed, dropped = loop.time() + WINDOW_S, 0, 0
    async for line in _lines(stream):
        now = loop.time()
        if now >= window_end:
            if dropped:
                _dropped(model, pid, dropped)
            window_end, relayed, dropped = now + WINDOW_S, 0, 0
        if relayed >= MAX_LINES:
            dropped += 1
            continue
        relayed += 1
        try:
            log_line(line, model, pid)
        except Exception:  # noqa: BLE001 - whatever a line holds, the next ones are still read (a pipe left unread
            # would block the process's logging, and with it the process)
            log.warning("execution process output not logged", exec_model=model, exec_pid=pid, exc_info=True)
    if dropped:
        _dropped(model, pid, dropped)


def log_line(line: bytes, model: str, pid: int) -> None:
    """One line of the child's as a line of the daemon's log, the process named."""
    text = line.decode("utf-8", "replace").rstrip("\r")
    if not text.strip():
        return
    fields = _json_object(text)
    if fields is None:  # not one of its log lines: a traceback, a native library's message
        log.warning("execution process output", exec_model=model, exec_pid=pid, line=text)
        return
    event = fields.get("event")
    level = fields.get("level")
    name = fields.get("logger")
    extra = {
        f"{key}_" if key == "self" else key: value  # `self` would clash with the log method's own argument
        for key, value in fields.items()
        if key not in _RESERVED and not key.startswith("_")
    }
    logger = structlog.get_logger(name[:200] if isinstance(name, str) and name else "node.execution")
    emit = getattr(logger, level if level in _LEVELS else "warning")
    emit(
        event if isinstance(event, str) and event else "execution process output",
        **extra,
        exec_model=model,
        exec_pid=pid,
    )


def _json_object(text: str) -> dict[str, Any] | None:
    if not text.startswith("{"):
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):  # a line nested past the parser's depth is text too
        return None
    return value if isinstance(value, dict) else None


def _dropped(model: str, pid: int, lines: int) -> None:
    log.warning("execution process output dropped", exec_model=model, exec_pid=pid, lines=lines, window_s=WINDOW_S)


async def _lines(stream: asyncio.StreamReader) -> AsyncIterator[bytes]:
    """The stream's lines, each cut at MAX_LINE_BYTES (the rest of a longer one skipped), the last one even
    without its newline."""
    pending = b""
    skipping = False  # inside a line already cut
    while chunk := await stream.read(READ_BYTES):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if not skipping:
                yield line[:MAX_LINE_BYTES]
            skipping = False
        if len(pending) > MAX_LINE_BYTES:
            if not skipping:
                yield pending[:MAX_LINE_BYTES]
            pending, skipping = b"", True
    if pending and not skipping:
        yield pending
