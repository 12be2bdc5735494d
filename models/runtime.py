"""A loaded llama.cpp model serving generation and embedding requests.

Threading: every llama.cpp call of one model runs in that model's single worker
thread, and every call on a `Llama` object also holds that object's lock (two
threads in one `Llama` abort the whole process). Nothing is bound to an event
loop: the running loop is looked up at call time.

Cancellation: cancelling the task awaiting `generate` sets the request's own
stop flag, which a `stopping_criteria` checks after every token, and the
`CancelledError` is re-raised at once; the worker stops within one token and
takes the next request. (Prompt evaluation itself is not interruptible.)
llama.cpp reports finish_reason "stop" for such a stop, so the flag, not the
finish reason, tells a cancelled or timed-out request from a finished one.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import llama_cpp
import numpy as np
import numpy.typing as npt
import structlog
from pydantic import BaseModel, ConfigDict, Field

from models.chat_prompt import ChatTemplate
from models.gguf_file import check_model_file
from models.grammar import check_gbnf
from models.llama_log import install_llama_log_router
from models.requests import (
    ChatMessage,
    ContextOverflowError,
    DeadlineExceededError,
    EmbeddingRequest,
    Generation,
    GenerationRequest,
    ModelError,
    ModelLoadError,
)
from models.sampling import Grammar

log = structlog.get_logger(__name__)
T = TypeVar("T")


class RuntimeOptions(BaseModel):
    """How llama.cpp runs a model."""

    model_config = ConfigDict(extra="forbid")

    n_ctx: int = Field(default=2048, ge=64)
    # None: the cores this process may run on.
    n_threads: int | None = Field(default=None, ge=1)
    # None: all layers on the GPU when llama.cpp was built with one, else 0.
    n_gpu_layers: int | None = None
    flash_attn: bool = False
    n_batch: int = Field(default=512, ge=1)
    # llama.cpp's extra buffer types (AMX, CPU weight repacking); see models/cpu.py.
    extra_buffers: bool = True

    def threads(self) -> int:
        """The thread count to use."""
        return self.n_threads or len(os.sched_getaffinity(0))

    def gpu_layers(self) -> int:
        """The number of layers to offload (-1: all)."""
        if self.n_gpu_layers is not None:
            return self.n_gpu_layers
        return -1 if llama_cpp.llama_supports_gpu_offload() else 0


class _Stop:
    """Why a running request should stop early: cancelled, or past its deadline."""

    def __init__(self, deadline_seconds: float | None) -> None:
        self.cancelled = threading.Event()
        self.deadline = None if deadline_seconds is None else time.monotonic() + deadline_seconds

    def deadline_passed(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def requested(self) -> bool:
        return self.cancelled.is_set() or self.deadline_passed()

    def criterion(self, _ids: npt.NDArray[np.intc], _logits: npt.NDArray[np.single]) -> bool:
        return self.requested()


class _Cancelled(Exception):
    """The request was cancelled; nobody awaits its result any more."""


class _EndTokenMask:
    """A logits processor that forbids end-of-generation tokens (for ignore_eos)."""

    def __init__(self, token_ids: list[int]) -> None:
        self._ids = np.array(token_ids, dtype=np.intc)

    def __call__(self, _ids: npt.NDArray[np.intc], scores: npt.NDArray[np.single]) -> npt.NDArray[np.single]:
        scores[self._ids] = -np.inf
        return scores


class LlamaModel:
    """One GGUF model loaded in llama.cpp; satisfies `workflows.backend.ModelBackend`."""

    def __init__(
        self,
        name: str,
        path: Path,
        options: RuntimeOptions,
        llama: llama_cpp.Llama,
        vocab: llama_cpp.Llama,
        executor: ThreadPoolExecutor,
    ) -> None:
        self.name = name
        self.path = path
        self.options = options
        self._llama = llama
        self._lock = threading.Lock()
        # Tokenizer-only copy, so count_tokens never waits behind a generation.
        self._vocab = vocab
        self._vocab_lock = threading.Lock()
        self._embedder: llama_cpp.Llama | None = None
        self._embed_lock = threading.Lock()
        self._executor = executor
        self._template = ChatTemplate(vocab)
        self._end_mask: _EndTokenMask | None = None
        self._running: set[_Stop] = set()
        self._closed = False

    # ----------------------------------------------------------------- loading
    @classmethod
    async def load(cls, name: str, path: Path, options: RuntimeOptions | None = None) -> LlamaModel:
        """Load `path` in the model's own worker thread.

        Raises ModelLoadError naming the file when it is missing, not a GGUF,
        corrupt, or too large for the memory available.
        """
        options = options or RuntimeOptions()
        path = Path(path)
        install_llama_log_router()
        check_model_file(path, in_host_memory=options.gpu_layers() == 0)
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"llama-{name}")
        loop = asyncio.get_running_loop()
        try:
            llama, vocab = await loop.run_in_executor(executor, _open, path, options)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        model = cls(name, path, options, llama, vocab, executor)
        log.info(
            "model_loaded",
            model=name,
            path=str(path),
            n_ctx=options.n_ctx,
            n_threads=options.threads(),
            n_gpu_layers=options.gpu_layers(),
            chat_template=model._template.source,
        )
        return model

    @property
    def n_ctx(self) -> int:
        """The context window in tokens."""
        return self.options.n_ctx

    # -------------------------------------------------------------- tokenizing
    def count_tokens(self, text: str) -> int:
        """Number of tokens in `text` (no BOS). Safe to call from any thread."""
        with self._vocab_lock:
            return len(self._vocab.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def count_chat_tokens(self, messages: list[ChatMessage]) -> int:
        """Number of prompt tokens these messages take with the chat template."""
        return len(self._prompt_tokens(messages)[0])

    def _prompt_tokens(self, messages: list[ChatMessage]) -> tuple[list[int], list[str], frozenset[int]]:
        prompt = self._template.render(messages)
        with self._vocab_lock:
            tokens = self._vocab.tokenize(prompt.text.encode("utf-8"), add_bos=not prompt.has_bos, special=True)
        return tokens, prompt.stop, prompt.end_token_ids

    # -------------------------------------------------------------- generating
    async def generate(self, request: GenerationRequest) -> Generation:
        """Run one chat completion. Cancelling the awaiting task stops it."""
        stop = _Stop(request.deadline_seconds)
        return await self._submit(stop, self._generate_sync, request, stop)

    def _generate_sync(self, request: GenerationRequest, stop: _Stop) -> Generation:
        if stop.cancelled.is_set():
            raise _Cancelled()
        self._raise_if_deadline_passed(stop)
        try:
            tokens, template_stop, end_ids = self._prompt_tokens(request.messages)
            if len(tokens) >= self.n_ctx:
                raise ContextOverflowError(
                    f"prompt of {len(tokens)} tokens does not fit the {self.n_ctx}-token context of model {self.name}"
                )
            kwargs = self._completion_kwargs(request, stop, template_stop, end_ids)
            with self._lock:
                ctx = self._llama.ctx
                llama_cpp.llama_perf_context_reset(ctx)
                if request.seed is not None:
                    # Reusing the cached prompt prefix re-evaluates the last prompt
                    # token alone, whose logits differ in the last bits from a
                    # full-batch evaluation; a seeded request must not depend on
                    # what ran before, so it evaluates its prompt from scratch.
                    self._llama.reset()  # type: ignore[no-untyped-call]
                result: Any = self._llama.create_completion(prompt=tokens, **kwargs)
                perf = llama_cpp.llama_perf_context(ctx)
        except ModelError:
            raise
        except Exception as exc:
            raise ModelError(f"generation on model {self.name} failed: {exc}") from exc
        if stop.cancelled.is_set():
            raise _Cancelled()
        self._raise_if_deadline_passed(stop)
        choice, usage = result["choices"][0], result["usage"]
        return Generation(
            text=choice["text"],
            finish_reason="length" if choice["finish_reason"] == "length" else "stop",
            prompt_tokens=usage["prompt_tokens"],
            completion_tokens=usage["completion_tokens"],
            prompt_seconds=perf.t_p_eval_ms / 1000.0,
            generation_seconds=perf.t_eval_ms / 1000.0,
        )

    def _raise_if_deadline_passed(self, stop: _Stop) -> None:
        if stop.deadline_passed():
            raise DeadlineExceededError(f"request on model {self.name} ran past its deadline")

    def _completion_kwargs(
        self, request: GenerationRequest, stop: _Stop, template_stop: list[str], end_ids: frozenset[int]
    ) -> dict[str, Any]:
        criteria: list[Callable[..., bool]] = [stop.criterion]
        processors = None
        stops = list(request.stop)
        grammar = _grammar(request)
        if request.ignore_eos:
            processors = llama_cpp.LogitsProcessorList([self._end_token_mask()])
        else:
            stops += template_stop
            criteria.append(lambda ids, _logits: int(ids[-1]) in end_ids)
        return {
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "seed": request.seed,
            "stop": stops,
            "stopping_criteria": llama_cpp.StoppingCriteriaList(criteria),
            "logits_processor": processors,
            "grammar": grammar,
            "repeat_penalty": 1.0,
        }

    def _end_token_mask(self) -> _EndTokenMask:
        if self._end_mask is None:
            with self._vocab_lock:
                vocab_p = self._vocab._model.vocab
                ids = [t for t in range(self._vocab.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab_p, t)]
            self._end_mask = _EndTokenMask(ids)
        return self._end_mask

    # --------------------------------------------------------------- embedding
    async def embed(self, request: EmbeddingRequest) -> list[list[float]]:
        """Mean-pooled, L2-normalised sentence embeddings, one per text."""
        stop = _Stop(None)
        return await self._submit(stop, self._embed_sync, request.texts)

    def _embed_sync(self, texts: list[str]) -> list[list[float]]:
        try:
            with self._embed_lock:
                if self._embedder is None:
                    self._embedder = _open_llama(
                        self.path,
                        self.options,
                        embedding=True,
                        pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
                    )
                vectors: Any = self._embedder.embed(texts, normalize=True, truncate=True)
        except ModelError:
            raise
        except Exception as exc:
            raise ModelError(f"embedding on model {self.name} failed: {exc}") from exc
        return [list(map(float, v)) for v in vectors]

    # ----------------------------------------------------------------- running
    async def _submit(self, stop: _Stop, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise ModelError(f"model {self.name} is closed")
        loop = asyncio.get_running_loop()
        self._running.add(stop)
        try:
            return await loop.run_in_executor(self._executor, fn, *args)
        except asyncio.CancelledError:
            stop.cancelled.set()
            raise
        except _Cancelled as exc:  # closed while running
            raise ModelError(f"model {self.name} was closed during the request") from exc
        finally:
            self._running.discard(stop)

    async def close(self) -> None:
        """Stop running requests, free the llama.cpp objects, end the worker thread."""
        if self._closed:
            return
        self._closed = True
        for stop in list(self._running):
            stop.cancelled.set()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._free_sync)
        self._executor.shutdown(wait=False)
        log.info("model_closed", model=self.name)

    def _free_sync(self) -> None:
        for lock, llama in (
            (self._lock, self._llama),
            (self._embed_lock, self._embedder),
            (self._vocab_lock, self._vocab),
        ):
            if llama is not None:
                with lock:
                    llama.close()


def _grammar(request: GenerationRequest) -> llama_cpp.llama_grammar.LlamaGrammar | None:
    """The request's constraint as a llama.cpp grammar, parsed in Python first (see models.grammar)."""
    grammar = Grammar.for_request(request)
    return (
        None
        if grammar is None
        else llama_cpp.llama_grammar.LlamaGrammar.from_string(check_gbnf(grammar.gbnf), verbose=False)
    )


# llama-cpp-python's Llama(verbose=False) points the process's stdout/stderr at
# /dev/null while it loads (dup2 on fds 1 and 2, then restores them). Two loads
# overlapping in two threads would restore each other's redirect and could leave
# the process muted for good, so constructions are serialised process-wide.
# (llama.cpp's own log lines are not lost: they go through the log router.)
_CONSTRUCT_LOCK = threading.Lock()


def construct_llama(path: Path, extra_buffers: bool = True, **params: Any) -> llama_cpp.Llama:
    with _CONSTRUCT_LOCK:
        if extra_buffers:
            return llama_cpp.Llama(model_path=str(path), verbose=False, **params)
        # Llama() takes no use_extra_bufts argument: hand it default model params with
        # the switch off, for this one construction (the lock keeps it to this one).
        defaults = llama_cpp.llama_cpp.llama_model_default_params

        def without_extra_buffers() -> llama_cpp.llama_model_params:
            model_params: llama_cpp.llama_model_params = defaults()
            model_params.use_extra_bufts = False
            return model_params

        llama_cpp.llama_cpp.llama_model_default_params = without_extra_buffers
        try:
            return llama_cpp.Llama(model_path=str(path), verbose=False, **params)
        finally:
            llama_cpp.llama_cpp.llama_model_default_params = defaults


def _open_llama(path: Path, options: RuntimeOptions, **extra: Any) -> llama_cpp.Llama:
    try:
        return construct_llama(
            path,
            n_ctx=options.n_ctx,
            n_batch=options.n_batch,
            n_threads=options.threads(),
            n_threads_batch=options.threads(),
            n_gpu_layers=options.gpu_layers(),
            flash_attn=options.flash_attn,
            extra_buffers=options.extra_buffers,
            **extra,
        )
    except Exception as exc:
        raise ModelLoadError(f"llama.cpp could not load model file {path}: {exc}") from exc


def _open(path: Path, options: RuntimeOptions) -> tuple[llama_cpp.Llama, llama_cpp.Llama]:
    llama = _open_llama(path, options)
    try:
        vocab = construct_llama(path, vocab_only=True, n_ctx=64)
    except Exception as exc:
        llama.close()
        raise ModelLoadError(f"llama.cpp could not read the vocabulary of {path}: {exc}") from exc
    return llama, vocab
