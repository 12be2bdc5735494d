"""The startup benchmark of a remote model: its engine's speed for one request, cached a day.

Engines answer without timings in general, so the generation speed comes from
two requests on the same prompt: one with a single output token (the prompt
cost) and one with `_GENERATED_TOKENS` (prompt + generation); the difference is
the generation time. llama-server reports its own `timings`, used when present.
The result is cached in the same file as local benchmarks, keyed by the engine's
URL and model, and measured again after `MAX_AGE` (an engine can change behind
an unchanged URL).
"""

from __future__ import annotations

import hashlib
import json
import time
from datetime import timedelta

import structlog

from models.benchmark import _GENERATED_TOKENS, _PROMPT, BenchResult, ResultCache
from models.remote.openai import RemoteModel
from models.requests import ChatMessage, GenerationRequest

log = structlog.get_logger(__name__)

MAX_AGE = timedelta(days=1)


async def benchmark_remote(model: RemoteModel) -> BenchResult:
    """Measure prompt and generation speed of one request on the engine (after a warm-up)."""
    messages = [ChatMessage(role="user", content=_PROMPT)]
    await model.generate(GenerationRequest(messages=messages, max_tokens=1, seed=0))
    started = time.monotonic()
    first = await model.generate(GenerationRequest(messages=messages, max_tokens=1, seed=0))
    prompt_wall = time.monotonic() - started
    started = time.monotonic()
    full = await model.generate(
        GenerationRequest(messages=messages, max_tokens=_GENERATED_TOKENS, ignore_eos=True, seed=0)
    )
    full_wall = time.monotonic() - started
    if full.prompt_seconds > 0:  # the engine timed itself (llama-server)
        prompt_seconds, generation_seconds = full.prompt_seconds, full.generation_seconds
    else:
        prompt_seconds, generation_seconds = prompt_wall, max(full_wall - prompt_wall, 1e-3)
    decoded = max(full.completion_tokens - 1, 1)
    result = BenchResult(
        prompt_tps=max(first.prompt_tokens, 1) / max(prompt_seconds, 1e-6),
        generation_tps=decoded / max(generation_seconds, 1e-6),
    )
    log.info(
        "model benchmarked",
        model=model.name,
        remote=True,
        completion_tokens=full.completion_tokens,
        prompt_tps=round(result.prompt_tps, 1),
        generation_tps=round(result.generation_tps, 1),
    )
    return result


class RemoteBenchmarkCache(ResultCache[RemoteModel]):
    """Remote results in the benchmark cache file, keyed by engine URL + model, valid for MAX_AGE."""

    max_age = MAX_AGE

    def key(self, model: RemoteModel) -> str:
        """The engine and the model it serves, hashed."""
        spec = model.spec
        parts = {"backend": spec.backend, "base_url": spec.base_url, "model": model.engine_model}
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]

    async def _benchmark(self, model: RemoteModel) -> BenchResult:
        return await benchmark_remote(model)
