"""The HTTP endpoint served by uvicorn on 127.0.0.1, scraped with httpx."""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from node.ops.http_api import (
    FIRST_REQUEST_WAIT_S,
    HealthReport,
    HttpServer,
    HttpServerError,
    create_app,
    is_loopback_address,
)
from node.ops.metrics import NodeMetrics

HOST = "127.0.0.1"


class FakeDaemonState:
    """Plain state the callables read, as the daemon's would be."""

    def __init__(self) -> None:
        self.health = HealthReport(ok=True)
        self.status: dict[str, Any] = {"peer_id": "16Uiu2HAm-test", "models": ["smollm2-135m"]}

    def get_health(self) -> HealthReport:
        return self.health

    def get_status(self) -> dict[str, Any]:
        return self.status


@pytest.fixture
def metrics() -> NodeMetrics:
    return NodeMetrics()


@pytest.fixture
def state() -> FakeDaemonState:
    return FakeDaemonState()


@pytest.fixture
async def server(metrics: NodeMetrics, state: FakeDaemonState) -> AsyncIterator[HttpServer]:
    srv = HttpServer(create_app(metrics, state.get_health, state.get_status))
    await srv.start(HOST, 0)
    yield srv
    await srv.stop()


@pytest.fixture
async def client(server: HttpServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://{HOST}:{server.port}", timeout=5) as c:
        yield c


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_metrics_scrape_reflects_updates(client: httpx.AsyncClient, metrics: NodeMetrics) -> None:
    metrics.tasks_received.inc(3)
    metrics.tasks_accepted.inc()
    metrics.tasks_completed.inc()
    metrics.tasks_failed.inc()
    metrics.reject("expired")
    metrics.ignore("no_model")
    metrics.task_latency_seconds.observe(1.5)
    metrics.task_queue_wait_seconds.observe(0.02)
    metrics.tokens_generated.labels(model="smollm2-135m").inc(120)
    metrics.tokens_per_second.labels(model="smollm2-135m").set(120)
    metrics.peers.set(4)
    metrics.mesh_peers.labels(topic="tasks/v1").set(3)
    metrics.journal_backlog.set(2)
    metrics.capacity_free.set(1)
    metrics.tasks_running.set(1)

    resp = await client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    got = samples(resp.text)
    assert got[("compute_node_tasks_received_total", ())] == 3
    assert got[("compute_node_tasks_taken_total", ())] == 1
    assert got[("compute_node_tasks_completed_total", ())] == 1
    assert got[("compute_node_tasks_failed_total", ())] == 1
    assert got[("compute_node_tasks_rejected_total", (("reason", "expired"),))] == 1
    assert got[("compute_node_tasks_ignored_total", (("reason", "no_model"),))] == 1
    assert got[("compute_node_task_latency_seconds_count", ())] == 1
    assert got[("compute_node_task_latency_seconds_sum", ())] == 1.5
    assert got[("compute_node_task_queue_wait_seconds_bucket", (("le", "0.05"),))] == 1
    assert got[("compute_node_tokens_generated_total", (("model", "smollm2-135m"),))] == 120
    assert got[("compute_node_tokens_per_second", (("model", "smollm2-135m"),))] == 120
    assert got[("compute_node_peers", ())] == 4
    assert got[("compute_node_mesh_peers", (("topic", "tasks/v1"),))] == 3
    assert got[("compute_node_journal_backlog", ())] == 2
    assert got[("compute_node_capacity_free", ())] == 1
    assert got[("compute_node_tasks_running", ())] == 1

    metrics.tasks_received.inc()
    again = samples((await client.get("/metrics")).text)
    assert again[("compute_node_tasks_received_total", ())] == 4


def test_each_node_metrics_has_its_own_registry() -> None:
    a, b = NodeMetrics(), NodeMetrics()
    a.tasks_received.inc()
    assert samples(b.render()[0].decode())[("compute_node_tasks_received_total", ())] == 0


async def test_healthz_ok_then_unhealthy(client: httpx.AsyncClient, state: FakeDaemonState) -> None:
    resp = await client.get("/healthz")
    assert resp.status_code == 200 and resp.json() == {"status": "ok"}

    state.health = HealthReport(ok=False, reason="no peers for 120 s")
    resp = await client.get("/healthz")
    assert resp.status_code == 503
    assert resp.json() == {"status": "unhealthy", "reason": "no peers for 120 s"}


async def test_healthz_probe_that_raises_is_unhealthy(metrics: NodeMetrics, state: FakeDaemonState) -> None:
    def broken() -> HealthReport:
        raise RuntimeError("journal closed")

    srv = HttpServer(create_app(metrics, broken, state.get_status))
    await srv.start(HOST, 0)
    try:
        async with httpx.AsyncClient(timeout=5) as c:
            resp = await c.get(f"http://{HOST}:{srv.port}/healthz")
        assert resp.status_code == 503 and "journal closed" in resp.json()["reason"]
    finally:
        await srv.stop()


async def test_status_returns_the_daemon_dict(client: httpx.AsyncClient, state: FakeDaemonState) -> None:
    resp = await client.get("/status")
    assert resp.status_code == 200 and resp.json() == state.status
    state.status = {"peer_id": "x", "running": 2}
    assert (await client.get("/status")).json() == {"peer_id": "x", "running": 2}


async def test_a_port_in_use_gives_a_clear_error(metrics: NodeMetrics, state: FakeDaemonState) -> None:
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind((HOST, 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        srv = HttpServer(create_app(metrics, state.get_health, state.get_status))
        with pytest.raises(HttpServerError, match=f"{HOST}:{port}"):
            await srv.start(HOST, port)
    finally:
        holder.close()


async def test_stop_releases_port_and_leaves_signal_handlers(metrics: NodeMetrics, state: FakeDaemonState) -> None:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    srv = HttpServer(create_app(metrics, state.get_health, state.get_status))
    await srv.start(HOST, 0)
    port = srv.port
    assert port
    assert {sig: signal.getsignal(sig) for sig in before} == before
    await srv.stop()
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient(timeout=2) as c:
            await c.get(f"http://{HOST}:{port}/healthz")
    # The same port can be bound again right away (a restart).
    again = HttpServer(create_app(metrics, state.get_health, state.get_status))
    await again.start(HOST, port)
    await again.stop()


async def test_a_connection_accepted_before_stop_gets_its_answer(metrics: NodeMetrics, state: FakeDaemonState) -> None:
    # A client connected, then stop() began before its request arrived: the request is still answered
    # (plain uvicorn closes such a connection unanswered), and stop() returns once it is.
    srv = HttpServer(create_app(metrics, state.get_health, state.get_status))
    await srv.start(HOST, 0)
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection(HOST, srv.port)
    await asyncio.sleep(0.2)  # accepted by now
    started = loop.time()
    stopping = asyncio.create_task(srv.stop())
    await asyncio.sleep(0.5)
    assert not stopping.done()  # waiting for the request
    writer.write(f"GET /healthz HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    await stopping
    assert loop.time() - started < FIRST_REQUEST_WAIT_S


async def test_a_connection_that_never_sends_delays_stop_by_a_bounded_time(
    metrics: NodeMetrics, state: FakeDaemonState
) -> None:
    srv = HttpServer(create_app(metrics, state.get_health, state.get_status))
    await srv.start(HOST, 0)
    loop = asyncio.get_running_loop()
    _, writer = await asyncio.open_connection(HOST, srv.port)
    await asyncio.sleep(0.2)
    started = loop.time()
    await asyncio.wait_for(srv.stop(), FIRST_REQUEST_WAIT_S + 5)
    assert FIRST_REQUEST_WAIT_S - 0.1 < loop.time() - started
    writer.close()


def test_serves_under_uvloop(metrics: NodeMetrics, state: FakeDaemonState) -> None:
    """The daemon runs uvloop; the server must start, answer and stop there too."""
    import uvloop

    async def scenario() -> int:
        srv = HttpServer(create_app(metrics, state.get_health, state.get_status))
        await srv.start(HOST, 0)
        try:
            async with httpx.AsyncClient(timeout=5) as c:
                return (await c.get(f"http://{HOST}:{srv.port}/healthz")).status_code
        finally:
            await srv.stop()

    assert uvloop.run(scenario()) == 200


# Dashboards and alerts use these names: a rename in node/ops/metrics.py must not change them
# (the attribute `tasks_accepted` is exported as compute_node_tasks_taken_total).
EXPORTED_METRICS = {
    ("compute_node_tasks_received_total", "counter"),
    ("compute_node_tasks_taken_total", "counter"),
    ("compute_node_tasks_completed_total", "counter"),
    ("compute_node_tasks_failed_total", "counter"),
    ("compute_node_tasks_rejected_total", "counter"),
    ("compute_node_tasks_ignored_total", "counter"),
    ("compute_node_tasks_busy_total", "counter"),
    ("compute_node_task_latency_seconds", "histogram"),
    ("compute_node_task_queue_wait_seconds", "histogram"),
    ("compute_node_tokens_generated_total", "counter"),
    ("compute_node_tokens_per_second", "gauge"),
    ("compute_node_peers", "gauge"),
    ("compute_node_mesh_peers", "gauge"),
    ("compute_node_gossip_dropped_total", "counter"),
    ("compute_node_connections_refused_total", "counter"),
    ("compute_node_streams_refused_total", "counter"),
    ("compute_node_journal_backlog", "gauge"),
    ("compute_node_journal_errors_total", "counter"),
    ("compute_node_results_unjournalled", "gauge"),
    ("compute_node_capacity_free", "gauge"),
    ("compute_node_tasks_running", "gauge"),
    ("compute_node_remote_engine_up", "gauge"),
    ("compute_node_remote_engine_down_total", "counter"),
    ("compute_node_exec_crashes_total", "counter"),
    ("compute_node_exec_restarts_total", "counter"),
    ("compute_node_exec_stalls_total", "counter"),
    ("compute_node_exec_start_failures_total", "counter"),
    ("compute_node_exec_process_up", "gauge"),
    ("compute_node_exec_rss_bytes", "gauge"),
}


def test_exported_metric_names_are_stable(metrics: NodeMetrics) -> None:
    text = metrics.render()[0].decode()
    exported = {
        (name, kind)
        for line in text.splitlines()
        if line.startswith("# TYPE ")
        for name, kind in [line.split()[2:4]]
        if not name.endswith("_created")  # prometheus_client's creation timestamps, switchable by env
    }
    assert exported == EXPORTED_METRICS


async def test_listening_on_loopback_it_answers_only_loopback_host_names(
    metrics: NodeMetrics, state: FakeDaemonState
) -> None:
    # A page whose own name its DNS rebinds to 127.0.0.1 reaches the endpoint through the operator's browser,
    # with its own name as Host: it read /status and /metrics before.
    srv = HttpServer(create_app(metrics, state.get_health, state.get_status, loopback_hosts_only=True))
    await srv.start(HOST, 0)
    try:
        async with httpx.AsyncClient(base_url=f"http://{HOST}:{srv.port}", timeout=5) as client:
            for host in (f"127.0.0.1:{srv.port}", "localhost", "[::1]:9090"):
                assert (await client.get("/status", headers={"Host": host})).status_code == 200, host
            for host in ("attacker.example", f"attacker.example:{srv.port}", "127.0.0.1.attacker.example"):
                refused = await client.get("/status", headers={"Host": host})
                assert refused.status_code == 421 and "loopback" in refused.json()["error"], host
    finally:
        await srv.stop()
    assert is_loopback_address("127.0.0.1") and is_loopback_address("localhost") and is_loopback_address("::1")
    assert not is_loopback_address("0.0.0.0") and not is_loopback_address("10.0.0.5")
