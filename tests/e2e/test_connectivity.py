"""Connectivity and replays: re-dialling a restarted bootstrap peer; a task id runs once per node."""

from __future__ import annotations

import asyncio
import time

import pytest
import structlog

from node.daemon.server import NodeServer
from node.p2p.host import P2PHost
from node.publisher.client import Client
from node.wire.envelope import seal
from node.wire.identity import Identity
from node.wire.messages import TaskBody, TaskInput, encode_body
from tests.support.cluster import dialable, node_settings, running_node
from tests.support.nodeproc import free_port
from workflows import Simple

pytestmark = pytest.mark.slow


async def eventually(check, what: str, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


async def test_node_reconnects_to_a_bootstrap_peer_restarted_on_the_same_address(tmp_path) -> None:
    key = Identity.generate()
    port = free_port()
    first_settings = node_settings(tmp_path / "a", secret_key=key.secret.hex(), listen=[f"/ip4/127.0.0.1/tcp/{port}"])
    address = f"/ip4/127.0.0.1/tcp/{port}/p2p/{key.peer_id}"
    first = NodeServer(first_settings)
    await first.startup()
    follower = NodeServer(node_settings(tmp_path / "b", bootstrap=[address], redial_max_backoff=2))
    await follower.startup()
    try:
        assert await _has_peer(follower, key.peer_id)
        await first.shutdown()
        await eventually(lambda: _lost(follower, key.peer_id), "the follower to notice its peer is gone")
        with structlog.testing.capture_logs() as logs:
            restarted = NodeServer(first_settings)
            await restarted.startup()
            try:
                await eventually(lambda: _has_peer(follower, key.peer_id), "the follower to re-dial")
            finally:
                await restarted.shutdown()
        assert any(e["event"] == "connected" and e.get("addr") == address for e in logs)
    finally:
        await follower.shutdown()


async def _lost(server: NodeServer, peer_id: str) -> bool:
    return not await _has_peer(server, peer_id)


async def _has_peer(server: NodeServer, peer_id: str) -> bool:
    return peer_id in await server.running.host.peers()


async def test_a_replayed_task_id_runs_once(tmp_path) -> None:
    publisher = Identity.generate()
    async with (
        running_node(node_settings(tmp_path / "a")) as node,
        Client(peers=[dialable(node)], secret_key=publisher.secret) as client,
    ):
        body = TaskBody(
            task_id="replayed-task-1",
            deadline=time.time_ns() + 60 * 10**9,
            input=TaskInput(workflow=Simple().workflow("Hi", max_tokens=4), model=["*"]),
            picked_nodes=[node.running.identity.address],
            public_key=publisher.public_key_compressed.hex(),
        )
        raw = P2PHost(Identity.generate().secret, ["/ip4/127.0.0.1/tcp/0"])  # relays; the envelope is the publisher's
        await raw.start()
        try:
            await raw.connect(dialable(node))
            await raw.subscribe("task")
            await eventually(lambda: _meshed(raw), "the raw peer to join the task mesh")
            with structlog.testing.capture_logs() as logs:
                result = client.wait(body.task_id, timeout=60, nodes=[node.running.identity.address])
                waiting = asyncio.create_task(result)
                for _ in range(3):  # the same task, sealed again each time (new envelope, same id)
                    await raw.publish("task", seal(publisher, "task", encode_body(body)))
                    await asyncio.sleep(0.3)
                assert (await waiting).text
                await asyncio.sleep(0.5)
        finally:
            await raw.stop()
    started = [e for e in logs if e["event"] == "task started" and e.get("task_id") == body.task_id]
    duplicates = [e for e in logs if e["event"] == "task ignored" and e.get("reason") == "duplicate"]
    assert len(started) == 1
    assert len(duplicates) == 2


async def _meshed(host: P2PHost) -> bool:
    return (await host.mesh_sizes()).get("task", 0) > 0
