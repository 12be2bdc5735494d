"""Fixtures of the p2p tests: real libp2p hosts on 127.0.0.1."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import pytest

from node.p2p.host import P2PHost
from tests.support.p2p_hosts import LOOPBACK, HostFactory


@pytest.fixture
async def make_host() -> AsyncIterator[HostFactory]:
    """Start hosts on loopback; all are stopped at teardown."""
    hosts: list[P2PHost] = []

    async def make(secret: bytes | None = None, **kwargs: object) -> P2PHost:
        host = P2PHost(secret or secrets.token_bytes(32), [LOOPBACK], **kwargs)  # type: ignore[arg-type]
        await host.start()
        hosts.append(host)
        return host

    yield make
    await asyncio.gather(*(host.stop() for host in hosts))
