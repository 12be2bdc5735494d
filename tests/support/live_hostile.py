"""A raw libp2p publisher attacking a live node, and the checks made after every case.

`LiveRun` publishes tasks carrying any workflow, waits for their (decrypted)
results, and watches the node: its heartbeats' spacing and this process's RSS
(the node runs in it).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from node.daemon.server import NodeServer
from node.p2p.handoff import GossipMessage
from node.p2p.host import P2PHost
from node.wire.ecies import decrypt
from node.wire.identity import Identity
from node.wire.inbound import decode
from node.wire.messages import ResultBody
from node.wire.topics import HEARTBEAT_TOPIC, RESULTS_TOPIC, TASK_TOPIC
from tests.support.cluster import dialable
from tests.support.hostile_corpus import DEFAULT_MODEL, Actors, Recipe, build_recipe, valid_task_body

RESULT_WAIT_S = 90.0


def rss_bytes() -> int:
    """Resident set size of this process (the node runs in it)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def connected_peer(node: NodeServer, identity: Identity) -> tuple[P2PHost, asyncio.Queue[GossipMessage]]:
    """A raw peer of `identity`, in the node's task and results mesh, with its results queue."""
    peer = P2PHost(identity.secret, ["/ip4/127.0.0.1/tcp/0"])
    await peer.start()
    results = await peer.subscribe(RESULTS_TOPIC)
    await peer.subscribe(TASK_TOPIC)
    await peer.connect(dialable(node))
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        sizes = await peer.mesh_sizes()
        if sizes.get(TASK_TOPIC, 0) and sizes.get(RESULTS_TOPIC, 0):
            return peer, results
        await asyncio.sleep(0.1)
    await peer.stop()
    raise AssertionError("the raw peer never joined the node's task and results mesh")


@dataclass
class Outcome:
    """A task's result: the error text, or the decrypted result text."""

    error: str | None
    text: str | None


@dataclass
class LiveRun:
    """One publisher peer connected to one node."""

    node: NodeServer
    peer: P2PHost
    actors: Actors
    heartbeat_interval: float
    heartbeats: list[float] = field(default_factory=list)
    waiting: dict[str, asyncio.Future[Outcome]] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def run_task(self, workflow: dict[str, Any], prompt: str | None = None) -> Outcome:
        """Publish a task with this workflow and wait for its result."""
        body: dict[str, Any] = {
            "taskId": "$TASK_ID",
            "deadline": "$DEADLINE",
            "input": {"workflow": workflow, "model": [DEFAULT_MODEL], "prompt": prompt},
            "publicKey": "$PUBKEY",
        }
        return await self._publish(body)

    async def run_valid_task(self) -> Outcome:
        return await self._publish(valid_task_body(prompt="Say OK."))

    async def _publish(self, body: dict[str, Any]) -> Outcome:
        built = build_recipe(Recipe(body=body), TASK_TOPIC, self.actors, time.time_ns())
        assert built.task_id is not None
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self.waiting[built.task_id] = future
        await self.peer.publish(TASK_TOPIC, built.data)
        try:
            return await asyncio.wait_for(future, RESULT_WAIT_S)
        finally:
            self.waiting.pop(built.task_id, None)

    def heartbeat_gap_since(self, started: float) -> float:
        """The longest wait between heartbeats since `started` (up to now)."""
        times = [t for t in self.heartbeats if t >= started]
        previous = max((t for t in self.heartbeats if t < started), default=started)
        points = [previous, *times, time.monotonic()]
        return max(b - a for a, b in zip(points, points[1:], strict=False))

    async def _results(self, queue: asyncio.Queue[GossipMessage]) -> None:
        while True:
            message = await queue.get()
            body = decode(RESULTS_TOPIC, message.data).body
            assert isinstance(body, ResultBody)
            future = self.waiting.get(body.task_id)
            if future is None or future.done():
                continue
            text = None
            if body.ciphertext is not None:
                text = decrypt(self.actors.publisher.secret, bytes.fromhex(body.ciphertext)).decode("utf-8")
            future.set_result(Outcome(body.error, text))

    async def _heartbeats(self, queue: asyncio.Queue[GossipMessage]) -> None:
        while True:
            await queue.get()
            self.heartbeats.append(time.monotonic())


@asynccontextmanager
async def live_publisher(node: NodeServer) -> AsyncIterator[LiveRun]:
    """A publisher peer in the node's task, results and heartbeat meshes."""
    publisher = Identity.generate()
    peer = P2PHost(publisher.secret, ["/ip4/127.0.0.1/tcp/0"])
    await peer.start()
    try:
        results = await peer.subscribe(RESULTS_TOPIC)
        heartbeats = await peer.subscribe(HEARTBEAT_TOPIC)
        await peer.subscribe(TASK_TOPIC)
        await peer.connect(dialable(node))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            sizes = await peer.mesh_sizes()
            if all(sizes.get(topic, 0) for topic in (TASK_TOPIC, RESULTS_TOPIC, HEARTBEAT_TOPIC)):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the publisher never joined the node's meshes")
        run = LiveRun(node, peer, Actors(publisher, Identity.generate(), node.running.identity.address),
                      node.settings.heartbeat_interval)  # fmt: skip
        run.tasks = [asyncio.create_task(run._results(results)), asyncio.create_task(run._heartbeats(heartbeats))]
        try:
            yield run
        finally:
            for task in run.tasks:
                task.cancel()
            await asyncio.gather(*run.tasks, return_exceptions=True)
    finally:
        await peer.stop()
