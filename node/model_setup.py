"""Loading the configured models at start: registry -> local file -> llama.cpp runtime.

A model that cannot be found or loaded is reported and skipped; a node left with
no usable model cannot serve and stops with a clear error.
"""

from __future__ import annotations

import structlog

from config.settings import Settings
from models.registry import Registry
from models.requests import ModelError
from models.runtime import LlamaModel, RuntimeOptions
from models.store import ModelStore

log = structlog.get_logger(__name__)


class NoUsableModelError(Exception):
    """None of the configured models could be loaded."""


def runtime_options(settings: Settings) -> RuntimeOptions:
    return RuntimeOptions(
        n_ctx=settings.n_ctx,
        n_threads=settings.n_threads,
        n_gpu_layers=settings.n_gpu_layers,
        flash_attn=settings.flash_attn,
    )


async def load_models(settings: Settings) -> dict[str, LlamaModel]:
    """Load every configured model that can be loaded, in the configured order."""
    registry = Registry.builtin().with_overrides(settings.registry)
    store = ModelStore(settings.models_dir)
    options = runtime_options(settings)
    loaded: dict[str, LlamaModel] = {}
    problems: list[str] = []
    for name in dict.fromkeys(settings.models):
        try:
            spec = registry.get(name)
            path = store.locate(spec)
            if path is None:
                raise ModelError(f"model {name} is not downloaded; run: compute-node models pull {name}")
            loaded[name] = await LlamaModel.load(name, path, options)
            log.info("model loaded", model=name, path=str(path))
        except ModelError as exc:
            log.error("model skipped", model=name, error=str(exc))
            problems.append(f"{name}: {exc}")
    if not loaded:
        raise NoUsableModelError("no usable model: " + "; ".join(problems))
    return loaded
