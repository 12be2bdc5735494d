"""Building one configured model inside its execution process: registry -> backend -> benchmark.

`create_model` is the ONE place a registry entry becomes the object that serves it:
`models.loader.open_model` dispatches on the entry's backend (a local GGUF on the
batched llama.cpp runtime, or a remote OpenAI-compatible engine). A new kind of
backend is one more branch there; it must satisfy `workflows.backend.ModelBackend`
plus `parallel`, `progress()` and `close()`.

A model that cannot be found or loaded, or that is slower than `min_tps`, raises
ModelError naming the problem; the daemon then starts without it.

The startup benchmark runs before `ready` when its result is cached (it is read), when
`min_tps` is set (a model too slow must not serve first), with `idle_only` (the node
pauses while other programs load the machine), or when the node serves more than one
model (their processes start one after the other, so their measurements do not
overlap). Otherwise a local model's first start is measured after `ready`, in idle time
(node/execution/idle_benchmark.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import structlog

from config.settings import Settings
from models.batching import BatchedLlamaModel
from models.benchmark import BenchmarkCache, SpeedStore
from models.cpu import CpuInfo, extra_buffers_enabled
from models.embedder import Embedder
from models.loader import measure_speed, open_model
from models.options import RuntimeOptions
from models.progress import ProgressSnapshot
from models.registry import Registry
from models.requests import (
    EmbeddingRequest,
    Generation,
    GenerationRequest,
    ModelError,
    ScoreRequest,
    TextSink,
    TokenScores,
)
from models.store import ModelStore

if TYPE_CHECKING:  # a remote engine's client (httpx) is imported only where a model is remote
    from models.remote.openai import RemoteModel

log = structlog.get_logger(__name__)


class ServedModel(Protocol):
    """What an execution process needs from a model: the engine's ModelBackend plus its capacity."""

    name: str

    @property
    def parallel(self) -> int:
        """Requests it runs at once."""
        ...

    def progress(self) -> ProgressSnapshot | None:
        """The local runtime's decode progress (None for a backend without native calls here)."""
        ...

    async def generate(self, request: GenerationRequest, on_text: TextSink | None = None) -> Generation:
        """Generate text for the request, passing each piece to `on_text`."""
        ...

    async def score(self, request: ScoreRequest) -> TokenScores:
        """Score the request's tokens."""
        ...

    async def embed(self, request: EmbeddingRequest) -> list[list[float]]:
        """One embedding for each text."""
        ...

    async def close(self) -> None:
        """Free the model."""
        ...


@dataclass
class PreparedModel:
    """A loaded model with its measured speed (None when the startup benchmark is off)."""

    model: ServedModel
    generation_tps: float | None = None
    prompt_tps: float | None = None
    benchmark_later: bool = False  # no cached speed: measured after `ready`, in idle time
    speed_key: str | None = None  # then: the speed cache's key it is measured for

    @property
    def gguf_metadata(self) -> Mapping[str, str] | None:
        """The loaded GGUF's header metadata, read once at load (None for a remote engine)."""
        return self.model.metadata if isinstance(self.model, BatchedLlamaModel) else None


def runtime_options(settings: Settings) -> RuntimeOptions:
    """The llama.cpp runtime options of the settings."""
    return RuntimeOptions(
        n_ctx=settings.n_ctx,
        n_threads=settings.n_threads,
        n_gpu_layers=settings.n_gpu_layers,
        flash_attn=settings.flash_attn,
        kv_cache_type=settings.kv_cache_type,
        extra_buffers=extra_buffers_enabled(settings.extra_buffers, CpuInfo.read()),
    )


def model_store(settings: Settings) -> tuple[Registry, ModelStore]:
    """The model registry (built-in plus the settings' overrides) and the store of model files."""
    return Registry.builtin().with_overrides(settings.registry), ModelStore(settings.models_dir)


async def create_model(name: str, settings: Settings) -> BatchedLlamaModel | RemoteModel:
    """The factory: the registry entry `name` as a loaded model (a local GGUF or a remote engine's client).

    Raises ModelError saying why not.
    """
    registry, store = model_store(settings)
    return await open_model(name, registry.get(name), store, runtime_options(settings), parallel=settings.parallel)


async def prepare_model(name: str, settings: Settings, speeds: SpeedStore) -> PreparedModel:
    """Create `name` and run the startup benchmark (cached in `speeds`); ModelError if it is unusable here."""
    model = await create_model(name, settings)
    if not settings.startup_benchmark:
        return PreparedModel(model)
    if measured_after_ready(settings) and isinstance(model, BatchedLlamaModel):
        cache = BenchmarkCache(speeds)
        if cache.get(model) is None and not cache.measure_before_ready(model):
            return PreparedModel(model, benchmark_later=True, speed_key=cache.key(model))
    try:
        # Never refused on a cached figure alone: the machine may have been busier when it was measured.
        result = await measure_speed(model, speeds, at_least=settings.min_tps or None)
    except ModelError as exc:
        if isinstance(model, BatchedLlamaModel):
            await model.close()
            raise
        # A remote engine down at start: served, advertised and benchmarked once it is back
        # (the daemon's node/daemon/remote_health.py).
        log.warning("model not benchmarked", model=name, error=str(exc))
        return PreparedModel(model)
    except BaseException:
        await model.close()
        raise
    log.info(
        "model benchmarked",
        model=name,
        prompt_tps=round(result.prompt_tps, 1),
        generation_tps=round(result.generation_tps, 1),
    )
    if settings.min_tps and result.generation_tps < settings.min_tps:
        await model.close()
        raise ModelError(f"{result.generation_tps:.1f} tokens/s is below min_tps {settings.min_tps:g}")
    return PreparedModel(model, round(result.generation_tps, 1), round(result.prompt_tps, 1))


def measured_after_ready(settings: Settings) -> bool:
    """Whether an uncached startup benchmark runs after `ready`: no `min_tps` to judge the model by first,
    one model (no other model's process measuring or serving beside it), and not `idle_only` (its idle
    spells come when other programs load the machine: the figure would be theirs)."""
    return not settings.min_tps and not settings.idle_only and len(set(settings.models)) == 1


class EmbeddingOnlyModel:
    """The `embedding_model` when it is not the task's model: an embedding context, no generation."""

    def __init__(self, name: str, embedder: Embedder) -> None:
        self.name = name
        self._embedder = embedder

    async def generate(self, request: GenerationRequest, on_text: TextSink | None = None) -> Generation:
        """Refused: this model serves only embeddings."""
        raise ModelError(f"model {self.name} serves only embeddings here")

    async def score(self, request: ScoreRequest) -> TokenScores:
        """Refused: this model serves only embeddings."""
        raise ModelError(f"model {self.name} serves only embeddings here")

    async def embed(self, request: EmbeddingRequest) -> list[list[float]]:
        """One embedding for each text."""
        return await self._embedder.embed(request.texts)

    async def close(self) -> None:
        """Free the embedder."""
        await self._embedder.close()


async def create_embedder(name: str, settings: Settings) -> EmbeddingOnlyModel | RemoteModel:
    """An embedding-only backend for `name` (a local context opens on first use)."""
    registry, store = model_store(settings)
    spec = registry.get(name)
    if spec.is_remote:
        from models.remote.openai import RemoteModel

        return await RemoteModel.open(spec, default_n_ctx=settings.n_ctx)
    path = store.locate(spec)
    if path is None:
        raise ModelError(f"embedding model {name} is not downloaded; run: compute-node models pull {name}")
    return EmbeddingOnlyModel(name, Embedder(name, path, runtime_options(settings)))
