"""The decode loop of the batched runtime: one llama.cpp context, N sequence slots, one thread.

Every llama.cpp call on the context happens on the loop's own thread:
loading, decoding, sampling, freeing. Other threads only `submit` requests and
set their `cancelled` event. Each step:
  1. seat queued requests in free slots (reusing a cached prompt prefix),
  2. drop requests that were cancelled or ran past their deadline,
  3. build ONE batch: a token for every generating sequence, then prompt chunks
     of prefilling sequences up to n_batch tokens,
  4. decode it, and sample every sequence that produced logits with its own
     sampler; finished sequences deliver their result and free their slot.

A scoring request (`SlotRequest.score_from`, teacher forcing for verification) is
prefilled like a prompt, but the positions from `score_from` on give logits, at most
`SCORE_ROWS` per step (the logits buffer is rows x vocabulary floats); each row scores
the token after it, nothing is sampled, and its outcome is `TokenScores`.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future
from pathlib import Path

import llama_cpp
import numpy as np
import structlog

from models.llama_log import take_first_error
from models.options import RuntimeOptions
from models.progress import DecodeProgress, ProgressSnapshot
from models.requests import DeadlineExceededError, ModelClosedError, ModelError, ModelLoadError, TokenScores
from models.sampling import SequenceSampler, StopText
from models.slots import (
    ActiveRequest,
    BatchedGeneration,
    Outcome,
    Slot,
    SlotRequest,
    choose_slot,
    common_prefix,
)
from models.text_deltas import TextDeltas
from models.token_pieces import TokenPieces
from models.tracing import GenerationTrace, score_row, token_logprob

log = structlog.get_logger(__name__)

SCORE_ROWS = 128  # logit rows one scoring request gets per decode step


class DecodeLoop:
    """Owns the llama.cpp model + context and runs the batched decode loop on its thread."""

    def __init__(self, name: str, path: Path, options: RuntimeOptions, parallel: int) -> None:
        self.name = name
        self.parallel = parallel
        self._path = path
        self._options = options
        self._queue: deque[SlotRequest] = deque()
        self._wake = threading.Condition()
        self._closed = False
        self._slots = [Slot(seq_id=i) for i in range(parallel)]
        self._busy = 0  # slots running a request; read from other threads
        self._progress = DecodeProgress()
        self.loaded: Future[int] = Future()  # the per-slot context size, once loaded
        self._thread = threading.Thread(target=self._run, name=f"llama-batch-{name}", daemon=True)

    # ------------------------------------------------------------- any thread
    def start(self) -> None:
        """Start the thread; `loaded` resolves when the model is ready (or failed)."""
        self._thread.start()

    def submit(self, request: SlotRequest) -> None:
        """Queue a request; its `deliver` is called once with the outcome."""
        with self._wake:
            if self._closed:
                raise ModelClosedError(f"model {self.name} is closed")
            self._queue.append(request)
            self._wake.notify()

    def wake(self) -> None:
        """Make the loop look at cancellations now."""
        with self._wake:
            self._wake.notify()

    def close(self) -> None:
        """Stop the loop (failing what is queued or running) and wait for the thread to free everything."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join()

    @property
    def llama_model(self) -> llama_cpp.llama_model_p:
        """The loaded llama.cpp model (once `loaded` resolved); freed when the loop ends."""
        model: llama_cpp.llama_model_p = self._model
        return model

    @property
    def slots_free(self) -> int:
        """Slots not running a request."""
        return self.parallel - self._busy

    @property
    def queued(self) -> int:
        """Requests waiting for a free slot."""
        return len(self._queue)

    def progress(self) -> ProgressSnapshot:
        """Calls finished so far and the native call running now (for the execution process's watchdog)."""
        return self._progress.snapshot(self._busy)

    # ---------------------------------------------------- decode loop thread
    def _run(self) -> None:
        try:
            self._open()
        except BaseException as exc:  # noqa: BLE001 - reported through the future
            self.loaded.set_exception(exc)
            return
        self.loaded.set_result(self._n_ctx_seq)
        try:
            while self._wait_for_work():
                try:
                    self._step()
                except Exception as exc:
                    log.exception("batch step failed", model=self.name)
                    self._fail_all(ModelError(f"generation on model {self.name} failed: {exc}"), queued=False)
        finally:
            self._fail_all(ModelClosedError(f"model {self.name} was closed during the request"), queued=True)
            self._free()

    def _open(self) -> None:
        opts = self._options
        model_params = llama_cpp.llama_model_default_params()
        model_params.n_gpu_layers = opts.gpu_layers()
        model_params.use_extra_bufts = opts.extra_buffers
        take_first_error()  # an earlier call's error is not this one's
        self._model = llama_cpp.llama_model_load_from_file(str(self._path).encode("utf-8"), model_params)
        if not self._model:
            why = take_first_error()  # e.g. a truncated file: "... data is not within the file bounds ..."
            raise ModelLoadError(f"llama.cpp could not load model file {self._path}" + (f": {why}" if why else ""))
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = (
            slot_context(opts.n_ctx, llama_cpp.llama_model_n_ctx_train(self._model), self._path) * self.parallel
        )
        params.n_batch = opts.n_batch
        params.n_ubatch = min(opts.n_batch, 512)
        params.n_seq_max = self.parallel
        params.n_threads = params.n_threads_batch = opts.threads()
        params.flash_attn_type = opts.flash_attn_type()
        params.type_k = params.type_v = opts.kv_ggml_type()
        params.kv_unified = False  # each sequence gets its own n_ctx cells
        self._ctx = llama_cpp.llama_init_from_model(self._model, params)
        if not self._ctx:
            llama_cpp.llama_model_free(self._model)
            raise ModelLoadError(
                f"llama.cpp could not create a {params.n_ctx}-token context for {self._path} "
                f"({self.parallel} slots of {params.n_ctx // self.parallel}); lower n_ctx or parallel"
            )
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self._n_vocab: int = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self._n_ctx_seq = llama_cpp.llama_n_ctx_seq(self._ctx)
        self._n_batch = llama_cpp.llama_n_batch(self._ctx)  # llama.cpp caps it at n_ctx
        self._batch = llama_cpp.llama_batch_init(self._n_batch, 0, 1)
        self._pieces = TokenPieces(self._vocab)

    def _free(self) -> None:
        if not hasattr(self, "_ctx"):
            return
        llama_cpp.llama_batch_free(self._batch)
        llama_cpp.llama_free(self._ctx)
        llama_cpp.llama_model_free(self._model)

    def _wait_for_work(self) -> bool:
        with self._wake:
            while not self._closed and not self._queue and not self._busy:
                self._wake.wait()
            return not self._closed

    def _step(self) -> None:
        self._seat_queued()
        self._reap()
        occupied = [s for s in self._slots if s.active is not None]
        if occupied:
            self._decode_step(occupied)

    def _seat_queued(self) -> None:
        if not self._queue:  # the usual step: nothing waits (a deque's truth is read atomically)
            return
        while True:
            free = [s for s in self._slots if s.active is None]
            with self._wake:
                if not free or not self._queue:
                    return
                request = self._queue.popleft()
            if request.cancelled.is_set():
                continue
            if request.deadline_passed():
                request.deliver(DeadlineExceededError(f"request on model {self.name} ran past its deadline"))
                continue
            slot = choose_slot(free, request.tokens, request.reuse_prefix)
            try:
                with self._progress.native_call("start", [request.owner]):
                    self._start(slot, request)
            except ModelError as exc:
                request.deliver(exc)

    def _start(self, slot: Slot, request: SlotRequest) -> None:
        tokens = request.tokens
        keep = 0
        if request.reuse_prefix:
            keep = min(common_prefix(slot.cached, tokens), len(tokens) - 1)  # the last token must give logits
        if keep < len(slot.cached) and not llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, keep, -1):
            llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
            keep = 0
        del slot.cached[keep:]
        sampler = SequenceSampler(self._n_vocab, request.sampling)
        text = StopText(request.stops)
        slot.active = ActiveRequest(
            request=request,
            sampler=sampler,
            pending=tokens[keep:] if request.score_from is None else tokens[keep:-1],  # the last predicts nothing
            reused=keep,
            text=text,
            deltas=None if request.on_text is None else TextDeltas(text, request.on_text),
        )
        self._busy += 1

    def _reap(self) -> None:
        waiting: list[SlotRequest] = []
        if self._queue:  # cancelled or expired requests must not wait for a slot (nor count as queued)
            with self._wake:
                waiting = list(self._queue)
                self._queue = deque(r for r in waiting if not r.cancelled.is_set() and not r.deadline_passed())
        for request in waiting:
            if not request.cancelled.is_set() and request.deadline_passed():
                request.deliver(DeadlineExceededError(f"request on model {self.name} ran past its deadline"))
        for slot in self._slots:
            active = slot.active
            if active is None:
                continue
            if active.request.cancelled.is_set():
                self._finish(slot, None)
            elif active.request.deadline_passed():
                self._finish(slot, DeadlineExceededError(f"request on model {self.name} ran past its deadline"))

    def _finish(self, slot: Slot, outcome: Outcome | None) -> None:
        """End the request running in the slot; the slot keeps its cache for prefix reuse."""
        active = slot.active
        assert active is not None
        slot.active = None
        slot.last_used = time.monotonic()
        self._busy -= 1
        active.sampler.close()
        if outcome is not None:
            active.request.deliver(outcome)

    def _decode_step(self, slots: list[Slot]) -> None:
        batch = self._batch
        n = 0
        outputs: list[tuple[Slot, int, int]] = []  # (slot, batch index, position)
        fed: list[tuple[Slot, list[int]]] = []

        def add(slot: Slot, tokens: list[int], first_output: int) -> None:
            """Feed `tokens`; those from index `first_output` on give logits."""
            nonlocal n
            pos0 = len(slot.cached)
            for i, token in enumerate(tokens):
                batch.token[n] = token
                batch.pos[n] = pos0 + i
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = slot.seq_id
                batch.logits[n] = i >= first_output
                if i >= first_output:
                    outputs.append((slot, n, pos0 + i))
                n += 1
            fed.append((slot, tokens))

        generating = [s for s in slots if s.active is not None and s.active.next_token is not None]
        for slot in generating:
            assert slot.active is not None and slot.active.next_token is not None
            add(slot, [slot.active.next_token], 0)
        prefilling = [s for s in slots if s.active is not None and s.active.prefilling]
        for slot in prefilling:
            room = self._n_batch - n
            if room <= 0:
                break
            active = slot.active
            assert active is not None
            score_from = active.request.score_from
            if score_from is None:
                chunk = active.pending[:room]
                add(slot, chunk, len(chunk) - 1 if len(chunk) == len(active.pending) else len(chunk))
            else:
                first = max(score_from - len(slot.cached), 0)
                chunk = active.pending[: min(room, first + SCORE_ROWS)]
                add(slot, chunk, first)
        batch.n_tokens = n
        started = time.perf_counter()
        with self._progress.native_call("decode", [s.active.request.owner for s, _ in fed if s.active], n):
            rc = llama_cpp.llama_decode(self._ctx, batch)
        elapsed = time.perf_counter() - started
        if rc != 0:
            self._decode_failed(rc, [s for s, _ in fed])
            return
        for slot, tokens in fed:
            active = slot.active
            assert active is not None
            slot.cached.extend(tokens)
            if active.next_token is not None:
                active.next_token = None
                active.generation_seconds += elapsed
            else:
                del active.pending[: len(tokens)]
                active.prompt_seconds += elapsed
        for slot, index, pos in outputs:
            with self._progress.native_call("sample", [slot.active.request.owner if slot.active else None]):
                if slot.active is not None and slot.active.request.score_from is not None:
                    self._take_score(slot, index, pos)
                else:
                    self._take_token(slot, index)
        for slot, _ in fed:
            active = slot.active
            if active is not None and active.request.score_from is not None and not active.pending:
                self._finish(slot, self._scores(active))

    def _decode_failed(self, rc: int, slots: list[Slot]) -> None:
        why = "no room left in the KV cache" if rc == 1 else f"llama_decode returned {rc}"
        for slot in slots:
            llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
            slot.cached.clear()
            self._finish(slot, ModelError(f"generation on model {self.name} failed: {why}"))

    def _take_token(self, slot: Slot, index: int) -> None:
        active = slot.active
        assert active is not None
        try:
            token = active.sampler.sample(self._ctx, index)
        except ModelError as exc:  # a grammar with no way on: this request fails, the others go on
            self._finish(slot, exc)
            return
        if active.request.trace:
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self._ctx, index), shape=(self._n_vocab,))
            active.chosen.append(token)
            active.logprobs.append(token_logprob(logits, token))
        if self._pieces.ends_generation(token):
            self._complete(slot, "stop")
            return
        active.generated.append(token)
        if active.text.add(self._pieces.piece(token)):
            self._complete(slot, "stop")
        elif len(active.generated) >= active.request.max_tokens:
            self._complete(slot, "length")
        else:
            active.next_token = token
            if active.deltas is not None:
                active.deltas.update()

    def _take_score(self, slot: Slot, index: int, pos: int) -> None:
        """Row `index` (at `pos`) of a scoring request: score the request's token at pos + 1."""
        active = slot.active
        assert active is not None
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self._ctx, index), shape=(self._n_vocab,))
        logprob, best, rank = score_row(logits, active.request.tokens[pos + 1])
        active.logprobs.append(logprob)
        active.best_logprobs.append(best)
        active.ranks.append(rank)

    @staticmethod
    def _scores(active: ActiveRequest) -> TokenScores:
        return TokenScores(
            logprobs=list(active.logprobs),
            best_logprobs=list(active.best_logprobs),
            ranks=list(active.ranks),
            text="",  # the caller detokenizes
            prompt_seconds=active.prompt_seconds,
        )

    def _complete(self, slot: Slot, finish_reason: str) -> None:
        active = slot.active
        assert active is not None
        if active.deltas is not None:  # the rest of the text goes out before the result
            active.deltas.finish()
        result = BatchedGeneration(
            text=active.text.text,
            finish_reason=finish_reason,  # type: ignore[arg-type]
            prompt_tokens=len(active.request.tokens),
            completion_tokens=len(active.generated),
            prompt_seconds=active.prompt_seconds,
            generation_seconds=active.generation_seconds,
            reused_prompt_tokens=active.reused,
            trace=self._trace(active),
        )
        self._finish(slot, result)

    @staticmethod
    def _trace(active: ActiveRequest) -> GenerationTrace | None:
        request = active.request
        if not request.trace:
            return None
        return GenerationTrace(
            prompt_tokens=list(request.tokens),
            tokens=list(active.chosen),
            logprobs=list(active.logprobs),
            temperature=request.sampling.temperature,
            seed=request.sampling.seed,
            constrained=request.sampling.constraint is not None,
            ignore_eos=bool(request.sampling.banned_tokens),
        )

    def _fail_all(self, error: ModelError, *, queued: bool) -> None:
        for slot in self._slots:
            if slot.active is not None:
                if hasattr(self, "_memory"):
                    llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
                slot.cached.clear()
                self._finish(slot, error)
        if queued:
            with self._wake:
                waiting, self._queue = list(self._queue), deque()
            for request in waiting:
                request.deliver(error)


def slot_context(n_ctx: int, n_ctx_train: int, path: Path) -> int:
    """A slot's context: `n_ctx`, but never past the model's trained context (0: the file does not say).

    Past it the model's text degrades, and no publisher could verify a proof of it: a verifier takes a
    prompt longer than the trained context for a forged one (node/cli/scorers.py)."""
    if 0 < n_ctx_train < n_ctx:
        log.warning(
            "slot context capped at the model's trained context",
            n_ctx=n_ctx,
            n_ctx_train=n_ctx_train,
            path=str(path),
        )
        return n_ctx_train
    return n_ctx
