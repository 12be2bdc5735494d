"""A model served by an OpenAI-compatible engine (vLLM, llama-server, llama_cpp.server, Ollama, hosted APIs).

`RemoteModel` satisfies `workflows.backend.ModelBackend` and has what the
execution process reads from `BatchedLlamaModel` (parallel, n_ctx, progress,
close), so the engine and the execution process use either. Requests are
non-streaming chat completions (`/chat/completions`) and `/embeddings`.

Structured output: a JSON schema goes out as `response_format`, in the form the
entry's `structured_output` names ("json_schema": OpenAI, vLLM, llama-server;
"json_object" with a `schema`: llama-cpp-python's server). A regex goes out as
vLLM's `guided_regex` when the entry sets `guided_regex = true`, and is refused
with an `Invalid prompt:` error otherwise.

Availability: `available` is False from a failed health check (or a request
that could not reach the engine) until a health check succeeds again; the node
leaves an unavailable model out of its heartbeats.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import structlog

from models.registry import ModelSpec
from models.remote.endpoint import Endpoint, EngineRequestError, EngineUnavailableError, resolve_api_key
from models.requests import (
    ContextOverflowError,
    DeadlineExceededError,
    EmbeddingRequest,
    Generation,
    GenerationRequest,
    ModelError,
    ScoreRequest,
    TextSink,
    TokenScores,
    UnsupportedRequestError,
)

log = structlog.get_logger(__name__)

DEFAULT_MAX_CONCURRENT = 8


class RemoteModel:
    """One registry entry served by an OpenAI-compatible engine; satisfies `workflows.backend.ModelBackend`."""

    def __init__(self, spec: ModelSpec, endpoint: Endpoint, n_ctx: int) -> None:
        self.name = spec.name
        self.spec = spec
        self.engine_model = spec.model or spec.name
        self._endpoint = endpoint
        self._n_ctx = n_ctx
        self._limit = spec.max_concurrent or DEFAULT_MAX_CONCURRENT
        self._slots = asyncio.Semaphore(self._limit)
        self._running = 0
        self._waiting = 0
        self.available = True
        self._closed = False

    @classmethod
    async def open(cls, spec: ModelSpec, default_n_ctx: int) -> RemoteModel:
        """A client for the engine of `spec`, checked once (a down engine leaves it unavailable, not failed).

        Raises ModelLoadError when the entry's API key cannot be found.
        """
        api_key = resolve_api_key(spec)
        limit = spec.max_concurrent or DEFAULT_MAX_CONCURRENT
        model = cls(spec, Endpoint(spec, api_key, max_connections=limit + 2), spec.n_ctx or default_n_ctx)
        up = await model.check_health()
        log.info(
            "remote model opened",
            model=spec.name,
            engine=model._endpoint.host,
            engine_model=model.engine_model,
            max_concurrent=limit,
            available=up,
            has_api_key=api_key is not None,
        )
        return model

    # ---------------------------------------------------------------- capacity
    @property
    def backend(self) -> str:
        """The model's backend, from its spec."""
        return self.spec.backend

    @property
    def n_ctx(self) -> int:
        """The context window of one request, as configured (the engine enforces its own)."""
        return self._n_ctx

    @property
    def parallel(self) -> int:
        """How many requests this node sends to the engine at once (`max_concurrent`)."""
        return self._limit

    @property
    def slots_free(self) -> int:
        """Requests that may start now within the concurrency limit."""
        return self._limit - self._running

    @property
    def queued(self) -> int:
        """Requests waiting for the concurrency limit."""
        return self._waiting

    def progress(self) -> None:
        """No native calls here: the engine's own process does the work (its time limits are HTTP's)."""
        return None

    # ------------------------------------------------------------------ health
    async def check_health(self) -> bool:
        """Ask the engine for its model list; update and return `available`."""
        try:
            listing = await self._endpoint.get_json("models")
        except (EngineUnavailableError, EngineRequestError) as exc:  # down, or an answer past the byte cap
            self._set_available(False, str(exc))
            return False
        ids = (
            {m.get("id") for m in listing.get("data", []) if isinstance(m, dict)}
            if isinstance(listing, dict)
            else set()
        )
        if ids and self.engine_model not in ids:
            log.warning(
                "remote engine does not list the model",
                model=self.name,
                engine=self._endpoint.host,
                engine_model=self.engine_model,
                listed=sorted(str(i) for i in ids)[:10],
            )
        self._set_available(True, "health check answered")
        return True

    def _set_available(self, up: bool, reason: str) -> None:
        if up != self.available:
            log.warning(
                "remote engine back" if up else "remote engine down",
                model=self.name,
                engine=self._endpoint.host,
                reason=reason,
            )
        self.available = up

    # -------------------------------------------------------------- requests
    async def generate(self, request: GenerationRequest, on_text: TextSink | None = None) -> Generation:
        """Run one chat completion on the engine. Cancelling the awaiting task closes the HTTP request.

        Not streamed: `on_text` is never called (the engine's answer arrives whole).
        """
        payload = self._chat_payload(request)
        started = time.monotonic()
        deadline = None if request.deadline_seconds is None else started + request.deadline_seconds
        try:
            async with asyncio.timeout_at(_loop_time(deadline)):
                answer = await self._call("chat/completions", payload, deadline)
        except TimeoutError:
            raise DeadlineExceededError(f"request on model {self.name} ran past its deadline") from None
        return _generation(answer, self.name, time.monotonic() - started)

    def _chat_payload(self, request: GenerationRequest) -> dict[str, Any]:
        if self._closed:
            raise ModelError(f"model {self.name} is closed")
        if request.max_tokens >= self._n_ctx:  # no prompt fits beside it: refused whole, as the local runtime does
            raise ContextOverflowError(
                f"max_tokens {request.max_tokens} leaves no room for the prompt in the {self._n_ctx}-token "
                f"context of model {self.name}"
            )
        payload: dict[str, Any] = {
            "model": self.engine_model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "stream": False,
        }
        if request.stop:
            payload["stop"] = list(request.stop)
        if request.seed is not None:
            payload["seed"] = request.seed
        if request.ignore_eos:
            payload["ignore_eos"] = True  # vLLM and llama.cpp extension; benchmarks only
        if request.regex is not None and request.json_schema is not None:
            raise UnsupportedRequestError("a request cannot carry both a regex and a JSON schema")
        if request.regex is not None:
            if not self.spec.guided_regex:
                raise UnsupportedRequestError(
                    f"schema form not supported by {self.backend} engine of {self.name} (regex)"
                )
            payload["guided_regex"] = request.regex
        if request.json_schema is not None:
            if self.spec.structured_output == "json_object":
                payload["response_format"] = {"type": "json_object", "schema": request.json_schema}
            else:
                payload["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {"name": "output", "schema": request.json_schema, "strict": False},
                }
        return payload

    async def score(self, request: ScoreRequest) -> TokenScores:
        """Not served: an OpenAI-compatible engine does not score given token ids (this node's limit, not the task's)."""
        raise ModelError(f"model {self.name} runs on a remote engine, which cannot score tokens")

    async def embed(self, request: EmbeddingRequest) -> list[list[float]]:
        """L2-normalised sentence embeddings from the engine's `/embeddings`, one per text.

        One request per text, sent together (the engine batches them): llama-cpp-python's
        server answers a multi-text request without pooling with mixed-up token vectors.
        An engine that answers per-token vectors is mean-pooled here, as the local runtime pools.
        """
        if self._closed:
            raise ModelError(f"model {self.name} is closed")
        return list(await asyncio.gather(*(self._embed_one(text) for text in request.texts)))

    async def _embed_one(self, text: str) -> list[float]:
        answer = await self._call("embeddings", {"model": self.engine_model, "input": [text]}, None)
        try:
            rows = answer["data"]
            if len(rows) != 1:
                raise ValueError("not one vector")
            return _normalised(_pooled(rows[0]["embedding"]))
        except (KeyError, TypeError, ValueError, AttributeError, IndexError):
            raise EngineRequestError(f"the engine serving {self.name} answered embeddings in an unknown form") from None

    async def _call(self, path: str, payload: dict[str, Any], deadline: float | None) -> dict[str, Any]:
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        self._running += 1
        try:
            answer = await self._endpoint.post(path, payload, deadline)
        except EngineUnavailableError:
            self._set_available(False, "requests failed")
            raise
        finally:
            self._running -= 1
            self._slots.release()
        self._set_available(True, "a request succeeded")
        return answer

    async def close(self) -> None:
        """Close the pooled connections."""
        if self._closed:
            return
        self._closed = True
        await self._endpoint.close()
        log.info("model closed", model=self.name)


def _loop_time(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    return asyncio.get_running_loop().time() + (deadline - time.monotonic())


def _generation(answer: dict[str, Any], name: str, seconds: float) -> Generation:
    try:
        choice = answer["choices"][0]
        text = choice["message"]["content"]
        usage = answer.get("usage") or {}
        finish = choice.get("finish_reason")
    except (KeyError, IndexError, TypeError):
        raise EngineRequestError(f"the engine serving {name} answered a chat completion in an unknown form") from None
    if not isinstance(text, str):
        raise EngineRequestError(f"the engine serving {name} answered no text (finish_reason {finish!r})")
    timings: dict[str, Any] = answer["timings"] if isinstance(answer.get("timings"), dict) else {}  # llama-server
    return Generation(
        text=text,
        finish_reason="length" if finish == "length" else "stop",
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        prompt_seconds=float(timings.get("prompt_ms", 0.0)) / 1000.0,
        generation_seconds=float(timings.get("predicted_ms", 0.0)) / 1000.0 or seconds,
    )


def _pooled(embedding: Any) -> list[float]:
    if embedding and isinstance(embedding[0], list):
        width = len(embedding[0])
        return [sum(float(token[i]) for token in embedding) / len(embedding) for i in range(width)]
    return [float(x) for x in embedding]


def _normalised(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector] if norm else vector
