"""Real libp2p hosts on 127.0.0.1 for tests: the constants and waits the p2p tests share
(the `make_host` fixture that starts them is in tests/unit/p2p/conftest.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from node.p2p.handoff import GossipMessage
from node.p2p.host import P2PHost

LOOPBACK = "/ip4/127.0.0.1/tcp/0"
TOPIC = "task"
WAIT_S = 10.0

HostFactory = Callable[..., Awaitable[P2PHost]]


async def wait_until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


async def wait_for_mesh(host: P2PHost, topic: str, peers: int) -> None:
    if not await host.wait_for_mesh(topic, WAIT_S, peers=peers):
        raise AssertionError(
            f"timed out after {WAIT_S} s waiting for {host.peer_id} to mesh {peers} peer(s) on {topic!r}"
        )


async def wait_for_mesh_to_empty(host: P2PHost, topic: str) -> None:
    async def empty() -> bool:
        return (await host.mesh_sizes()).get(topic, 0) == 0

    await wait_until(empty, f"{host.peer_id}'s {topic!r} mesh to empty")


async def link(a: P2PHost, b: P2PHost) -> None:
    assert await b.connect(a.listen_addrs[0]) == a.peer_id


async def line(a: P2PHost, b: P2PHost, c: P2PHost) -> None:
    """Links a to b and b to c (each subscribed to TOPIC, or relaying it, already), once b meshes both and c meshes b."""
    await link(a, b)
    await link(b, c)
    await wait_for_mesh(b, TOPIC, 2)
    await wait_for_mesh(c, TOPIC, 1)


async def receive(queue: asyncio.Queue[GossipMessage], timeout: float = WAIT_S) -> GossipMessage:
    return await asyncio.wait_for(queue.get(), timeout)


async def pair(make_host: HostFactory, **kwargs: object) -> tuple[P2PHost, P2PHost, asyncio.Queue, asyncio.Queue]:
    """Two connected hosts subscribed to TOPIC, meshed; returns (a, b, a's queue, b's queue)."""
    a, b = await make_host(**kwargs), await make_host(**kwargs)
    qa, qb = await a.subscribe(TOPIC), await b.subscribe(TOPIC)
    await link(a, b)
    await wait_for_mesh(a, TOPIC, 1)
    await wait_for_mesh(b, TOPIC, 1)
    return a, b, qa, qb
