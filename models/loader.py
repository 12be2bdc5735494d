"""The one place a registry entry becomes a served model: a local GGUF or a remote engine.

`open_model` dispatches on the entry's backend; `measure_speed` runs (or reads
from the cache) the startup benchmark of either kind.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from models.batching import BatchedLlamaModel
from models.benchmark import BenchmarkCache, BenchResult, SpeedStore
from models.options import RuntimeOptions
from models.registry import ModelSpec
from models.requests import ModelError
from models.store import ModelStore

if TYPE_CHECKING:  # a remote model's client (httpx) is imported only when a model is remote
    from typing import TypeAlias

    from models.remote.openai import RemoteModel

    ServedModel: TypeAlias = BatchedLlamaModel | RemoteModel


async def open_model(
    name: str, spec: ModelSpec, store: ModelStore, options: RuntimeOptions, parallel: int | None = None
) -> ServedModel:
    """Load `spec` as `name`: a batched llama.cpp model from its file, or a client of its remote engine.

    Raises ModelError (ModelLoadError ...) naming the model when it cannot serve.
    """
    if spec.is_remote:
        from models.remote.openai import RemoteModel

        return await RemoteModel.open(spec, default_n_ctx=options.n_ctx)
    path = store.locate(spec)
    if path is None:
        if spec.path is not None:  # nothing to pull: the operator named the file
            raise ModelError(f"model {name}: its file {spec.path} does not exist")
        raise ModelError(f"model {name} is not downloaded; run: compute-node models pull {name}")
    return await BatchedLlamaModel.load(name, path, options, parallel=parallel)


async def measure_speed(
    model: ServedModel, store: SpeedStore | Path, fresh: bool = False, at_least: float | None = None
) -> BenchResult:
    """The model's measured speed: cached, or benchmarked now (against the engine for a remote model).

    `store`: where results are kept (a path: that JSON file); `fresh`: measure even when the cache has a
    result, and store the new one; `at_least`: a cached generation speed under it is measured again.
    """
    if isinstance(model, BatchedLlamaModel):
        return await BenchmarkCache(store).measure(model, fresh=fresh, at_least=at_least)
    from models.remote.benchmark import RemoteBenchmarkCache

    return await RemoteBenchmarkCache(store).measure(model, fresh=fresh, at_least=at_least)
