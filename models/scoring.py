"""Re-scoring a generation by teacher forcing: one prompt-evaluation pass over prompt + generated tokens.

`TokenScorer` evaluates the exact tokens a node says it ran and chose, and returns,
for each chosen token, its log-probability under this model file and how it ranked
among all tokens: what a verifier compares with the node's claim (docs/VERIFICATION.md).
Only the positions that predict a chosen token produce logits, so memory stays at one
batch of rows whatever the length.
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
from models.tracing import token_logprob


class ScoredTokens(BaseModel):
    """Each chosen token under the scoring model: its log-probability, the best token's, its rank (0 = top)."""

    logprobs: list[float]
    best_logprobs: list[float]
    ranks: list[int]
    text: str  # the chosen tokens as text (special tokens render as nothing)


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
                n_threads=opts.threads(),
                n_threads_batch=opts.threads(),
                n_gpu_layers=opts.gpu_layers(),
            )
        except Exception as exc:
            raise ModelLoadError(f"llama.cpp could not open {path} for scoring: {exc}") from exc
        self._lock = threading.Lock()
        self._n_ctx = self._llm.n_ctx()
        self._n_batch = min(opts.n_batch, self._n_ctx)
        self._n_vocab = self._llm.n_vocab()

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
            return self._score(sequence, len(prompt_tokens))

    def _score(self, sequence: list[int], n_prompt: int) -> ScoredTokens:
        ctx = self._llm._ctx.ctx
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
        batch = llama_cpp.llama_batch_init(self._n_batch, 0, 1)
        logprobs: list[float] = []
        best: list[float] = []
        ranks: list[int] = []
        try:
            # Position p's logits predict sequence[p + 1]: only p >= n_prompt - 1 matter.
            last = len(sequence) - 1
            for start in range(0, last, self._n_batch):
                end = min(start + self._n_batch, last)
                outputs: list[int] = []
                for i, pos in enumerate(range(start, end)):
                    batch.token[i] = sequence[pos]
                    batch.pos[i] = pos
                    batch.n_seq_id[i] = 1
                    batch.seq_id[i][0] = 0
                    batch.logits[i] = pos >= n_prompt - 1
                    if pos >= n_prompt - 1:
                        outputs.append(i)
                batch.n_tokens = end - start
                rc = llama_cpp.llama_decode(ctx, batch)
                if rc != 0:
                    raise ModelError(f"scoring failed: llama_decode returned {rc}")
                for i in outputs:
                    row = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, i), shape=(self._n_vocab,))
                    chosen = sequence[start + i + 1]
                    logprobs.append(token_logprob(row, chosen))
                    top = int(row.argmax())
                    best.append(token_logprob(row, top))
                    ranks.append(int((row > row[chosen]).sum()))
        finally:
            llama_cpp.llama_batch_free(batch)
        text = self._llm.detokenize(sequence[n_prompt:]).decode("utf-8", errors="replace")
        return ScoredTokens(logprobs=logprobs, best_logprobs=best, ranks=ranks, text=text)

    def prompt_text(self, prompt_tokens: list[int]) -> str:
        """Prompt token ids as text (special tokens render as nothing): what a scored step was asked."""
        with self._lock:
            return self._llm.detokenize(prompt_tokens).decode("utf-8", errors="replace")

    def close(self) -> None:
        """Free the model and its context."""
        self._llm.close()
