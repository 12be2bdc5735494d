"""The P2P baseline: a bare gossipsub echo over the node's own libp2p host wrapper.

`python -m benchmarks.echo_peer` runs the responder: a `node.p2p.host.P2PHost` on
127.0.0.1 that answers every message on topic `bench-ping` with the same bytes
on `bench-pong`. No signing, validation, encryption, intake or workflow: what is
left is py-libp2p (TCP + Noise + Yamux + gossipsub) and the asyncio<->Trio
bridge, the floor under the node's publish -> result latency.
`EchoClient` is the publisher side.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import sys
import tempfile
import time
from typing import Self

import uvloop

from benchmarks.peers import PeerProcess
from benchmarks.stats import BenchmarkError
from node.p2p.handoff import GossipMessage
from node.p2p.host import P2PHost
from node.wire.identity import Identity

PING = "bench-ping"
PONG = "bench-pong"
_PREFIX = b"pong:"


def echo_process() -> PeerProcess:
    """The responder in its own process (READY when it prints `listening on ...`)."""
    return PeerProcess(
        [sys.executable, "-m", "benchmarks.echo_peer"], tempfile.TemporaryDirectory(prefix="bench-echo-")
    )


async def _serve() -> None:
    host = P2PHost(Identity.generate().secret, ["/ip4/127.0.0.1/tcp/0"])
    await host.start()
    pings = await host.subscribe(PING)
    pongs = await host.subscribe(PONG)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    for addr in host.listen_addrs:
        print(f"listening on {addr}", flush=True)

    async def answer() -> None:
        while True:
            message = await pings.get()
            await host.publish(PONG, _PREFIX + message.data)

    async def discard() -> None:
        while True:
            await pongs.get()

    tasks = [asyncio.create_task(answer()), asyncio.create_task(discard())]
    await stop.wait()
    for task in tasks:
        task.cancel()
    await host.stop()


class EchoClient:
    """Publishes pings to the echo peer and awaits each pong."""

    def __init__(self, peer: str) -> None:
        self._peer = peer
        self._host = P2PHost(Identity.generate().secret, ["/ip4/127.0.0.1/tcp/0"])
        self._pending: dict[bytes, asyncio.Future[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Self:
        await self._host.start()
        pongs = await self._host.subscribe(PONG)
        pings = await self._host.subscribe(PING)
        self._tasks = [asyncio.create_task(self._collect(pongs)), asyncio.create_task(self._discard(pings))]
        await self._host.connect(self._peer)
        if not await self._host.wait_for_mesh(PING, 15):
            raise BenchmarkError("the echo peer did not join the ping mesh within 15 s")
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._host.stop()

    async def round_trip(self, size: int = 64, timeout: float = 10.0) -> float:
        """Seconds from publishing a ping to receiving its pong."""
        nonce = secrets.token_bytes(16)
        payload = nonce + os.urandom(max(0, size - len(nonce)))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending[nonce] = future
        started = time.perf_counter()
        try:
            await self._host.publish(PING, payload)
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise BenchmarkError(f"no pong within {timeout:g} s") from None
        finally:
            self._pending.pop(nonce, None)
        return time.perf_counter() - started

    async def _collect(self, queue: asyncio.Queue[GossipMessage]) -> None:
        while True:
            message = await queue.get()
            nonce = message.data[len(_PREFIX) : len(_PREFIX) + 16]
            future = self._pending.get(nonce)
            if future is not None and not future.done():
                future.set_result(None)

    @staticmethod
    async def _discard(queue: asyncio.Queue[GossipMessage]) -> None:
        while True:
            await queue.get()


if __name__ == "__main__":
    uvloop.run(_serve())
