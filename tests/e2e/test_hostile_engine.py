"""Hostile workflows against a live node with DEFAULT settings (no `publishers` allow-list).

Every case is published by a stranger's key: non-yielding loops of every
operator, memory bombs through each memory operator, oversize results, grammar
bombs, every SSRF form, and (on a node whose `tool_allow` admits loopback)
compression bombs from a real HTTP server. After each case the node answers a
valid task, its heartbeats kept their interval within 2x, and RSS stays bounded.
"""

from __future__ import annotations

import gzip
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tests.support.cluster import node_settings, running_node
from tests.support.hostile_workflows import (
    GRAMMAR_BOMBS,
    LOOPS,
    MEMORY_BOMBS,
    OVERSIZE,
    SSRF_HOSTS,
    HostileWorkflow,
    end_loop,
    generation_loop,
    http_tool_workflow,
    insert_bomb,
    many_tools_bomb,
    memory_only_loop,
    schema_task,
)
from tests.support.http_server import LocalServer, Route
from tests.support.live_hostile import LiveRun, live_publisher, rss_bytes

pytestmark = pytest.mark.slow

MAX_RSS_GROWTH_BYTES = 200 * 1024 * 1024
WARM_UP_EMBEDDINGS = {
    "config": {"max_steps": 1, "max_time": 60},
    "tasks": [{"id": "i", "operator": "end", "outputs": [{"type": "insert", "key": "f", "value": "warm up"}]}],
    "steps": [{"source": "i", "target": "_end"}],
    "return_value": {"input": {"type": "string", "key": "ok"}},
}
CRASH_EVENTS = {"task crashed", "loop crashed, restarting", "loop failed", "p2p host crashed"}


@pytest.fixture
def loopback() -> Iterator[LocalServer]:
    """A server every SSRF case aims at (it must see no request), and the compression bombs."""
    zeros = b"\0" * (64 * 1024 * 1024)
    server = LocalServer({
        "/ssrf": Route(body=b"internal secret"),
        "/gzip-bomb": Route(body=gzip.compress(zeros, 9), headers={"content-encoding": "gzip"}),
        "/double-gzip-bomb": Route(body=gzip.compress(gzip.compress(zeros, 9), 9), headers={"content-encoding": "gzip, gzip"}),
    })  # fmt: skip
    yield server
    server.close()


async def _case(run: LiveRun, case: HostileWorkflow, failures: list[str], rss: list[int]) -> None:
    """One hostile task, then the checks: its error, a valid task answered, heartbeats on time."""
    started = time.monotonic()
    outcome = await run.run_task(case.workflow)
    if outcome.error is None or case.expect not in outcome.error:
        failures.append(f"{case.name}: expected an error containing {case.expect!r}, got {outcome}")
    valid = await run.run_valid_task()
    if valid.error is not None or not (valid.text or "").strip():
        failures.append(f"{case.name}: the valid task after it failed: {valid}")
    gap = run.heartbeat_gap_since(started)
    if gap > 2 * run.heartbeat_interval:
        failures.append(f"{case.name}: {gap:.2f} s between heartbeats (interval {run.heartbeat_interval} s)")
    rss.append(rss_bytes())
    print(f"{case.name}: {time.monotonic() - started:.1f} s, error {outcome.error!r:.90}, RSS {rss[-1] >> 20} MiB")


def _engine_cases(server: LocalServer) -> list[HostileWorkflow]:
    ssrf = [
        HostileWorkflow(f"ssrf_{host}", http_tool_workflow(f"http://{host}:{server.port}/ssrf"), "tool request")
        for host in SSRF_HOSTS
    ]
    return [
        *LOOPS,
        HostileWorkflow("generation_loop", generation_loop(max_time=3, max_tokens=64), "max_time exceeded"),
        # max_tokens past any context: refused before it runs, the same on every node of this context size.
        HostileWorkflow(
            "generation_max_tokens_enormous", generation_loop(max_time=3), "does not fit the model's context"
        ),
        *MEMORY_BOMBS,
        HostileWorkflow("insert_bomb", insert_bomb(max_time=10), "exceeded"),
        *OVERSIZE,
        *GRAMMAR_BOMBS,
        # Valid as a workflow, but no grammar exists for it: deterministic, so `Invalid prompt: `.
        HostileWorkflow(
            "schema_unsupported_type",
            schema_task({"type": "teleport"}),
            "Invalid prompt: invalid workflow: tasks[0].schema: unsupported schema",
        ),
        HostileWorkflow(
            "many_tools_call_schema", many_tools_bomb(), "Invalid prompt: task 'g' failed: the tools together"
        ),
        *ssrf,
    ]


async def test_default_node_survives_hostile_workflows(tmp_path: Path, loopback: LocalServer) -> None:
    settings = node_settings(tmp_path / "node", n_ctx=512)
    assert settings.publishers == [] and settings.tool_allow == []  # defaults: anyone may publish
    failures: list[str] = []
    cases = _engine_cases(loopback)
    with capture_logs() as logs:
        async with running_node(settings) as node, live_publisher(node) as run:
            first = await run.run_valid_task()
            assert first.error is None, first
            warm = await run.run_task(WARM_UP_EMBEDDINGS)  # the embedding context is allocated once, on first use
            assert warm.error is None, warm
            rss = [rss_bytes()]
            for case in cases:
                await _case(run, case, failures, rss)
            await node.running.parts.monitor.sample()
            health = node.running.parts.monitor.health()
    assert not failures, "\n".join(failures)
    assert loopback.seen == [], "an SSRF request reached the loopback server"
    assert [entry for entry in logs if entry["event"] in CRASH_EVENTS] == []
    assert health.ok, health.reason
    assert max(rss) - rss[0] < MAX_RSS_GROWTH_BYTES, [r >> 20 for r in rss]
    # No error text carries the tool URL (error bodies are not encrypted).
    assert not any(f":{loopback.port}/ssrf" in (entry.get("error") or "") for entry in logs)


async def test_compressed_tool_responses_are_capped_as_received(tmp_path: Path, loopback: LocalServer) -> None:
    settings = node_settings(tmp_path / "node", n_ctx=512, tool_allow=["127.0.0.1"])
    limit = settings.tool_max_bytes
    failures: list[str] = []
    cases = [
        HostileWorkflow(name, http_tool_workflow(loopback.url(f"/{name.replace('_', '-')}")),
                        f"larger than {limit} bytes once decompressed")
        for name in ("gzip_bomb", "double_gzip_bomb")
    ]  # fmt: skip
    async with running_node(settings) as node, live_publisher(node) as run:
        rss = [rss_bytes()]
        for case in cases:
            await _case(run, case, failures, rss)
    assert not failures, "\n".join(failures)
    assert [s.path for s in loopback.seen] == ["/gzip-bomb", "/double-gzip-bomb"]
    assert max(rss) - rss[0] < MAX_RSS_GROWTH_BYTES, [r >> 20 for r in rss]


async def test_loops_that_run_until_max_time_keep_the_node_responsive(tmp_path: Path) -> None:
    """With the step cap loosened by the operator, loops that never await run for their whole max_time."""
    settings = node_settings(tmp_path / "node", n_ctx=512, max_steps_cap=10**12)
    failures: list[str] = []
    cases = [
        HostileWorkflow("end_loop_8s", end_loop(max_time=8), "max_time exceeded"),
        HostileWorkflow("memory_only_loop_8s", memory_only_loop(max_time=8), "max_time exceeded"),
    ]
    async with running_node(settings) as node, live_publisher(node) as run:
        rss = [rss_bytes()]
        for case in cases:
            await _case(run, case, failures, rss)
            # Heartbeats kept coming while the loop spun: at least 8 s / interval of them.
            if len(run.heartbeats) < 8 / run.heartbeat_interval - 1:
                failures.append(f"{case.name}: only {len(run.heartbeats)} heartbeats")
    assert not failures, "\n".join(failures)
    assert max(rss) - rss[0] < MAX_RSS_GROWTH_BYTES, [r >> 20 for r in rss]
