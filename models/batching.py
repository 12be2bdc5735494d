"""A loaded model that serves many requests at once by continuous batching.

`BatchedLlamaModel` is the node's runtime for a local GGUF model: load /
generate / embed / tokenize / close. Behind it a `DecodeLoop` thread owns
one llama.cpp context with `parallel` sequence slots and decodes every running
request in one batch per step; see models/decode_loop.py.

  - `generate` returns a `BatchedGeneration` (a Generation subclass) that also
    says how many prompt tokens came from a slot's cached prefix.
  - `n_ctx` is the context of ONE slot (RuntimeOptions.n_ctx); the llama.cpp
    context holds `parallel` times that.
  - A seeded request evaluates its whole prompt (no prefix reuse), so its
    output does not depend on what ran before it.

Cancellation: cancelling the task awaiting `generate` sets the request's
cancelled flag; the decode loop drops it at its next step (one decode, tens of
ms) and the slot takes the next request. A prompt chunk being decoded is not
interrupted.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import llama_cpp
import structlog

from models.chat_prompt import ChatTemplate
from models.decode_loop import DecodeLoop
from models.embedder import Embedder
from models.gguf_file import check_model_file
from models.grammar import grammar_for
from models.llama_log import install_llama_log_router
from models.options import RuntimeOptions
from models.progress import ProgressSnapshot, request_owner
from models.requests import (
    ChatMessage,
    ContextOverflowError,
    EmbeddingRequest,
    Generation,
    GenerationRequest,
    ModelClosedError,
    ModelError,
    ModelLoadError,
    ScoreRequest,
    TextSink,
    TokenOutOfVocabularyError,
    TokenScores,
)
from models.sampling import SamplingSettings
from models.slots import BatchedGeneration, Outcome, SlotRequest
from models.vocab import ModelVocab

if TYPE_CHECKING:  # llguidance is loaded with the first constrained request, not with the model
    import llguidance

    from models.grammar.matcher import Constraint
from models.tracing import generation_traces

log = structlog.get_logger(__name__)

DEFAULT_PARALLEL_CPU = 4
DEFAULT_PARALLEL_GPU = 8


class BatchedLlamaModel:
    """One GGUF model serving up to `parallel` generations at once; satisfies `workflows.backend.ModelBackend`."""

    def __init__(
        self,
        name: str,
        path: Path,
        options: RuntimeOptions,
        decode_loop: DecodeLoop,
        vocab: ModelVocab,
        n_ctx_seq: int,
    ) -> None:
        self.name = name
        self.path = path
        self.options = options
        self._decode_loop = decode_loop
        self._vocab = vocab
        self._vocab_lock = threading.Lock()
        self._template = ChatTemplate(vocab)
        self._n_ctx = n_ctx_seq
        self._eog_ids: tuple[int, ...] | None = None
        self._tokenizer: llguidance.LLTokenizer | None = None  # built on the first constrained request
        self._tokenizer_lock = threading.Lock()
        self._embedder = Embedder(name, path, options)
        self._closed = False

    # ----------------------------------------------------------------- loading
    @classmethod
    async def load(
        cls, name: str, path: Path, options: RuntimeOptions | None = None, parallel: int | None = None
    ) -> BatchedLlamaModel:
        """Load `path` with `parallel` slots (default 4 on CPU, 8 with GPU offload).

        Raises ModelLoadError naming the file when it is missing, not a GGUF,
        corrupt, or too large for the memory available.
        """
        options = options or RuntimeOptions()
        path = Path(path)
        if parallel is None:
            parallel = DEFAULT_PARALLEL_GPU if options.gpu_layers() != 0 else DEFAULT_PARALLEL_CPU
        if not 1 <= parallel <= options.n_batch:
            # Every running sequence feeds one token per step into one batch of n_batch tokens.
            raise ModelLoadError(f"parallel must be between 1 and n_batch ({options.n_batch}), got {parallel}")
        install_llama_log_router()
        check_model_file(path, in_host_memory=options.gpu_layers() == 0)
        decode_loop = DecodeLoop(name, path, options, parallel)
        decode_loop.start()
        try:
            n_ctx_seq = await asyncio.wrap_future(decode_loop.loaded)
            vocab = ModelVocab(name, decode_loop.llama_model)  # the loaded model's vocabulary: no second open
        except BaseException:  # failed or cancelled: do not leave the thread and its context behind
            await asyncio.to_thread(decode_loop.close)
            raise
        model = cls(name, path, options, decode_loop, vocab, n_ctx_seq)
        await asyncio.to_thread(model._end_of_generation_ids)  # ~50k vocab lookups, off the loop
        log.info(
            "model loaded",
            model=name,
            path=str(path),
            parallel=parallel,
            n_ctx_per_slot=n_ctx_seq,
            n_threads=options.threads(),
            n_gpu_layers=options.gpu_layers(),
            chat_template=model._template.source,
        )
        return model

    @property
    def n_ctx(self) -> int:
        """The context window of one request (one slot), in tokens."""
        return self._n_ctx

    @property
    def parallel(self) -> int:
        """How many requests run at once."""
        return self._decode_loop.parallel

    @property
    def metadata(self) -> dict[str, str]:
        """The GGUF header's metadata (architecture, shapes), as read when the model was loaded."""
        metadata: dict[str, str] = self._vocab.metadata
        return metadata

    @property
    def slots_free(self) -> int:
        """Slots not running a request right now."""
        return self._decode_loop.slots_free

    @property
    def queued(self) -> int:
        """Requests waiting for a free slot."""
        return self._decode_loop.queued

    def progress(self) -> ProgressSnapshot | None:
        """The decode loop's progress now: what a watchdog needs to see a native call that never returns."""
        return self._decode_loop.progress()

    # -------------------------------------------------------------- tokenizing
    def tokenize(self, text: str) -> list[int]:
        """The tokens of `text` (no BOS, special tokens as plain text). Safe from any thread."""
        with self._vocab_lock:
            return self._vocab.tokenize(text.encode("utf-8", "replace"), add_bos=False, special=False)

    def _prompt_tokens(self, messages: list[ChatMessage]) -> tuple[list[int], list[str]]:
        prompt = self._template.render(messages)
        # A lone surrogate (a JSON escape decoded by a workflow's memory) is no UTF-8: it reads as "?",
        # as the execution process sends such text (node/execution/process.py `sendable_text`).
        data = prompt.text.encode("utf-8", "replace")
        with self._vocab_lock:
            tokens = self._vocab.tokenize(data, add_bos=not prompt.has_bos, special=True)
        return tokens, prompt.stop

    def _end_of_generation_ids(self) -> tuple[int, ...]:
        if self._eog_ids is None:
            with self._vocab_lock:
                vocab_p = self._vocab.vocab
                self._eog_ids = tuple(
                    t for t in range(self._vocab.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab_p, t)
                )
        return self._eog_ids

    # -------------------------------------------------------------- generating
    async def generate(self, request: GenerationRequest, on_text: TextSink | None = None) -> Generation:
        """Run one chat completion alongside the others. Cancelling the awaiting task stops it.

        `on_text` (called on the caller's event loop) gets the text as it settles, in
        pieces that concatenate to the generation's text, all before it returns
        (stop strings never appear; see models/text_deltas.py).
        """
        if self._closed:
            raise ModelClosedError(f"model {self.name} is closed")
        started = time.monotonic()
        tokens, template_stop = await asyncio.to_thread(self._prompt_tokens, request.messages)
        if len(tokens) + request.max_tokens > self.n_ctx:  # refused whole, never cut short or failed halfway
            raise ContextOverflowError(
                f"the prompt's {len(tokens)} tokens plus max_tokens {request.max_tokens} need "
                f"{len(tokens) + request.max_tokens} tokens, more than the {self.n_ctx}-token context "
                f"of one slot of model {self.name}"
            )
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Generation] = loop.create_future()
        traces = generation_traces.get()

        def deliver(outcome: Outcome) -> None:  # runs on the decode loop's thread
            try:
                loop.call_soon_threadsafe(_settle, future, outcome)
            except RuntimeError:  # the caller's loop is closed; nobody waits any more
                pass

        def forward_text(delta: str) -> None:  # runs on the decode loop's thread, before `deliver`
            assert on_text is not None
            try:
                loop.call_soon_threadsafe(on_text, delta)
            except RuntimeError:
                pass

        slot_request = SlotRequest(
            tokens=tokens,
            sampling=await self._sampling(request),
            stops=list(request.stop) + ([] if request.ignore_eos else template_stop),
            max_tokens=request.max_tokens,
            reuse_prefix=request.seed is None,
            deadline=None if request.deadline_seconds is None else started + request.deadline_seconds,
            deliver=deliver,
            owner=request_owner.get(),
            trace=traces is not None,
            on_text=None if on_text is None else forward_text,
        )
        self._decode_loop.submit(slot_request)
        try:
            generation = await future
            if traces is not None and isinstance(generation, BatchedGeneration) and generation.trace is not None:
                traces.append(generation.trace)
            return generation
        except asyncio.CancelledError:
            slot_request.cancelled.set()
            self._decode_loop.wake()
            raise

    async def score(self, request: ScoreRequest) -> TokenScores:
        """Teacher forcing: each of `request.tokens` scored as the continuation of `request.prompt_tokens`.

        One prompt-evaluation pass in a slot beside the running generations (models/decode_loop.py),
        never a cached prefix; cancelling the awaiting task stops it at the next step.
        """
        if self._closed:
            raise ModelClosedError(f"model {self.name} is closed")
        started = time.monotonic()
        sequence = request.prompt_tokens + request.tokens
        if len(sequence) > self.n_ctx:
            raise ContextOverflowError(
                f"{len(sequence)} tokens to score do not fit the {self.n_ctx}-token context "
                f"of one slot of model {self.name}"
            )
        n_vocab = self._vocab.n_vocab()
        if any(not 0 <= t < n_vocab for t in sequence):
            raise TokenOutOfVocabularyError(f"a token id to score is outside the vocabulary of model {self.name}")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()

        def deliver(outcome: Outcome) -> None:  # runs on the decode loop's thread
            try:
                loop.call_soon_threadsafe(_settle, future, outcome)
            except RuntimeError:
                pass

        slot_request = SlotRequest(
            tokens=sequence,
            sampling=SamplingSettings(temperature=0.0, seed=None, constraint=None),
            stops=[],
            max_tokens=1,
            reuse_prefix=False,
            deadline=None if request.deadline_seconds is None else started + request.deadline_seconds,
            deliver=deliver,
            owner=request_owner.get(),
            score_from=len(request.prompt_tokens) - 1,
        )
        self._decode_loop.submit(slot_request)
        try:
            outcome = await future
        except asyncio.CancelledError:
            slot_request.cancelled.set()
            self._decode_loop.wake()
            raise
        if not isinstance(outcome, TokenScores):
            raise ModelError(f"scoring on model {self.name} returned no scores")
        with self._vocab_lock:
            text = self._vocab.detokenize(request.tokens).decode("utf-8", errors="replace")
            prompt_text = self._vocab.detokenize(request.prompt_tokens).decode("utf-8", errors="replace")
        return outcome.model_copy(update={"text": text, "prompt_text": prompt_text})

    async def _sampling(self, request: GenerationRequest) -> SamplingSettings:
        """The request's sampling; a constraint is compiled in a worker thread (never on the decode thread).

        GrammarError names a problem in the constraint.
        """
        constrained = request.json_schema is not None or request.regex is not None
        return SamplingSettings(
            temperature=request.temperature,
            seed=request.seed,
            constraint=await asyncio.to_thread(self._constraint, request) if constrained else None,
            banned_tokens=self._end_of_generation_ids() if request.ignore_eos else (),
        )

    def _constraint(self, request: GenerationRequest) -> Constraint | None:
        if request.json_schema is None and request.regex is None:
            return None
        if request.ignore_eos:
            raise ModelError("ignore_eos cannot be combined with json_schema or regex")
        grammar = grammar_for(request.json_schema, request.regex)
        assert grammar is not None
        from models.grammar.matcher import Constraint

        return Constraint(self.constraint_tokenizer(), grammar)

    def constraint_tokenizer(self) -> llguidance.LLTokenizer:
        """llguidance's view of this model's vocabulary, built on the first constrained request.

        Every token's bytes (~0.3 s, ~20 MiB on a 49k vocabulary) are read under a lock of its own,
        not the vocab lock, so the other tasks' tokenizing goes on meanwhile (both only read the
        vocabulary); a model that never gets a constrained request never holds it.
        """
        from models.grammar.matcher import vocab_tokenizer

        end_tokens = self._end_of_generation_ids()
        with self._tokenizer_lock:
            if self._tokenizer is None:  # its vocabulary lives as long as the model
                if self._closed:
                    raise ModelClosedError(f"model {self.name} is closed")
                self._tokenizer = vocab_tokenizer(self._vocab.vocab, end_tokens)
            return self._tokenizer

    async def embed(self, request: EmbeddingRequest) -> list[list[float]]:
        """Mean-pooled, L2-normalised sentence embeddings, one per text."""
        if self._closed:
            raise ModelClosedError(f"model {self.name} is closed")
        return await self._embedder.embed(request.texts)

    async def close(self) -> None:
        """Fail queued and running requests, free the llama.cpp objects, end the threads."""
        if self._closed:
            return
        self._closed = True
        with self._tokenizer_lock, self._vocab_lock:  # nothing reads the vocabulary once the loop frees it
            self._vocab.close()
        await asyncio.to_thread(self._decode_loop.close)
        await self._embedder.close()
        log.info("model closed", model=self.name)


def _settle(future: asyncio.Future[Any], outcome: Outcome) -> None:
    if future.done():  # the awaiting task was cancelled
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
