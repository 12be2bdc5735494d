"""Metrics, health and status of a running node over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import httpx
import pytest
import structlog
import structlog.testing

from node.daemon.server import NodeServer
from node.ops.http_api import HttpServerError
from node.p2p.host import P2PHost
from node.publisher.client import Client, Task
from node.wire.identity import Identity
from tests.support.cluster import dialable, node_settings, running_node
from workflows import Simple

pytestmark = pytest.mark.slow


async def test_metrics_health_and_status_over_http(tmp_path: Path) -> None:
    settings = node_settings(tmp_path / "node", http_enabled=True, http_port=0, startup_grace=0.5)
    async with running_node(settings) as server:
        assert server.running.http is not None
        base = f"http://127.0.0.1:{server.running.http.port}"
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            await server.running.parts.monitor.sample()
            await asyncio.sleep(0.6)  # past the startup grace, still no peers
            lonely = await http.get("/healthz")
            assert lonely.status_code == 503 and lonely.json()["reason"] == "no peers"

            async with Client(peers=[dialable(server)]) as client:
                res = await client.execute(
                    Task(workflow=Simple().workflow("Hi", max_tokens=8), models=["*"]), timeout=60
                )
                assert res.text
                raw = P2PHost(Identity.generate().secret, ["/ip4/127.0.0.1/tcp/0"])
                await raw.start()
                try:
                    await raw.connect(dialable(server))
                    await raw.subscribe("task")
                    for _ in range(50):
                        if (await raw.mesh_sizes()).get("task"):
                            break
                        await asyncio.sleep(0.1)
                    await raw.publish("task", b"this is not json")
                    await asyncio.sleep(0.5)
                finally:
                    await raw.stop()
                await server.running.parts.monitor.sample()
                assert (await http.get("/healthz")).status_code == 200
                status = (await http.get("/status")).json()
                metrics = (await http.get("/metrics")).text
        assert status["address"] == server.running.identity.address
        assert status["models"] == ["smollm2:135m"] and status["capacity"]["max"] == 4 + 8  # slots + queue
        assert status["peers"] >= 1
        assert "compute_node_tasks_taken_total 1.0" in metrics
        assert "compute_node_tasks_completed_total 1.0" in metrics
        assert 'compute_node_tasks_rejected_total{reason="not_json"} 1.0' in metrics
        assert "compute_node_task_latency_seconds_count 1.0" in metrics


async def test_a_taken_http_port_stops_the_start_before_any_model_loads(tmp_path: Path) -> None:
    """The HTTP endpoint binds last: a taken port was found after every model had loaded (minutes for a large one)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = NodeServer(node_settings(tmp_path / "node", http_enabled=True, http_port=port))
        try:
            with structlog.testing.capture_logs() as logs:
                with pytest.raises(
                    HttpServerError, match=f"cannot listen on 127.0.0.1:{port}: .* \\(http_host / http_port;"
                ):
                    await server.startup()
        finally:
            await server.shutdown()
    assert not [entry for entry in logs if entry["event"] in ("model loaded", "execution process ready")]
