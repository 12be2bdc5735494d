"""Generation traces: what a verifier needs to re-score a generation (see docs/VERIFICATION.md).

A caller that wants traces sets `generation_traces` to a list around its `generate`
calls (the node's execution process does, per task that asked for a proof); the
runtime then records every generation's exact prompt tokens, the tokens it chose and
their log-probabilities under the model, and appends one `GenerationTrace` per call.
"""

from __future__ import annotations

from contextvars import ContextVar

import numpy as np
from pydantic import BaseModel


class GenerationTrace(BaseModel):
    """One generation as the model ran it.

    `logprobs[i]` is log-softmax of the model's raw logits (before top-k/p, temperature
    and any grammar mask) at the chosen `tokens[i]`: the quantity teacher forcing recomputes
    exactly. `tokens` ends with the end-of-generation token when the model stopped by itself.
    """

    prompt_tokens: list[int]
    tokens: list[int]
    logprobs: list[float]
    temperature: float
    seed: int | None = None
    constrained: bool = False  # a JSON schema or regex masked the logits
    ignore_eos: bool = False


# Set by the caller around `generate` (copied into each request the runtime queues).
generation_traces: ContextVar[list[GenerationTrace] | None] = ContextVar("generation_traces", default=None)


def token_logprob(logits: np.ndarray, token: int) -> float:
    """log-softmax(logits)[token], computed in float64 so that both sides of a check agree."""
    row = logits.astype(np.float64, copy=False)
    top = float(row.max())
    return float(row[token] - top - np.log(np.exp(row - top).sum()))


def score_row(logits: np.ndarray, token: int) -> tuple[float, float, int]:
    """For one row of logits: `token`'s log-softmax, the best token's, and `token`'s rank (0 = top).

    The same float64 arithmetic as `token_logprob`, with the normaliser computed once.
    """
    row = logits.astype(np.float64, copy=False)
    top = float(row.max())
    norm = top + float(np.log(np.exp(row - top).sum()))
    return float(row[token]) - norm, top - norm, int((logits > logits[token]).sum())
