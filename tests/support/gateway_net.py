"""Real nodes and a gateway on 127.0.0.1: the network the gateway's e2e tests drive, and a gateway over one
silent peer for its unit tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from node.daemon.server import NodeServer
from node.gateway.server import Gateway
from node.gateway.settings import GatewaySettings
from node.p2p.host import P2PHost
from node.wire.identity import Identity
from node.wire.topics import HEARTBEAT_TOPIC, RESULTS_TOPIC, TASK_TOPIC
from tests.support.cluster import dialable, node_settings, running_node
from tests.support.streaming_peer import StreamingPeer

GatewaySettingsFor = Callable[[Path, list[str]], GatewaySettings]
"""(data dir, the nodes' dialable addresses) -> the gateway's settings."""


@dataclass
class GatewayNet:
    """The running nodes, the gateway in front of them and a scratch directory."""

    nodes: list[NodeServer]
    gateway: Gateway
    tmp: Path

    @property
    def addresses(self) -> set[str]:
        """The nodes' addresses."""
        return {node.running.identity.address for node in self.nodes}

    @property
    def peers(self) -> list[str]:
        """The nodes' dialable multiaddrs."""
        return [dialable(node) for node in self.nodes]

    def tasks_received(self) -> float:
        """Tasks the nodes received, all together (their metric)."""
        return sum(n.metrics.registry.get_sample_value("compute_node_tasks_received_total") or 0 for n in self.nodes)


@asynccontextmanager
async def gateway_net(
    tmp_path_factory: pytest.TempPathFactory, gateway_settings: GatewaySettingsFor, **node_overrides: Any
) -> AsyncIterator[GatewayNet]:
    """Two nodes (the second bootstraps from the first) and a gateway that has seen both heartbeats."""
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(
            running_node(node_settings(tmp_path_factory.mktemp("n1"), **node_overrides))
        )
        second = await stack.enter_async_context(
            running_node(node_settings(tmp_path_factory.mktemp("n2"), bootstrap=[dialable(first)], **node_overrides))
        )
        gateway = Gateway(gateway_settings(tmp_path_factory.mktemp("gw"), [dialable(first), dialable(second)]))
        await gateway.start()
        stack.push_async_callback(gateway.stop)
        deadline = time.monotonic() + 30
        while len(gateway.service.nodes()) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        yield GatewayNet([first, second], gateway, tmp_path_factory.mktemp("scratch"))


@asynccontextmanager
async def gateway_over_silent_peer(
    data_dir: Path, peer: Identity | None = None, **settings: Any
) -> AsyncIterator[Gateway]:
    """A gateway (its `settings` over the defaults) joined to one libp2p peer, of `peer`'s key, that reads
    the task topic and never answers: the gateway's tasks stay pending."""
    host = P2PHost((peer or Identity.generate()).secret, ["/ip4/127.0.0.1/tcp/0"])
    await host.start()
    try:
        await host.subscribe(TASK_TOPIC)
        gateway = Gateway(
            GatewaySettings.load(data_dir=data_dir, peers=[str(host.listen_addrs[0])], port=0, **settings)
        )
        await gateway.start()
        try:
            yield gateway
        finally:
            await gateway.stop()
    finally:
        await host.stop()


@asynccontextmanager
async def gateway_over_streaming_peer(peer: StreamingPeer, data_dir: Path, **settings: Any) -> AsyncIterator[Gateway]:
    """A started gateway (no API keys; `settings` over the defaults) joined to a started `StreamingPeer`
    (tests/support/streaming_peer.py), once it has seen the peer's heartbeat."""
    await peer.host.start()
    for topic in (TASK_TOPIC, RESULTS_TOPIC, HEARTBEAT_TOPIC):
        await peer.host.subscribe(topic)
    gateway = Gateway(GatewaySettings.load(data_dir=data_dir, peers=[peer.host.listen_addrs[0]], port=0, **settings))
    try:
        await gateway.start()
        for _ in range(100):
            if gateway.service.nodes():
                break
            if (await peer.host.mesh_sizes()).get(HEARTBEAT_TOPIC):
                await peer.host.publish(HEARTBEAT_TOPIC, peer.heartbeat())
            await asyncio.sleep(0.2)
        assert gateway.service.nodes(), "the gateway never saw the peer's heartbeat"
        yield gateway
    finally:
        await gateway.stop()
        await peer.host.stop()
