"""Re-scoring a generation by teacher forcing: one prompt-evaluation pass over prompt + generated tokens.

`TokenScorer` evaluates the exact tokens a node says it ran and chose, and returns,
for each chosen token, its log-probability under this model file and how it ranked
among all tokens: what a verifier compares with the node's claim (docs/VERIFICATION.md).

Where the time goes (benchmarks/verification.py): the evaluation itself. Around it:
  - only the positions that predict a chosen token produce logits (not the prompt's);
  - the physical batch is the logical one (n_ubatch = n_batch), so a sequence up to
    n_batch tokens is one llama_decode;
  - the context stays loaded between checks and keeps its KV: a check whose tokens start
    like the previous check's (the same system prompt, a workflow's next step whose prompt
    holds the previous answer) evaluates only what differs;
  - the log-softmax, best token and rank are computed for all positions of a batch at
    once (numpy, float64 like models.tracing.token_logprob, in blocks of rows).
"""

from __future__ import annotations

import threading
from pathlib import Path

import llama_cpp
import numpy as np
from pydantic import BaseModel

from models.llama_open import construct_llama
from models.options import RuntimeOptions
from models.requests import ContextOverflowError, ModelError, ModelLoadError
from models.slots import common_prefix

# Rows of logits converted to float64 at once (16 x 49k vocabulary = 6 MB, reused: cache-sized).
ROWS_PER_BLOCK = 16


class ScoredTokens(BaseModel):
    """Each chosen token under the scoring model: its log-probability, the best token's, its rank (0 = top)."""

    logprobs: list[float]
    best_logprobs: list[float]
    ranks: list[int]
    text: str  # the chosen tokens as text (special tokens render as nothing)
    reused: int = 0  # leading tokens whose KV the previous check left (not evaluated again)


def rank_rows(logits: np.ndarray, chosen: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of `logits` (rows x vocabulary): log-softmax at `chosen`, the best log-probability, and the rank.

    The same float64 arithmetic as models.tracing.token_logprob, one row at a time there; here a
    block of rows at a time in one reused buffer (no temporaries), the ranks compared in float32
    (the widening to float64 is exact, so the order is the same).
    """
    n = len(chosen)
    logprobs = np.empty(n)
    best = np.empty(n)
    ranks = np.empty(n, dtype=np.int64)
    buffer = np.empty((min(n, ROWS_PER_BLOCK), logits.shape[1]))
    for start in range(0, n, ROWS_PER_BLOCK):
        rows = logits[start : start + ROWS_PER_BLOCK]
        ids = chosen[start : start + ROWS_PER_BLOCK]
        wide = buffer[: len(ids)]
        np.copyto(wide, rows)
        top = wide.max(axis=1)
        np.subtract(wide, top[:, None], out=wide)
        np.exp(wide, out=wide)
        log_total = np.log(wide.sum(axis=1))
        picked = rows[np.arange(len(ids)), ids]
        logprobs[start : start + len(ids)] = picked.astype(np.float64) - top - log_total
        best[start : start + len(ids)] = -log_total
        ranks[start : start + len(ids)] = (rows > picked[:, None]).sum(axis=1)
    return logprobs, best, ranks


class ScoringFailedError(ModelError):
    """llama.cpp failed here (memory, say): the tokens may be fine."""


class TokenScorer:
    """One model file opened for scoring. Thread-safe (one score at a time); close it when done."""

    def __init__(self, path: Path, options: RuntimeOptions | None = None) -> None:
        opts = options or RuntimeOptions()
        try:
            self._llm = construct_llama(
                path,
                opts.extra_buffers,
                n_ctx=opts.n_ctx,
                n_batch=opts.n_batch,
                n_ubatch=opts.n_batch,
                n_threads=opts.threads(),
                n_threads_batch=opts.threads(),
                n_gpu_layers=opts.gpu_layers(),
                flash_attn=opts.flash_attn_for_batches(),  # a check is one batched pass
            )
        except Exception as exc:
            raise ModelLoadError(f"llama.cpp could not open {path} for scoring: {exc}") from exc
        self._lock = threading.Lock()
        self._n_ctx = self._llm.n_ctx()
        self.n_ctx_train: int = llama_cpp.llama_model_n_ctx_train(self._llm.model)  # 0: the file does not say
        self._n_batch = llama_cpp.llama_n_batch(self._llm._ctx.ctx)  # llama.cpp caps it at n_ctx
        self._n_vocab = self._llm.n_vocab()
        self._cached: list[int] = []  # the tokens whose KV the context holds (sequence 0, positions 0..)

    @property
    def n_ctx(self) -> int:
        """The longest sequence (prompt and tokens) this scorer takes."""
        return self._n_ctx

    def score(self, prompt_tokens: list[int], tokens: list[int]) -> ScoredTokens:
        """Score `tokens` as the continuation of `prompt_tokens` (blocking; milliseconds per hundred tokens)."""
        if not prompt_tokens:
            raise ModelError("nothing to score: the prompt has no tokens")
        sequence = prompt_tokens + tokens
        if len(sequence) > self._n_ctx:
            raise ContextOverflowError(f"{len(sequence)} tokens do not fit the scoring context of {self._n_ctx}")
        if any(not 0 <= t < self._n_vocab for t in sequence):
            raise ModelError("a token id is outside the model's vocabulary")
        with self._lock:
            try:
                return self._score(sequence, len(prompt_tokens))
            except BaseException:
                self._clear()
                raise

    def clear(self) -> None:
        """Drop the KV kept from earlier checks (the next check evaluates every token)."""
        with self._lock:
            self._clear()

    def _clear(self) -> None:
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self._llm._ctx.ctx), True)
        self._cached = []

    def _score(self, sequence: list[int], n_prompt: int) -> ScoredTokens:
        ctx = self._llm._ctx.ctx
        first_output = n_prompt - 1  # position p's logits predict sequence[p + 1]
        # Keep the KV of the common prefix, but evaluate from the first position that must give logits.
        keep = min(common_prefix(self._cached, sequence), first_output)
        if not llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(ctx), 0, keep, -1):
            self._clear()
            keep = 0
        self._cached = self._cached[:keep]
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        batch = llama_cpp.llama_batch_init(self._n_batch, 0, 1)
        try:
            last = len(sequence) - 1  # the last token predicts nothing: it is never evaluated
            for start in range(keep, last, self._n_batch):
                end = min(start + self._n_batch, last)
                for i, pos in enumerate(range(start, end)):
                    batch.token[i] = sequence[pos]
                    batch.pos[i] = pos
                    batch.n_seq_id[i] = 1
                    batch.seq_id[i][0] = 0
                    batch.logits[i] = pos >= first_output
                batch.n_tokens = end - start
                rc = llama_cpp.llama_decode(ctx, batch)
                if rc != 0:
                    raise ScoringFailedError(f"scoring failed: llama_decode returned {rc}")
                self._cached.extend(sequence[start:end])
                outputs = end - max(start, first_output)
                if outputs > 0:
                    # Outputs are contiguous, in batch order (llama.h, llama_get_logits).
                    logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits(ctx), shape=(outputs, self._n_vocab))
                    chosen = np.array(sequence[end - outputs + 1 : end + 1], dtype=np.int64)
                    parts.append(rank_rows(logits, chosen))
        finally:
            llama_cpp.llama_batch_free(batch)
        text = self._llm.detokenize(sequence[n_prompt:]).decode("utf-8", errors="replace")
        if not parts:
            return ScoredTokens(logprobs=[], best_logprobs=[], ranks=[], text=text, reused=keep)
        return ScoredTokens(
            logprobs=np.concatenate([p[0] for p in parts]).tolist(),
            best_logprobs=np.concatenate([p[1] for p in parts]).tolist(),
            ranks=np.concatenate([p[2] for p in parts]).tolist(),
            text=text,
            reused=keep,
        )

    def prompt_text(self, prompt_tokens: list[int]) -> str:
        """Prompt token ids as text (special tokens render as nothing): what a scored step was asked.
        ModelError for an id outside the vocabulary (llama.cpp would abort the process on it)."""
        if any(not 0 <= t < self._n_vocab for t in prompt_tokens):
            raise ModelError("a token id is outside the model's vocabulary")
        with self._lock:
            return self._llm.detokenize(prompt_tokens).decode("utf-8", errors="replace")

    def close(self) -> None:
        """Free the model and its context."""
        self._llm.close()
