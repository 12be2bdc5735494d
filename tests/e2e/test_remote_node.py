"""Done-when of remote models: one node serves a local GGUF and a model of an engine
(`python -m llama_cpp.server` on 127.0.0.1) through the network, advertises both with
their own capacity and speed, and rides out the engine being stopped and restarted."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass

import pytest
import pytest_asyncio

from config.settings import DEFAULT_MODEL
from node.daemon.server import NodeServer
from node.publisher.client import Client, Task, TaskFailedError, TaskTimeoutError
from node.publisher.node_table import KnownNode
from tests.support.cluster import dialable, node_settings, running_node
from tests.support.remote_engines import ENGINE_MODEL, LlamaCppServer
from workflows import Simple

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

REMOTE = "remote:smol"
REMOTE_SLOTS = 3


@dataclass
class Setup:
    engine: LlamaCppServer
    node: NodeServer
    client: Client

    @property
    def address(self) -> str:
        return self.node.running.identity.address

    async def heartbeat(self, until: object = None, timeout: float = 30.0) -> KnownNode:
        """The node's latest heartbeat as the client saw it, once `until(known)` holds."""
        async with asyncio.timeout(timeout):
            while True:
                known = next((n for n in self.client.nodes.live() if n.address == self.address), None)
                if known is not None and (until is None or until(known)):  # type: ignore[operator]
                    return known
                await asyncio.sleep(0.2)

    async def run(self, model: str, prompt: str = "Say hello.") -> str:
        task = Task(workflow=Simple().workflow(prompt=prompt, max_tokens=16), models=[model], nodes=[self.address])
        result = await self.client.execute(task, timeout=60)
        assert result.model == model
        return Simple().parse_result(result)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaCppServer]:
    server = LlamaCppServer(tmp_path_factory.mktemp("engine") / "engine.log")
    server.start()
    yield server
    server.stop()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def setup(engine: LlamaCppServer, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Setup]:
    settings = node_settings(
        tmp_path_factory.mktemp("node"),
        models=[DEFAULT_MODEL, REMOTE],
        registry={
            REMOTE: {
                "backend": "openai",
                "base_url": engine.base_url,
                "model": ENGINE_MODEL,
                "max_concurrent": REMOTE_SLOTS,
                "structured_output": "json_object",
                "retry_seconds": 2.0,
            }
        },
        startup_benchmark=True,
        remote_health_interval=0.5,
        heartbeat_interval=1.0,
    )
    async with AsyncExitStack() as stack:
        node = await stack.enter_async_context(running_node(settings))
        client = Client(peers=[dialable(node)])
        await client.start()
        stack.push_async_callback(client.close)
        yield Setup(engine, node, client)


async def test_both_models_answer_through_the_network_and_are_advertised(setup: Setup) -> None:
    assert await setup.run(DEFAULT_MODEL)
    assert await setup.run(REMOTE)
    known = await setup.heartbeat(lambda n: {DEFAULT_MODEL, REMOTE} <= set(n.models))
    local_slots = setup.node.running.pool.parallel[DEFAULT_MODEL]
    assert known.max == local_slots + REMOTE_SLOTS + 2 * setup.node.settings.max_queue
    assert known.tps[DEFAULT_MODEL] > 0 and known.tps[REMOTE] > 0


async def test_the_node_rides_out_the_engine_stopping_and_restarting(setup: Setup) -> None:
    await setup.heartbeat(lambda n: REMOTE in n.models)
    # A task accepted while the engine was up, and the engine dies under it: a transient error.
    long = Task(
        workflow=Simple().workflow(prompt="Count from 1 to 500.", max_tokens=400),
        models=[REMOTE],
        nodes=[setup.address],
    )
    running = asyncio.create_task(setup.client.execute(long, timeout=60))
    async with asyncio.timeout(30):
        while setup.node.running.parts.admission.pending == 0:
            await asyncio.sleep(0.01)
    setup.engine.stop(crash=True)
    with pytest.raises(TaskFailedError) as info:
        await running
    # Transient: the reason names the engine's state, not "Invalid prompt", and a publisher retries it elsewhere.
    assert "is unavailable" in info.value.reason and "Invalid prompt" not in info.value.reason
    assert info.value.retryable
    known = await setup.heartbeat(lambda n: REMOTE not in n.models)
    assert DEFAULT_MODEL in known.models
    # While the engine is down the node accepts no task for its model: another node can take it.
    with pytest.raises(TaskTimeoutError):
        await setup.client.execute(Task(workflow=long.workflow, models=[REMOTE], nodes=[setup.address]), timeout=3)
    metrics = setup.node.metrics.render()[0].decode()
    assert 'compute_node_tasks_ignored_total{reason="model_unavailable"} 1.0' in metrics
    assert await setup.run(DEFAULT_MODEL)  # the local model is not affected

    setup.engine.start()
    await setup.heartbeat(lambda n: REMOTE in n.models)
    assert await setup.run(REMOTE)
    metrics = setup.node.metrics.render()[0].decode()
    downs = re.search(rf'compute_node_remote_engine_down_total{{model="{re.escape(REMOTE)}"}} ([0-9.]+)', metrics)
    assert downs is not None and float(downs.group(1)) >= 1  # a loaded machine may see a probe time out once more
    assert f'compute_node_remote_engine_up{{model="{REMOTE}"}} 1.0' in metrics
