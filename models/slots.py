"""The batched runtime's bookkeeping: queued requests, sequence slots and the requests running in them.

A `Slot` is one llama.cpp sequence id. It remembers which tokens its KV cache
holds (`cached`) after its request ends, so a later request starting with the
same tokens (the same system prompt, the next step of the same workflow)
evaluates only what follows that prefix. An `ActiveRequest` is one request
running in a slot: its prompt tokens still to evaluate, its sampler and its
output so far.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from models.requests import Generation, TextSink, TokenScores
from models.sampling import SamplingSettings, SequenceSampler, StopText
from models.text_deltas import TextDeltas
from models.tracing import GenerationTrace

# A slot whose cache covers at least this share of a new prompt is reused even
# if it is not the least recently used one (llama-server's default threshold).
_SIMILARITY = 0.5


class BatchedGeneration(Generation):
    """A Generation plus how much of the prompt came from a slot's cached prefix."""

    # Prompt tokens whose KV was reused from the slot's cache (not evaluated).
    reused_prompt_tokens: int = 0
    # The generation's exact tokens and their log-probabilities, when the request asked for them.
    trace: GenerationTrace | None = None


Outcome = BatchedGeneration | TokenScores | BaseException


@dataclass
class SlotRequest:
    """A tokenized request waiting for, or running in, a slot. Shared between threads."""

    tokens: list[int]
    sampling: SamplingSettings
    stops: list[str]
    max_tokens: int
    reuse_prefix: bool
    deadline: float | None
    # Called exactly once, on the decode loop's thread, with the result or the error.
    deliver: Callable[[Outcome], None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    owner: str | None = None  # who asked (a task id), for the watchdog's blame; see models/progress.py
    trace: bool = False  # record the chosen tokens' log-probabilities (models/tracing.py)
    # Called on the decode loop's thread with each settled piece of the output (models/text_deltas.py).
    on_text: TextSink | None = None
    # A scoring request (teacher forcing, models/decode_loop.py): nothing is sampled; every position
    # from this one on gives logits, scoring the token after it. Its outcome is TokenScores.
    score_from: int | None = None

    def deadline_passed(self) -> bool:
        """Whether the request's deadline (if any) has passed."""
        return self.deadline is not None and time.monotonic() >= self.deadline


@dataclass
class ActiveRequest:
    """One request running in a slot (decode loop thread only)."""

    request: SlotRequest
    sampler: SequenceSampler
    pending: list[int]
    reused: int
    text: StopText
    generated: list[int] = field(default_factory=list)
    # With request.trace: every chosen token (the end-of-generation one too) and its log-probability.
    chosen: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    # A scoring request's rows so far: the best token's log-probability and the scored token's rank.
    best_logprobs: list[float] = field(default_factory=list)
    ranks: list[int] = field(default_factory=list)
    deltas: TextDeltas | None = None  # when the request streams its text
    # The last sampled token, to be fed in the next decode step.
    next_token: int | None = None
    prompt_seconds: float = 0.0
    generation_seconds: float = 0.0

    @property
    def prefilling(self) -> bool:
        """Whether prompt tokens are still waiting to be decoded."""
        return bool(self.pending)


@dataclass
class Slot:
    """One sequence id of the shared context (decode loop thread only)."""

    seq_id: int
    cached: list[int] = field(default_factory=list)
    last_used: float = 0.0
    active: ActiveRequest | None = None


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two token lists."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def choose_slot(free: list[Slot], tokens: list[int], reuse_prefix: bool) -> Slot:
    """The free slot a request should run in.

    The slot whose cache shares the longest prefix with the prompt, if that
    prefix covers at least half the prompt; otherwise the least recently used
    slot, so a long cached conversation is not evicted for a few shared tokens.
    """
    lru = min(free, key=lambda s: s.last_used)
    if not reuse_prefix:
        return lru
    best = max(free, key=lambda s: (common_prefix(s.cached, tokens), -s.last_used))
    if common_prefix(best.cached, tokens) >= _SIMILARITY * len(tokens):
        return best
    return lru
