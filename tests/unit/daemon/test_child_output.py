"""An execution process's stderr in the daemon's log: every line names the process, whatever the line says, and
none reaches the operator's terminal as it was written (a taken-over process writes what it likes there)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
import structlog

from node.daemon.processes import child_output
from node.daemon.processes.child_output import MAX_LINE_BYTES, MAX_LINES, MAX_READ_BYTES, relay_output

# A line that looks like the daemon's own: its logger, its event, the process fields themselves.
FORGED = json.dumps(
    {
        "event": "result published",
        "level": "info",
        "logger": "node.daemon.outbox",
        "timestamp": "2020-01-01T00:00:00Z",
        "exec_model": "another",
        "exec_pid": 1,
        "exec_logger": "node.daemon.server",
        # printed by the console apart from the line (a traceback's place): no control character needed
        "stack": "2026-12-06T00:00:00Z [info     ] result published [node.daemon.outbox] task_id=t9",
        "logger_name": "node.daemon.server",
        "task_id": "t1\x1b]0;owned\x07\x1b[2J",
        # a field name holding a whole forged line for the console, which prints names as they are
        "x\x1b]0;owned\x07\n2026-12-06T00:00:00Z [info     ] node stopped [node.daemon.server]\nx": 1,
    }
)

SCRIPT = f"""
import sys
from node.daemon.processes import child_output
from node.daemon.processes.child_output import log_line
from node.ops.log import configure_logging
configure_logging("info", sys.argv[1])
log_line({FORGED!r}.encode(), "smollm2:135m", 4242)
log_line(b"Fatal Python error: Segmentation fault\\x1b[31m", "smollm2:135m", 4242)
log_line(b'{{"event": "below the level", "level": "debug"}}', "smollm2:135m", 4242)
"""


def _daemon_log(fmt: str) -> str:
    root = Path(__file__).resolve().parents[3]
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, fmt], capture_output=True, text=True, timeout=60, cwd=root, check=True
    )
    return done.stderr


def test_a_forged_line_is_logged_as_the_process_s_with_its_fields_and_no_terminal_control() -> None:
    lines = [json.loads(line) for line in _daemon_log("json").splitlines()]
    assert [line["event"] for line in lines] == ["result published", "execution process output"]
    forged, raw = lines
    assert (forged["exec_model"], forged["exec_pid"]) == ("smollm2:135m", 4242)  # the daemon's, not the line's
    assert (forged["logger"], forged["exec_logger"]) == ("node.execution", "node.daemon.outbox")
    assert forged["timestamp"] != "2020-01-01T00:00:00Z" and forged["task_id"].startswith("t1")
    assert "node stopped" in forged["other_fields"] and not [key for key in forged if "\n" in key or "\x1b" in key]
    assert "result published" in forged["other_fields"] and "stack" not in forged and "logger_name" not in forged
    assert raw["level"] == "warning" and raw["line"].startswith("Fatal Python error") and raw["exec_pid"] == 4242
    console = _daemon_log("console")
    assert len(console.splitlines()) == 2 and console.count("exec_pid=4242") == 2
    assert not any(c in console for c in "\x1b\x07"), repr(console)


async def _relay(data: bytes) -> list[dict[str, object]]:
    stream = asyncio.StreamReader()
    stream.feed_data(data)
    stream.feed_eof()
    with structlog.testing.capture_logs() as logs:
        await relay_output(stream, "m", 7)
    return logs


async def test_lines_are_cut_at_their_bound_and_a_last_line_without_newline_still_comes() -> None:
    long_line = b"x" * (3 * MAX_LINE_BYTES)
    logs = await _relay(b"first\n" + long_line + b"\nafter the long one\nno newline at the end")
    assert [entry["line"] for entry in logs] == [
        "first",
        "x" * MAX_LINE_BYTES,
        "after the long one",
        "no newline at the end",
    ]


async def test_no_line_stops_the_relay() -> None:
    """Whatever a line holds (a field named like the log method's own argument, a nesting past the parser's depth,
    bytes that are not UTF-8, a level that is none), it is logged and the lines after it still come."""
    hostile = [
        b'{"event": "x", "self": 1, "event_": 2}',
        b"[" * 10_000,
        b'{"event": ' + b"[" * 5_000 + b"}",
        b"\xff\xfe not utf-8 \x00",
        b'{"event": "y", "level": "exception"}',
        b'{"level": "info"}',
        b'{"event": "not json the daemon writes", "a": NaN, "b": 1e999}',
        b"[1, 2]",
        b"{}",
    ]
    logs = await _relay(b"\n".join([*hostile, b"the last line"]) + b"\n")
    assert len(logs) == len(hostile) + 1 and logs[-1]["line"] == "the last line"
    assert logs[0]["self_"] == 1 and logs[0]["exec_pid"] == 7
    assert logs[4]["log_level"] == "warning"  # no such level: a warning
    assert logs[6]["event"] == "execution process output" and "NaN" in logs[6]["line"]  # text, not fields
    assert not [entry for entry in logs if entry["event"] == "execution process output not logged"]


async def test_a_flood_is_relayed_up_to_its_bound_and_the_rest_counted() -> None:
    logs = await _relay(b"line\n" * (MAX_LINES + 500))
    assert sum(entry["event"] == "execution process output" for entry in logs) == MAX_LINES
    assert logs[-1]["event"] == "execution process output dropped" and logs[-1]["lines"] == 500


async def test_a_flood_past_the_read_budget_is_left_in_the_pipe_until_the_window_ends() -> None:
    """Counting lines still costs a read per 64 KiB: past MAX_READ_BYTES in a window the relay stops reading, so
    the process that floods blocks on its own writes, and the daemon's event loop is free."""
    stream = asyncio.StreamReader()
    stream.feed_data(b"x\n" * ((MAX_READ_BYTES + (4 << 20)) // 2))
    with structlog.testing.capture_logs() as logs:
        relay = asyncio.ensure_future(relay_output(stream, "m", 7))
        await asyncio.sleep(0.5)
        assert not relay.done()
        assert len(stream._buffer) >= 3 << 20  # left unread  # type: ignore[attr-defined]
        relay.cancel()
        await asyncio.gather(relay, return_exceptions=True)
    assert sum(entry["event"] == "execution process output" for entry in logs) == MAX_LINES
    assert logs[-1]["event"] == "execution process output dropped" and logs[-1]["lines"] > 1_000_000


async def test_the_first_line_after_a_window_of_counted_lines_is_logged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(child_output, "WINDOW_S", 0.2)
    stream = asyncio.StreamReader()
    with structlog.testing.capture_logs() as logs:
        relay = asyncio.ensure_future(relay_output(stream, "m", 7))
        stream.feed_data(b"x\n" * (MAX_LINES + 10))  # the window's lines spent
        await asyncio.sleep(0.05)
        stream.feed_data(b"y\n" * 5)  # counted only
        await asyncio.sleep(0.3)  # the window ends
        stream.feed_data(b"Traceback (most recent call last):\n")
        stream.feed_eof()
        await relay
    assert [entry["lines"] for entry in logs if entry["event"] == "execution process output dropped"] == [15]
    assert logs[-1]["line"] == "Traceback (most recent call last):"
