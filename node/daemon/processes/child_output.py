"""An execution process's stderr, relayed into the daemon's log with the process named on every line.

The child logs JSON lines to a pipe the daemon reads (anything else it or llama.cpp's native code writes
there, a Python traceback, an abort's message, comes as plain text). The daemon reads them as untrusted: a
workflow that took the process over could otherwise write lines that look like the daemon's own ("result
published" for a task never run) or escape sequences for the operator's terminal. So each line is logged
again by the daemon, under the logger `node.execution`, in the daemon's format (JSON escapes control characters,
the console renderer makes them inert), with `exec_model` and `exec_pid` set by the daemon whatever the line
said; the child's logger name goes in `exec_logger`, and a field whose name is not a plain identifier (the console
prints names as they are), or one the console prints apart from the line, goes into `other_fields` as JSON text.

Bounds, per process: a line is cut at MAX_LINE_BYTES; in each WINDOW_S at most MAX_LINES lines and
MAX_RELAYED_BYTES are logged, the rest only counted (`execution process output dropped`), at the cost of
counting newlines; past MAX_READ_BYTES read in a window the relay stops reading until the window ends, so a
flood blocks the process that writes it, not the daemon's event loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from typing import Any

import structlog

from workflows.strict_json import finite_float, no_constant

log = structlog.get_logger(__name__)
child_log = structlog.get_logger("node.execution")  # every relayed line's logger, whatever the child named

MAX_LINE_BYTES = 16 * 1024  # a traceback's line is far shorter; the JSON line of a long error fits
MAX_LINES = 2000  # lines logged per window: a model's load logs a few dozen, a crash's traceback ~100
MAX_RELAYED_BYTES = 1 << 20  # bytes of lines logged per window (logging one costs ~40 us per KiB)
MAX_READ_BYTES = 16 << 20  # bytes read per window, counted or logged; past them the relay waits for the next
WINDOW_S = 10.0
READ_BYTES = 1 << 16
# What structlog's processors set or read, or the daemon sets: never taken from the child's line.
_RESERVED = frozenset(
    {"event", "level", "logger", "timestamp", "exc_info", "stack_info"}
    | {"exec_model", "exec_pid", "exec_logger", "other_fields"}
)
_LEVELS = ("debug", "info", "warning", "error", "critical")
_FIELD_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")  # no leading "_": structlog's own (_record, _from_...)
# Names the console renderer prints in a way of its own (a traceback's lines after the line, a second logger name
# in brackets): a child's value there could print as a line without exec_pid. They go into `other_fields`.
_RENDERED_APART = frozenset({"exception", "stack", "logger_name"})


async def read_pipe(fd: int) -> asyncio.StreamReader:
    """A stream reader on the read end of a pipe (the transport owns the descriptor from now on)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=READ_BYTES)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0))
    return reader


class _Window:
    """What one WINDOW_S of a process's output has used of its budget."""

    def __init__(self, now: float) -> None:
        self.end = now + WINDOW_S
        self.read = 0
        self.lines = 0
        self.relayed = 0
        self.dropped = 0

    @property
    def spent(self) -> bool:
        """No more lines are logged in this window: they are counted."""
        return self.lines >= MAX_LINES or self.relayed >= MAX_RELAYED_BYTES


async def relay_output(stream: asyncio.StreamReader, model: str, pid: int) -> None:
    """Log each line the process writes until its end of stream (or until cancelled)."""
    loop = asyncio.get_running_loop()
    window = _Window(loop.time())
    pending = b""
    skipping = False  # inside a line cut at MAX_LINE_BYTES, or one begun while lines were only counted
    try:
        while chunk := await stream.read(READ_BYTES):
            if loop.time() >= window.end:
                _report_dropped(window, model, pid)
                window = _Window(loop.time())
            window.read += len(chunk)
            if window.spent:  # counting only (newlines: the count is off by one at most), no split, no line
                window.dropped += chunk.count(b"\n")
                pending, skipping = b"", not chunk.endswith(b"\n")
            else:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if skipping:
                        skipping = False
                    else:
                        _relay_or_count(line[:MAX_LINE_BYTES], window, model, pid)
                if len(pending) > MAX_LINE_BYTES:
                    if not skipping:
                        _relay_or_count(pending[:MAX_LINE_BYTES], window, model, pid)
                    pending, skipping = b"", True
            if window.read >= MAX_READ_BYTES:  # a flood: the process's writes block until the window ends
                await asyncio.sleep(max(window.end - loop.time(), 0.0))
        if pending and not skipping:
            _relay_or_count(pending, window, model, pid)
    finally:
        _report_dropped(window, model, pid)


def _relay_or_count(line: bytes, window: _Window, model: str, pid: int) -> None:
    if window.spent:
        window.dropped += 1
        return
    window.lines += 1
    window.relayed += len(line)
    try:
        log_line(line, model, pid)
    except Exception:  # noqa: BLE001 - whatever a line holds, the next ones are still read (a pipe left unread
        # would block the process's logging, and with it the process)
        log.warning("execution process output not logged", exec_model=model, exec_pid=pid, exc_info=True)


def _report_dropped(window: _Window, model: str, pid: int) -> None:
    if window.dropped:
        log.warning(
            "execution process output dropped", exec_model=model, exec_pid=pid, lines=window.dropped, window_s=WINDOW_S
        )
        window.dropped = 0


def log_line(line: bytes, model: str, pid: int) -> None:
    """One line of the child's as a line of the daemon's log, the process named."""
    text = line.decode("utf-8", "replace").rstrip("\r")
    if not text.strip():
        return
    fields = _json_object(text)
    if fields is None:  # not one of its log lines: a traceback, a native library's message
        child_log.warning("execution process output", exec_model=model, exec_pid=pid, line=text)
        return
    event = fields.get("event")
    level = fields.get("level")
    name = fields.get("logger")
    extra: dict[str, object] = {}
    other: dict[str, object] = {}
    for key, value in fields.items():
        if key in _RESERVED:
            continue
        if key == "self":  # would clash with the log method's own argument
            extra["self_"] = value
        elif _FIELD_NAME.fullmatch(key) and key not in _RENDERED_APART:
            extra[key] = value
        else:
            other[key] = value
    if other:
        extra["other_fields"] = json.dumps(other, ensure_ascii=True)
    if isinstance(name, str) and name:
        extra["exec_logger"] = name[:200]
    emit = getattr(child_log, level if level in _LEVELS else "warning")
    emit(
        event if isinstance(event, str) and event else "execution process output",
        **extra,
        exec_model=model,
        exec_pid=pid,
    )


def _json_object(text: str) -> dict[str, Any] | None:
    if not text.startswith("{"):
        return None
    try:  # no NaN or Infinity: the daemon's JSON lines stay strict JSON
        value = json.loads(text, parse_constant=no_constant, parse_float=finite_float)
    except (ValueError, RecursionError):  # a line nested past the parser's depth is text too
        return None
    return value if isinstance(value, dict) else None
