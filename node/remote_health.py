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

from models.loader import measure_speed
from models.remote.openai import RemoteModel
from models.requests import ModelError
from node.metrics import NodeMetrics

log = structlog.get_logger(__name__)


class RemoteHealth:
    """Checks every remote model's engine each `interval` seconds."""

    def __init__(
        self, models: dict[str, RemoteModel], metrics: NodeMetrics, tps: dict[str, float],
        interval: float, bench_file: Path | None,
    ) -> None:
        self._models = models
        self._metrics = metrics
        self._tps = tps  # the node's advertised speeds; filled in for a model benchmarked late
        self._interval = interval
        self._bench_file = bench_file
        self._last_up = {name: model.available for name, model in models.items()}
        for name, model in models.items():
            metrics.remote_engine_up.labels(model=name).set(1 if model.available else 0)

    def advertised(self, names: list[str]) -> list[str]:
        """`names` without the remote models whose engine is down."""
        return [name for name in names if name not in self._models or self._models[name].available]

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
            result = await measure_speed(self._models[name], self._bench_file)
        except ModelError as exc:
            log.warning("model not benchmarked", model=name, error=str(exc))
            return
        self._tps[name] = round(result.generation_tps, 1)
        self._metrics.tokens_per_second.labels(model=name).set(self._tps[name])

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.check_all()
            except Exception:  # noqa: BLE001 - a bug here must not stop the checks (or the node)
                log.exception("remote health check failed")
