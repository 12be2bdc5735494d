"""Operations: systemd notify, graceful drain, crash recovery from the journal, metrics and health.

Real `compute-node start` subprocesses, real signals (SIGTERM, SIGKILL), a real
unix datagram socket acting as systemd, real HTTP scrapes; loopback only."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest

from node.p2p.host import P2PHost
from node.publisher.client import Client, Task, TaskFailedError
from node.wire.identity import Identity
from tests.cluster import dialable, node_settings, running_node
from tests.nodeproc import NodeProcess, cli_env, free_port
from workflows import Simple

pytestmark = pytest.mark.slow


def long_workflow(items: int = 300) -> dict:
    """A generation the schema forces to be long (hundreds of tokens), so it runs for seconds."""
    workflow = Simple().workflow(prompt="List booleans.", max_tokens=8 * items)
    schema = {"type": "array", "items": {"type": "boolean"}, "minItems": items, "maxItems": items}
    workflow["tasks"][0]["schema"] = json.dumps(schema)
    return workflow


def items_in(text: str) -> int:
    """How many booleans the result holds (a JSON list renders as entries joined by " \\n")."""
    return len([word for word in text.split() if word in ("true", "false")])


def node_address(node: NodeProcess) -> str:
    return node.wait_for_log("node started")["address"]


def test_systemd_sees_ready_then_watchdog_then_stopping(tmp_path: Path) -> None:
    notify_path = tmp_path / "notify.sock"
    systemd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    systemd.bind(str(notify_path))
    systemd.settimeout(0.5)
    received: list[str] = []

    def collect_until(wanted: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not any(m.startswith(wanted) for m in received):
            try:
                received.extend(systemd.recv(4096).decode().splitlines())
            except TimeoutError:
                pass
        assert any(m.startswith(wanted) for m in received), received

    node = NodeProcess(tmp_path / "node", env=cli_env(NOTIFY_SOCKET=str(notify_path), WATCHDOG_USEC="1000000"))
    try:
        collect_until("WATCHDOG=1", timeout=30)
        assert node.stop(signal.SIGTERM) == 0
        collect_until("STOPPING=1", timeout=5)
    finally:
        node.stop(signal.SIGKILL)
        systemd.close()
    first = {
        kind: next(i for i, m in enumerate(received) if m.startswith(kind))
        for kind in ("READY=1", "WATCHDOG=1", "STOPPING=1")
    }
    assert first["READY=1"] < first["WATCHDOG=1"] < first["STOPPING=1"], received
    assert any(m.startswith("STATUS=") for m in received)


@pytest.mark.parametrize(("drain_timeout", "expect_result"), [("60", True), ("0.5", False)])
async def test_sigterm_drains_the_running_task_then_exits_0(
    tmp_path: Path, drain_timeout: str, expect_result: bool
) -> None:
    node = NodeProcess(tmp_path / "node", "--drain-timeout", drain_timeout)
    try:
        address = node_address(node)
        async with Client(peers=[node.addr]) as client:
            task_id = await client.submit(Task(workflow=long_workflow(), models=["*"], nodes=[address]), timeout=90)
            await asyncio.to_thread(node.wait_for_log, "task started", 30, task_id=task_id)
            node.proc.send_signal(signal.SIGTERM)
            if expect_result:
                result = await client.wait(task_id, timeout=90, nodes=[address])
                assert items_in(result.text) == 300
            else:
                with pytest.raises(TaskFailedError, match="interrupted: node shutting down"):
                    await client.wait(task_id, timeout=30, nodes=[address])
            assert await asyncio.to_thread(node.proc.wait, 60) == 0
    finally:
        node.stop(signal.SIGKILL)


async def test_kill_9_mid_task_then_restart_answers_interrupted(tmp_path: Path) -> None:
    port, key = free_port(), Identity.generate().secret
    node = NodeProcess(tmp_path / "node", port=port)
    try:
        address = node_address(node)
        async with Client(peers=[node.addr], secret_key=key) as client:
            task_id = await client.submit(Task(workflow=long_workflow(), models=["*"], nodes=[address]), timeout=120)
            await asyncio.to_thread(node.wait_for_log, "task started", 30, task_id=task_id)
            node.stop(signal.SIGKILL)
        node = NodeProcess(tmp_path / "node", port=port)
        async with Client(peers=[node.addr], secret_key=key) as client:
            with pytest.raises(TaskFailedError, match="interrupted: node restarted"):
                await client.wait(task_id, timeout=30, nodes=[address])
    finally:
        node.stop(signal.SIGKILL)


async def test_result_finished_without_peers_survives_kill_9_and_is_published_after_restart(tmp_path: Path) -> None:
    port, key = free_port(), Identity.generate().secret
    node = NodeProcess(tmp_path / "node", port=port)
    try:
        address = node_address(node)
        async with Client(peers=[node.addr], secret_key=key) as client:
            task_id = await client.submit(Task(workflow=long_workflow(150), models=["*"], nodes=[address]), timeout=120)
            await asyncio.to_thread(node.wait_for_log, "task started", 30, task_id=task_id)
        # The publisher left: the node finishes with no peers and keeps the result in its journal.
        await asyncio.to_thread(node.wait_for_log, "no peers: result kept until peers return", 60, task_id=task_id)
        node.stop(signal.SIGKILL)
        node = NodeProcess(tmp_path / "node", port=port)
        async with Client(peers=[node.addr], secret_key=key) as client:
            result = await client.wait(task_id, timeout=30, nodes=[address])
        assert items_in(result.text) == 150
        await asyncio.to_thread(node.wait_for_log, "result published", 10, task_id=task_id)
    finally:
        node.stop(signal.SIGKILL)


async def test_metrics_health_and_status_over_http(tmp_path: Path) -> None:
    settings = node_settings(tmp_path / "node", http_enabled=True, http_port=0, startup_grace=0.5)
    async with running_node(settings) as server:
        assert server.http is not None and server.parts is not None
        base = f"http://127.0.0.1:{server.http.port}"
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            await server.parts.monitor.sample()
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
                await server.parts.monitor.sample()
                assert (await http.get("/healthz")).status_code == 200
                status = (await http.get("/status")).json()
                metrics = (await http.get("/metrics")).text
        assert status["address"] == server.identity.address
        assert status["models"] == ["smollm2:135m"] and status["capacity"]["max"] == 4 + 8  # slots + queue
        assert status["peers"] >= 1
        assert "compute_node_tasks_taken_total 1.0" in metrics
        assert "compute_node_tasks_completed_total 1.0" in metrics
        assert 'compute_node_tasks_rejected_total{reason="not_json"} 1.0' in metrics
        assert "compute_node_task_latency_seconds_count 1.0" in metrics
