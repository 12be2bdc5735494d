"""The daemon makes its execution processes' tool requests (node/daemon/processes/tool_egress.py), and the
process's channel to it (node/execution/tool_channel.py): real requests to a real HTTP server on loopback.

A process that was taken over sends what it likes as `fetch`: any URL, `search` set on any request, more
requests than any task makes. What it gets is what an honest tool gets: the egress policy, the operator's
secrets added only where they may go, and a bounded number of requests open at once.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from pydantic import SecretStr

from models.progress import request_owner
from node.daemon.processes.tool_egress import MAX_IN_FLIGHT, MAX_RATE, MAX_UNREAD_BYTES, ToolEgress
from node.execution.protocol import (
    Message,
    ToolFetch,
    ToolFetched,
    decode_from_child,
    decode_to_child,
    encode,
)
from node.execution.tool_channel import DaemonToolHttp
from tests.support.http_server import LocalServer, Route
from workflows.errors import EgressRefusedError, ToolError
from workflows.options import SearchProvider, ToolSettings
from workflows.tool_http import ToolRequest, fetch

KEY = "serper-key-of-the-operator"


@pytest.fixture
def server() -> Iterator[LocalServer]:
    served = LocalServer(
        {
            "/page": Route(body=gzip.compress("grüße".encode()), headers={"content-encoding": "gzip"}),
            "/slow": Route(delay_s=1.0),
            "/search": Route(body=json.dumps({"organic": []}).encode()),
        }
    )
    yield served
    served.close()


class Wire:
    """Both ends of the socket, without the socket: each message encoded and decoded as the IPC does."""

    def __init__(self, tools: ToolSettings | None) -> None:
        self.answers: list[ToolFetched] = []
        self.channel = DaemonToolHttp(self._to_daemon, timeout=5.0)
        self.egress = ToolEgress(tools, self._to_child, "m")

    def _to_daemon(self, message: Message) -> None:
        request = decode_from_child(encode(message))
        assert isinstance(request, ToolFetch)
        self.egress.start(request, request.task_id)  # as the handle does for a task the process runs

    def _to_child(self, message: Message) -> None:
        answer = decode_to_child(encode(message))
        assert isinstance(answer, ToolFetched)
        self.answers.append(answer)
        self.channel.answer(answer)


async def test_a_request_goes_through_the_daemon_and_its_body_is_decoded_in_the_process(server: LocalServer) -> None:
    wire = Wire(ToolSettings(egress_allow=["127.0.0.1"]))
    response = await fetch(wire.channel, 1000, "GET", server.url("/page"))
    assert (response.status, response.text) == (200, "grüße")
    assert wire.answers[0].response is not None and wire.answers[0].response.body.startswith(b"\x1f\x8b")  # as sent


async def test_the_daemons_lines_about_a_request_name_the_task_that_made_it(server: LocalServer) -> None:
    """An operator who reads "egress refused" in the daemon's log can tell which task's tool asked."""

    async def task_run(task_id: str) -> None:  # each task runs in its own asyncio task, as in TaskHost
        request_owner.set(task_id)
        with pytest.raises(EgressRefusedError):
            await fetch(wire.channel, 1000, "GET", server.url("/page"))

    wire = Wire(ToolSettings())  # loopback is refused, and logged at debug
    with structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars]) as lines:
        await asyncio.gather(task_run("task-a"), task_run("task-b"))
        with pytest.raises(EgressRefusedError):  # outside any task: no task id
            await wire.channel.send(ToolRequest(method="GET", url=server.url("/page")))
    refused = [line.get("task_id") for line in lines if line["event"] == "egress refused"]
    assert sorted(refused, key=str) == [None, "task-a", "task-b"]


async def test_the_daemons_egress_policy_holds_whatever_the_process_asks(server: LocalServer) -> None:
    wire = Wire(ToolSettings())  # no allow-list: loopback is refused
    with pytest.raises(EgressRefusedError, match="not public"):
        await fetch(wire.channel, 1000, "GET", server.url("/page"))
    # `search` set on a request that is not to the search endpoint: refused, not trusted
    with pytest.raises(EgressRefusedError, match="only to the search endpoint"):
        await wire.channel.send(ToolRequest(method="GET", url=server.url("/page"), search=True))
    provider = Wire(ToolSettings(search=SearchProvider(kind="searxng", url="http://127.0.0.2:9/")))
    with pytest.raises(EgressRefusedError, match="only to the search endpoint"):
        await provider.channel.send(ToolRequest(method="GET", url=server.url("/page"), search=True))
    # the operator's private SearXNG: its /search is trusted, not the rest of its origin
    searxng = Wire(ToolSettings(search=SearchProvider(kind="searxng", url=server.url("/"))))
    for elsewhere in ("/page", "/search/../page", "/searchx", "/"):
        with pytest.raises(EgressRefusedError, match="only to the search endpoint"):
            await searxng.channel.send(ToolRequest(method="GET", url=server.url(elsewhere), search=True))
    assert server.seen == []  # nothing reached the server
    found = await searxng.channel.send(
        ToolRequest(method="GET", url=server.url("/search"), params={"q": "x"}, search=True)
    )
    assert found.status == 200 and server.seen[-1].path == "/search?q=x"


async def test_the_search_key_is_the_daemons_to_add_on_the_providers_origin_only(server: LocalServer) -> None:
    serper = SearchProvider(kind="serper", url=server.url("/search"), api_key=SecretStr(KEY))
    wire = Wire(ToolSettings(search=serper, egress_allow=["127.0.0.1"]))
    await wire.channel.send(ToolRequest(method="POST", url=server.url("/search"), json_body='{"q": "x"}', search=True))
    assert server.seen[-1].headers["x-api-key"] == KEY  # the request carried none
    await wire.channel.send(ToolRequest(method="GET", url=server.url("/page")))  # not a search request
    assert "x-api-key" not in server.seen[-1].headers


async def test_requests_past_the_bound_are_answered_at_once_and_close_cancels_the_rest(server: LocalServer) -> None:
    """As a process that ignores its channel's pacing sends them: 32 open, the rest refused at once."""
    answers: list[ToolFetched] = []
    egress = ToolEgress(ToolSettings(egress_allow=["127.0.0.1"]), answers.append, "m")  # type: ignore[arg-type]
    started = [
        egress.start(ToolFetch(request_id=i, request=ToolRequest(method="GET", url=server.url("/slow"))))
        for i in range(MAX_IN_FLIGHT + 5)
    ]
    assert started == [True] * MAX_IN_FLIGHT + [False] * 5 and egress.in_flight == MAX_IN_FLIGHT
    assert [answer.request_id for answer in answers if answer.error and "open already" in answer.error] == list(
        range(MAX_IN_FLIGHT, MAX_IN_FLIGHT + 5)
    )
    await asyncio.sleep(0.2)  # the requests reach the server, which answers after 1 s
    await egress.close()  # the process exited
    assert egress.in_flight == 0
    answered = len(answers)
    await asyncio.sleep(1.5)  # past the server's delay: a cancelled request answers nothing
    assert len(answers) == answered == 5  # only the five refused at once


async def test_a_process_without_tool_settings_gets_an_error_and_an_unknown_answer_is_dropped() -> None:
    wire = Wire(None)
    with pytest.raises(ToolError, match="makes no tool requests"):
        await wire.channel.send(ToolRequest(method="GET", url="http://example.com/"))
    wire.channel.answer(ToolFetched(request_id=999, error="stray"))  # nobody waits: nothing happens


async def test_the_process_gives_up_when_the_daemon_never_answers() -> None:
    sent: list[Message] = []
    channel = DaemonToolHttp(sent.append, timeout=0.0)
    channel._timeout = 0.05  # noqa: SLF001 - the grace past the daemon's own limit, shortened
    with pytest.raises(ToolError, match="did not answer"):
        await channel.send(ToolRequest(method="GET", url="http://example.com/"))
    assert len(sent) == 1 and isinstance(sent[0], ToolFetch)


async def test_a_lookup_that_hangs_holds_only_its_own_processes_requests(
    server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hostile DNS server can hold a lookup until the system's resolver gives up. The daemon's lookups for one
    process run on threads of that process's (egress.py's Resolver): the event loop's shared pool, which runs
    the daemon's own work in threads, and another process's requests go on."""
    released = threading.Event()
    real = socket.getaddrinfo

    def getaddrinfo(host: str, *args: Any, **kwargs: Any) -> Any:
        if host.endswith(".hangs.example"):
            released.wait(30)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    settings = ToolSettings(egress_allow=["127.0.0.1", "localhost"], http_timeout_s=5.0)
    hostile, honest = ToolEgress(settings, lambda _: None, "m"), Wire(settings)
    for i in range(MAX_IN_FLIGHT):
        assert hostile.start(
            ToolFetch(request_id=i, request=ToolRequest(method="GET", url=f"http://n{i}.hangs.example/"))
        )
    try:
        await asyncio.sleep(0.2)
        assert hostile.in_flight == MAX_IN_FLIGHT
        lookups = [thread for thread in threading.enumerate() if thread.name == "tool-dns"]
        assert len(lookups) == 2 and all(thread.daemon for thread in lookups)  # the rest wait; an exit waits for none
        async with asyncio.timeout(2):
            assert await asyncio.to_thread(lambda: "free") == "free"  # the loop's shared pool
            answer = await honest.channel.send(ToolRequest(method="GET", url=f"http://localhost:{server.port}/page"))
        assert answer.status == 200
    finally:
        released.set()
        await hostile.close()
        await honest.egress.close()


def _read_to_the_end(end: socket.socket) -> bytes:
    received = bytearray()
    while chunk := end.recv(1 << 20):
        received += chunk
    return bytes(received)


async def test_the_answers_a_process_leaves_unread_stay_within_max_unread_bytes() -> None:
    """A process that asks and never reads its socket would have the daemon hold every answer: an answer that
    would take what waits unread past MAX_UNREAD_BYTES is an error instead, however many requests were open."""
    body = bytes(range(256)) * 4096  # 1 MiB, ~1.4 MiB as an answer's JSON
    big = LocalServer({"/big": Route(body=body)})
    ours, theirs = socket.socketpair()  # `theirs` is not read until the end
    _, writer = await asyncio.open_unix_connection(sock=ours)
    tools = ToolSettings(egress_allow=["127.0.0.1"], max_response_bytes=2 * len(body))
    egress = ToolEgress(
        tools, lambda message: writer.write(encode(message)), "m", writer.transport.get_write_buffer_size
    )
    try:
        for request_id in range(MAX_IN_FLIGHT):  # all open at once, all answered while nothing reads
            assert egress.start(
                ToolFetch(request_id=request_id, request=ToolRequest(method="GET", url=big.url("/big")))
            )
        while egress.in_flight:
            await asyncio.sleep(0.01)
        assert writer.transport.get_write_buffer_size() <= MAX_UNREAD_BYTES  # 32 answers were ~45 MiB
        theirs.settimeout(10)
        reading = asyncio.create_task(asyncio.to_thread(_read_to_the_end, theirs))
        writer.close()  # what waits in the buffer goes as the other end reads it
        await writer.wait_closed()
        answers = [decode_to_child(line + b"\n") for line in (await reading).splitlines()]
        delivered = [a for a in answers if isinstance(a, ToolFetched) and a.response is not None]
        failed = [a for a in answers if isinstance(a, ToolFetched) and a.error and "not read yet" in a.error]
        assert len(delivered) + len(failed) == MAX_IN_FLIGHT and delivered and failed
    finally:
        await egress.close()
        if not writer.is_closing():
            writer.transport.abort()
        theirs.close()
        big.close()


async def test_the_daemon_refuses_a_process_past_max_rate() -> None:
    """Each request costs the daemon's event loop its lookup, connection and parse, even one its first hop
    refuses: past MAX_IN_FLIGHT at once and MAX_RATE a second on average, a process's requests are refused (and
    counted as strays by handle.py). Sent as a process that ignores its channel's pacing would send them."""
    now = [1000.0]
    answers: list[Message] = []
    egress = ToolEgress(ToolSettings(), answers.append, "m", clock=lambda: now[0])

    async def start(request_id: int) -> bool:
        started = egress.start(
            ToolFetch(request_id=request_id, request=ToolRequest(method="GET", url="http://127.0.0.1:9/"))
        )
        async with asyncio.timeout(10):
            while egress.in_flight:  # refused at its first hop (loopback), at once
                await asyncio.sleep(0.001)
        return started

    assert [await start(i) for i in range(MAX_IN_FLIGHT)] == [True] * MAX_IN_FLIGHT
    assert not await start(MAX_IN_FLIGHT)  # the burst is spent, and no time passed
    assert "a second" in str(answers[-1])
    now[0] += 1.0
    assert [await start(100 + i) for i in range(int(MAX_RATE) + 1)] == [True] * int(MAX_RATE) + [False]


async def test_an_honest_process_keeps_under_the_daemons_bounds_however_many_requests_its_tasks_make(
    server: LocalServer,
) -> None:
    """The child's channel waits for a slot and its turn (tool_channel.py), so a burst of tool calls is paced,
    never refused for the daemon's bounds, which would count against the process as strays."""
    wire = Wire(ToolSettings())
    calls = [wire.channel.send(ToolRequest(method="GET", url=server.url(f"/{i}"))) for i in range(MAX_IN_FLIGHT + 12)]
    async with asyncio.timeout(30):
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(outcome, EgressRefusedError) for outcome in outcomes), outcomes  # loopback: all refused
    assert not [a for a in wire.answers if a.error and ("a second" in a.error or "open already" in a.error)]
