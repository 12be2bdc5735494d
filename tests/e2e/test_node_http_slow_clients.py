"""A real node's HTTP endpoint (its defaults) against clients that open connections and send nothing, or part
of a request head, and never more: the node holds at most its cap of them, and its endpoint and its peers are
served all the while."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from node.ops.http_api import MAX_CONNECTIONS
from node.publisher.client import Client, Task
from tests.support.cluster import dialable, node_settings, running_node
from tests.unit.ops.test_http_limits import close, connect, still_open
from workflows import Simple

pytestmark = pytest.mark.slow

HELD = 300


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_idle_and_partial_connections_hold_at_most_the_cap(tmp_path: Path) -> None:
    # uvicorn held every one for good: 20,000 took all of a daemon's descriptors and no publisher could dial it.
    settings = node_settings(tmp_path / "node", http_enabled=True, http_port=0)
    async with running_node(settings) as server:
        assert server.running.http is not None and server.running.http.port is not None
        port = server.running.http.port
        before = open_descriptors()
        idle = await connect(port, HELD)
        partial = await connect(port, HELD, b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        try:
            # Each side of a loopback connection is a descriptor of this process: the test's own are 2 * HELD.
            held = open_descriptors() - before - 2 * HELD
            assert held <= MAX_CONNECTIONS + 8, held
            assert await still_open(idle) + await still_open(partial) <= MAX_CONNECTIONS
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
                assert (await http.get("/status")).status_code == 200
            async with Client(peers=[dialable(server)]) as client:
                result = await client.execute(
                    Task(workflow=Simple().workflow("Hi", max_tokens=4), models=["*"]), timeout=60
                )
                assert result.text
        finally:
            close(idle + partial)
