"""Health of the remote engines this node fronts: checked periodically, reflected in heartbeats and metrics.

A remote model whose engine does not answer is left out of the heartbeat's
model list (publishers stop choosing this node for it) until a check succeeds
again; each change is logged by the model (models/remote/openai.py) and shows
in `compute_node_remote_engine_up`. A model that came up without a measured
speed (its engine was down at start) is benchmarked when it comes back.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog

from config.settings import Settings
from models.registry import Registry
from models.remote.benchmark import RemoteBenchmarkCache
from models.remote.openai import RemoteModel
from models.requests import ModelError
from node.ops.metrics import NodeMetrics

log = structlog.get_logger(__name__)


class RemoteHealth:
    """Checks every remote model's engine each `interval` seconds."""

    def __init__(
        self,
        models: dict[str, RemoteModel],
        metrics: NodeMetrics,
        tps: dict[str, float],
        interval: float,
        bench_file: Path | None,
    ) -> None:
        self._models = models
        self._metrics = metrics
        self._tps = tps  # the node's advertised speeds; filled in for a model benchmarked late
        self._interval = interval
        self._bench_file = bench_file
        self._last_up = {name: model.available for name, model in models.items()}
        for name, model in models.items():
            metrics.remote_engine_up.labels(model=name).set(1 if model.available else 0)

    @classmethod
    async def open(
        cls, settings: Settings, names: list[str], metrics: NodeMetrics, tps: dict[str, float]
    ) -> RemoteHealth:
        """Health checks of the remote models among `names`, from the daemon's own clients of their engines.

        The models themselves run in execution processes; these clients only ask
        the engines for their model list (and benchmark a model that was down at start).
        """
        registry = Registry.builtin().with_overrides(settings.registry)
        models = {name: await RemoteModel.open(registry.get(name), default_n_ctx=settings.n_ctx) for name in names}
        bench_file = settings.remote_benchmark_cache_path if settings.startup_benchmark else None
        return cls(models, metrics, tps, settings.remote_health_interval, bench_file)

    def advertised(self, names: list[str]) -> list[str]:
        """`names` without the remote models whose engine is down."""
        return [name for name in names if name not in self._models or self._models[name].available]

    def advertised_tps(self, tps: dict[str, float]) -> dict[str, float]:
        """`tps` without the remote models whose engine is down."""
        return {name: value for name, value in tps.items() if name in self.advertised([name])}

    async def close(self) -> None:
        """Close the engines' clients."""
        for model in self._models.values():
            await model.close()

    async def check_all(self) -> None:
        """One round of health checks (all engines at once)."""
        names = list(self._models)
        results = await asyncio.gather(*(self._models[name].check_health() for name in names))
        for name, up in zip(names, results, strict=True):
            self._metrics.remote_engine_up.labels(model=name).set(1 if up else 0)
            if self._last_up[name] and not up:
                self._metrics.remote_engine_down.labels(model=name).inc()
            self._last_up[name] = up
            if up and name not in self._tps and self._bench_file is not None:
                await self._benchmark(name)

    async def _benchmark(self, name: str) -> None:
        assert self._bench_file is not None
        try:
            result = await RemoteBenchmarkCache(self._bench_file).measure(self._models[name])
        except ModelError as exc:
            log.warning("model not benchmarked", model=name, error=str(exc))
            return
        self._tps[name] = round(result.generation_tps, 1)
        self._metrics.tokens_per_second.labels(model=name).set(self._tps[name])

    async def run(self) -> None:
        """Check every remote endpoint each interval, until cancelled."""
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.check_all()
            except Exception:  # noqa: BLE001 - a bug here must not stop the checks (or the node)
                log.exception("remote health check failed")


def remote_models(settings: Settings, names: list[str]) -> list[str]:
    """The models among `names` that a remote engine serves (registry backend other than a GGUF)."""
    registry = Registry.builtin().with_overrides(settings.registry)
    return [name for name in names if registry.get(name).is_remote]
