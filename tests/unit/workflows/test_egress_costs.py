"""What a hostile server's answer may cost the thread the egress runs on (the daemon's event loop, for its
execution processes): a body in a great many small pieces, and headers of a great many lines on every redirect.
Real servers on loopback; workflows/egress.py's piece bound and CPU allowance (workflows/cpu_meter.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import pytest

from workflows.allowance import Allowance
from workflows.egress import CPU_BURST, SMALL_PIECES, Egress
from workflows.errors import ToolError
from workflows.options import ToolSettings
from workflows.tool_http import ToolRequest


async def test_a_body_in_a_great_many_small_pieces_is_cut_short() -> None:
    """Each piece of a body (a chunk of a chunked one) costs the event loop its parse, whatever its size: a
    million one-byte chunks took 10 s of it. Past SMALL_PIECES more than one per PIECE_BYTES, the request fails."""
    chunks = b"1\r\nx\r\n" * (4 * SMALL_PIECES)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n")
        await writer.drain()
        writer.close()

    chunked = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = chunked.sockets[0].getsockname()[1]
    egress = Egress(ToolSettings(egress_allow=["127.0.0.1"]))
    try:
        started = time.thread_time()
        with pytest.raises(ToolError, match="too many small pieces"):
            await egress.send(ToolRequest(method="GET", url=f"http://127.0.0.1:{port}/"))
        assert time.thread_time() - started < 2.0  # a bounded cost, not one per chunk sent
        honest = bytes(range(256)) * 64  # 16 KiB in 16 chunks of 1 KiB
        chunks = b"".join(b"400\r\n" + honest[i : i + 1024] + b"\r\n" for i in range(0, len(honest), 1024))
        assert (await egress.send(ToolRequest(method="GET", url=f"http://127.0.0.1:{port}/"))).body == honest
    finally:
        chunked.close()
        await chunked.wait_closed()


@pytest.fixture
async def heavy_heads() -> AsyncIterator[int]:
    """The port of a server whose answers carry heads of 20,000 tiny header lines (~100 KiB, ~85 ms of parse
    each): /0 to /4 redirect to the next, /5 answers 200."""
    lines = b"a:b\r\n" * 20000

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        hop = int(head.split(b" ")[1].strip(b"/") or b"0")
        status = b"302 Found\r\nlocation: /%d\r\n" % (hop + 1) if hop < 5 else b"200 OK\r\n"
        writer.write(b"HTTP/1.1 " + status + lines + b"content-length: 2\r\n\r\nok")
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


async def test_answers_whose_headers_cost_the_loop_are_stopped_at_the_processes_share_of_cpu(heavy_heads: int) -> None:
    """A hostile server's headers (~100 KiB in 20,000 tiny lines, on each of six responses with redirects) cost
    the event loop their parse, ~85 ms a response; no cap on bytes or pieces bounds every shape of answer. A
    process's requests get CPU_BURST of the loop's CPU at once and CPU_PER_SECOND after (workflows/cpu_meter.py)."""
    port = heavy_heads
    egress = Egress(ToolSettings(egress_allow=["127.0.0.1"]))
    outcomes = []
    started = time.thread_time()
    for _ in range(6):
        try:
            outcomes.append((await egress.send(ToolRequest(method="GET", url=f"http://127.0.0.1:{port}/"))).status)
        except ToolError as exc:
            outcomes.append(str(exc))
    spent = time.thread_time() - started
    assert any("share of the node's CPU" in str(outcome) for outcome in outcomes), outcomes
    assert spent < CPU_BURST + 1.0  # the server's own work included: ~3 s of the loop's CPU without the meter


async def test_the_meter_stops_a_real_request_midway_despite_the_connects_own_cancel_scope(heavy_heads: int) -> None:
    """httpx connects through anyio, whose cancel scope around the connect cancels the task and takes it back:
    the meter must go on after that (red team: it stopped for good at the first connect, and a request that
    started with any allowance left ran its whole timeout). One request, an allowance of 30 ms, heads of 20,000
    lines on six responses: stopped after about one head's parse (~85 ms), not all six (~0.5 s)."""
    port = heavy_heads
    settings = ToolSettings(egress_allow=["127.0.0.1"])
    await Egress(settings).send(ToolRequest(method="GET", url=f"http://127.0.0.1:{port}/5"))  # imports, warm
    egress = Egress(settings, cpu=Allowance(per_second=0.0, burst=0.03))
    started = time.thread_time()
    with pytest.raises(ToolError, match="stopped"):
        await egress.send(ToolRequest(method="GET", url=f"http://127.0.0.1:{port}/"))
    assert time.thread_time() - started < 0.35  # the server's own work included


FIRST_REQUEST = """
import asyncio, json, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import workflows.egress as egress
from workflows.options import ToolSettings
from workflows.tool_http import ToolRequest

class Ok(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *args): pass

server = ThreadingHTTPServer(("127.0.0.1", 0), Ok)
threading.Thread(target=server.serve_forever, daemon=True).start()
loaded_when_metered = []
metered = egress.metered
def spy(coroutine, allowance, error):
    loaded_when_metered.extend(name for name in ("httpcore", "h11", "anyio._backends._asyncio") if name in sys.modules)
    return metered(coroutine, allowance, error)
egress.metered = spy
answer = asyncio.run(egress.Egress(ToolSettings(egress_allow=["127.0.0.1"])).send(
    ToolRequest(method="GET", url=f"http://127.0.0.1:{server.server_port}/")))
print(json.dumps([answer.status, loaded_when_metered]))
"""


def test_the_first_request_of_a_process_is_not_charged_the_imports_of_the_http_stack() -> None:
    """httpcore, h11 and anyio's backend load on a process's first exchange (~0.1 s of CPU, a fifth of CPU_BURST):
    loaded before the meter starts, so they are not taken from the allowance of whichever workflow came first."""
    ran = subprocess.run([sys.executable, "-c", FIRST_REQUEST], capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(ran.stdout) == [200, ["httpcore", "h11", "anyio._backends._asyncio"]]
