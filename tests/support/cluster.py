"""Helpers to run real nodes on 127.0.0.1 inside a test process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from config.settings import Settings
from node.daemon.server import NodeServer

LOOPBACK_PEERS = 100_000


def node_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Settings for a test node: loopback, free port, one thread, small context, no HTTP."""
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "listen": ["/ip4/127.0.0.1/tcp/0"],
        "n_ctx": 1024,
        "n_threads": 1,
        "http_enabled": False,
        "heartbeat_interval": 2.0,
        "drain_timeout": 5.0,
        "startup_benchmark": False,
        # Every test peer dials from 127.0.0.1: one host to the per-IP limits, which tests of them set lower.
        "inbound_connections_per_ip": LOOPBACK_PEERS,
        "inbound_connections_per_ip_per_minute": LOOPBACK_PEERS,
    }
    values.update(overrides)
    return Settings.load(**values)


@asynccontextmanager
async def running_node(settings: Settings) -> AsyncIterator[NodeServer]:
    """Start a node with `startup()` and shut it down on exit."""
    server = NodeServer(settings)
    try:
        await asyncio.wait_for(server.startup(), timeout=60)
        yield server
    finally:
        await asyncio.wait_for(server.shutdown(), timeout=60)


def dialable(server: NodeServer) -> str:
    """The node's loopback multiaddr with /p2p/."""
    return next(addr for addr in server.running.host.listen_addrs if "/ip4/127.0.0.1/" in addr)
