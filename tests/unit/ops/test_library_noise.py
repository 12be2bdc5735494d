"""LibraryNoiseFilter (node/ops/log.py): a library's warnings at most once a window per call site, counted.

Our own lines go through structlog; the stdlib handler configure_logging installs writes the libraries' records,
many of them another party's doing (one a request, a connection, a dial)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

from node.ops.log import LibraryNoiseFilter


def record(name: str, msg: str, *args: object, level: int = logging.WARNING, line: int = 10) -> logging.LogRecord:
    return logging.LogRecord(name, level, f"/lib/{name}.py", line, msg, args, None)


def test_one_record_a_window_per_call_site_whatever_its_text_and_the_next_says_how_many_were_held_back() -> None:
    noise = LibraryNoiseFilter(window_s=0.2)
    passed = [
        r for peer in range(50) if noise.filter(r := record("libp2p.network.swarm", "upgrade failed for %s", peer))
    ]
    assert [r.getMessage() for r in passed] == ["upgrade failed for 0"]  # a peer id in each text: one call site
    time.sleep(0.25)
    later = record("libp2p.network.swarm", "upgrade failed for %s", "x")
    assert (
        noise.filter(later) and later.getMessage() == "upgrade failed for x (49 more like it not logged since the last)"
    )
    again = record("libp2p.network.swarm", "upgrade failed for %s", "y")
    assert not noise.filter(again)


def test_call_sites_are_apart_and_records_below_warning_all_pass() -> None:
    noise = LibraryNoiseFilter(window_s=60)
    assert noise.filter(record("uvicorn.error", "Invalid HTTP request received.", line=1))
    assert noise.filter(record("uvicorn.error", "Unsupported upgrade request.", line=2))  # another line of the file
    assert noise.filter(record("asyncio", "Invalid HTTP request received.", line=1))  # another logger
    assert not noise.filter(record("uvicorn.error", "Invalid HTTP request received.", line=1))
    assert all(noise.filter(record("libp2p.pubsub", "detail", level=logging.INFO, line=3)) for _ in range(20))
    failure = record("uvicorn.error", "Exception in ASGI application", level=logging.ERROR, line=4)
    assert noise.filter(failure) and failure.getMessage() == "Exception in ASGI application"  # nothing held back


DIAL_SCRIPT = """
import asyncio, socket
from node.ops.log import configure_logging
configure_logging("info", "json")
from node.p2p.host import P2PHost
from node.wire.identity import Identity

async def main():
    async def hang_up(reader, writer):  # a listener a peer advertises that answers nothing
        writer.close()
    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    other = P2PHost(Identity.generate().secret, ["/ip4/127.0.0.1/tcp/0"])
    host = P2PHost(Identity.generate().secret, ["/ip4/127.0.0.1/tcp/0"])
    await host.start()
    failed = 0
    for _ in range(10):
        try:
            await host.connect(f"/ip4/127.0.0.1/tcp/{port}/p2p/{other.peer_id}")
        except Exception:
            failed += 1
    await host.stop()
    print("failed", failed)

asyncio.run(main())
"""


def test_dials_that_fail_their_handshake_log_each_of_py_libp2ps_lines_once() -> None:
    """py-libp2p logs two ERRORs for each dial whose handshake fails (20 for these 10 dials)."""
    root = Path(__file__).resolve().parents[3]
    done = subprocess.run(
        [sys.executable, "-c", DIAL_SCRIPT], capture_output=True, text=True, timeout=120, cwd=root, check=True
    )
    assert done.stdout.split() == ["failed", "10"]
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    libp2p = [line for line in lines if line["logger"].startswith("libp2p")]
    assert 1 <= len(libp2p) <= 2, libp2p
    assert len({line["logger"] for line in libp2p}) == len(libp2p)  # one a call site


def failure(exc: BaseException, line: int = 1771) -> logging.LogRecord:
    """asyncio's default handler: every task's unhandled exception is logged from one line of base_events.py."""
    try:
        raise exc
    except BaseException as raised:
        info = (type(raised), raised, raised.__traceback__)
    return logging.LogRecord("asyncio", logging.ERROR, "/lib/asyncio/base_events.py", line, "Task failed", (), info)


def test_one_call_site_reporting_failures_of_many_origins_passes_each_origin() -> None:
    """One client-caused error at asyncio's handler must not hide a bug of ours logged from the same line."""
    noise = LibraryNoiseFilter(window_s=60)
    assert noise.filter(failure(ConnectionResetError("peer")))
    assert not noise.filter(failure(ConnectionResetError("peer again")))  # the same origin: held back
    assert noise.filter(failure(KeyError("ours")))
    assert noise.filter(failure(ZeroDivisionError()))
