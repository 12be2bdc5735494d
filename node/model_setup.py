"""Loading the configured models at start: registry -> local file -> batched llama.cpp runtime -> benchmark.

A model that cannot be found or loaded, or that is slower than `min_tps`, is
reported and skipped; a node left with no usable model stops with a clear error.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import structlog

from config.settings import Settings
from models.cpu import CpuInfo, extra_buffers_enabled
from models.loader import ServedModel, measure_speed, open_model
from models.registry import Registry
from models.remote.openai import RemoteModel
from models.requests import ModelError
from models.runtime import RuntimeOptions
from models.store import ModelStore

log = structlog.get_logger(__name__)


class NoUsableModelError(Exception):
    """None of the configured models could be loaded."""


@dataclass
class LoadedModels:
    """The models this node serves, in configured order, with their measured speed."""

    models: dict[str, ServedModel] = field(default_factory=dict)
    tps: dict[str, float] = field(default_factory=dict)  # generation tokens/s per model

    def concurrency(self, max_concurrent: int | None) -> dict[str, int]:
        """Tasks each model runs at once: the operator's cap, else its sequence slots.

        A remote model runs its own entry's `max_concurrent` (its engine's capacity, not this machine's).
        """
        return {
            name: model.parallel if isinstance(model, RemoteModel) else max_concurrent or model.parallel
            for name, model in self.models.items()
        }

    def remote(self) -> dict[str, RemoteModel]:
        """The models served by remote engines."""
        return {name: model for name, model in self.models.items() if isinstance(model, RemoteModel)}


def runtime_options(settings: Settings) -> RuntimeOptions:
    return RuntimeOptions(
        n_ctx=settings.n_ctx,
        n_threads=settings.n_threads,
        n_gpu_layers=settings.n_gpu_layers,
        flash_attn=settings.flash_attn,
        extra_buffers=extra_buffers_enabled(settings.extra_buffers, CpuInfo.read()),
    )


def model_store(settings: Settings) -> tuple[Registry, ModelStore]:
    return Registry.builtin().with_overrides(settings.registry), ModelStore(settings.models_dir)


async def load_models(settings: Settings) -> LoadedModels:
    """Load (and benchmark) every configured model that can serve, in the configured order."""
    registry, store = model_store(settings)
    options = runtime_options(settings)
    loaded = LoadedModels()
    problems: list[str] = []
    for name in dict.fromkeys(settings.models):
        try:
            model = await open_model(name, registry.get(name), store, options, parallel=settings.parallel)
        except ModelError as exc:
            log.error("model skipped", model=name, error=str(exc))
            problems.append(f"{name}: {exc}")
            continue
        if settings.startup_benchmark:
            try:
                result = await measure_speed(model, settings.data_dir / "benchmarks.json")
            except ModelError as exc:
                if not isinstance(model, RemoteModel):
                    raise
                # A remote engine down at start: served, advertised once it is back (node/remote_health.py).
                log.warning("model not benchmarked", model=name, error=str(exc))
                loaded.models[name] = model
                continue
            log.info("model benchmarked", model=name, prompt_tps=round(result.prompt_tps, 1),
                     generation_tps=round(result.generation_tps, 1))
            if settings.min_tps and result.generation_tps < settings.min_tps:
                reason = f"{result.generation_tps:.1f} tokens/s is below min_tps {settings.min_tps:g}"
                log.error("model skipped", model=name, error=reason)
                problems.append(f"{name}: {reason}")
                await model.close()
                continue
            loaded.tps[name] = round(result.generation_tps, 1)
        loaded.models[name] = model
        log.info("model loaded", model=name)
    if not loaded.models:
        raise NoUsableModelError("no usable model: " + "; ".join(problems))
    return loaded
