"""Remote engines' health in the daemon: a model whose engine is down leaves the heartbeat until it is back."""

from __future__ import annotations

from node.daemon.remote_health import RemoteHealth
from node.ops.metrics import NodeMetrics
from tests.support.remote_engines import FaultEngine, open_remote


async def test_a_down_engine_leaves_the_heartbeat_until_it_is_back() -> None:
    async with FaultEngine() as engine:
        model = await open_remote(engine.base_url)
        metrics = NodeMetrics()
        health = RemoteHealth({"remote:model": model}, metrics, {}, interval=60, bench_file=None)
        try:
            names = ["smollm2:135m", "remote:model"]
            assert health.advertised(names) == names
            engine.models_up = False
            await health.check_all()
            assert health.advertised(names) == ["smollm2:135m"]
            text = metrics.render()[0].decode()
            assert 'compute_node_remote_engine_up{model="remote:model"} 0.0' in text
            assert 'compute_node_remote_engine_down_total{model="remote:model"} 1.0' in text
            engine.models_up = True
            await health.check_all()
            assert health.advertised(names) == names
            assert 'compute_node_remote_engine_up{model="remote:model"} 1.0' in metrics.render()[0].decode()
        finally:
            await model.close()
