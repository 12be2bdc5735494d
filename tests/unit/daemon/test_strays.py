"""What an execution process's lines cost the daemon without cause (node/daemon/processes/strays.py): requests
past the tool egress's bounds counted as strays by their size, and lines that hide megabytes the parse walks."""

from __future__ import annotations

import time

import pytest

from node.daemon.processes.handle import ExecutionProcess
from node.daemon.processes.strays import MAX_STRAYS, PARSE_BURST, PARSE_PER_SECOND, STRAY_BYTES, ParseCost
from node.daemon.processes.tool_egress import MAX_REQUEST_BYTES
from node.execution.protocol import ProtocolError, TaskDelta, ToolFetch, decode_from_child, encode
from workflows.options import ToolSettings
from workflows.tool_http import MAX_FIELDS, MAX_URL_CHARS, MAX_VALUE_CHARS, ToolRequest


async def test_requests_past_the_bounds_end_the_process_as_broken() -> None:
    """What a process sends as `fetch` is text of bounded length, field by field (no JSON structure for the daemon
    to walk): a field past its bound breaks the protocol at once. A request within those but larger than
    MAX_REQUEST_BYTES as a whole, or past MAX_IN_FLIGHT, counts as an answer nobody asked for, once per
    STRAY_BYTES of its line: a few of them end the process (strays.py)."""
    process = ExecutionProcess("m", {}, on_exit=lambda _: None, tools=ToolSettings())
    nested = b'{"kind":"fetch","request_id":1,"request":{"method":"POST","url":"http://x/","json_body":[[[[]]]]}}\n'
    too_long = encode(ToolFetch(request_id=1, request=ToolRequest(method="GET", url="http://x/"))).replace(
        b"http://x/", b"http://x/" + b"a" * MAX_URL_CHARS
    )
    for line in (nested, too_long):
        with pytest.raises(ProtocolError):
            decode_from_child(line)
    fields = {f"X-{i}": "v" * MAX_VALUE_CHARS for i in range(MAX_FIELDS)}
    large = encode(
        ToolFetch(
            request_id=1, request=ToolRequest(method="POST", url="http://x/", headers=fields, json_body="x" * 1000)
        )
    )
    assert len(large) > MAX_REQUEST_BYTES
    allowed = MAX_STRAYS // (1 + len(large) // STRAY_BYTES)
    for _ in range(allowed):
        process._dispatch(decode_from_child(large), len(large))
    with pytest.raises(ProtocolError, match="for tasks it was not given"):
        process._dispatch(decode_from_child(large), len(large))
    assert process._egress.in_flight == 0  # none was made


def test_lines_that_hide_megabytes_in_a_key_given_twice_end_the_process_within_the_parse_allowance() -> None:
    """A valid message can carry megabytes the parse walks and drops (a JSON key given twice: the last one is
    kept), so no bound on fields bounds what a line costs. Each line's parse is taken from an
    allowance (strays.py): a stream of such lines breaks the protocol within PARSE_BURST of parsing."""
    junk = b"[" + b"[]," * (4 << 20) + b"[]]"
    line = b'{"kind":"delta","task_id":"t","text":' + junk + b',"text":"x"}\n'
    costs = ParseCost()
    spent, lines, began = 0.0, 0, time.monotonic()
    with pytest.raises(ProtocolError, match="to parse"):
        while lines < 1000:
            started = time.thread_time()
            message = decode_from_child(line)
            took = time.thread_time() - started
            assert isinstance(message, TaskDelta) and message.text == "x"  # accepted: nothing else would stop it
            spent, lines = spent + took, lines + 1
            costs.note(took)
    refilled = PARSE_PER_SECOND * (time.monotonic() - began)
    assert spent < PARSE_BURST + refilled + 2 * took  # ended within the allowance (and one line past it)
    honest = ParseCost()
    for _ in range(1000):  # an honest line costs microseconds: never charged
        started = time.thread_time()
        decode_from_child(encode(TaskDelta(task_id="t", text="a few words")))
        honest.note(time.thread_time() - started)


def test_lines_of_a_fraction_of_a_millisecond_back_to_back_end_the_process_too() -> None:
    """Valid `delta` lines for a task the process runs are never strays; each parses in well under a millisecond,
    but back to back they held 77% of the loop (red team). Every line's parse is charged, none is free."""
    line = encode(TaskDelta(task_id="t", text="x" * 130_000))
    costs = ParseCost()
    spent, began = 0.0, time.monotonic()
    with pytest.raises(ProtocolError, match="to parse"):
        for _ in range(200_000):
            started = time.thread_time()
            decode_from_child(line)
            took = time.thread_time() - started
            spent += took
            costs.note(took)
    assert spent < PARSE_BURST + PARSE_PER_SECOND * (time.monotonic() - began) + 2 * took
