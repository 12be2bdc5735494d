"""The request interface of the batched llama.cpp runtime.

Callers (the workflow engine, the node) submit a request and await its result.
Cancelling the awaiting asyncio task cancels the request: an in-flight
generation stops within tens of milliseconds and the model stays usable.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, Field

TextSink = Callable[[str], None]
"""Receives a generation's text piece by piece, in order, as it settles (see models/text_deltas.py)."""


class ChatMessage(BaseModel):
    """One chat turn; rendered with the model's own chat template."""

    role: Literal["system", "user", "assistant"]
    content: str


class GenerationRequest(BaseModel):
    """A chat completion request."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int = Field(default=250, ge=1)
    temperature: float = Field(default=0.0, ge=0.0, le=5.0)
    seed: int | None = None
    # When set, decoding is constrained to JSON following this JSON schema.
    json_schema: dict[str, Any] | None = None
    # When set, decoding is constrained to text this regex matches as a whole (takes precedence).
    regex: str | None = None
    stop: list[str] = Field(default_factory=list)
    # Generate exactly max_tokens (benchmarks): end-of-sequence is not a stop.
    ignore_eos: bool = False
    # Stop the request and fail it with DeadlineExceededError once it has run
    # this long (counted from the call, including time queued behind others).
    deadline_seconds: float | None = Field(default=None, gt=0)


FinishReason = Literal["stop", "length"]
"""Why a generation ended: end of sequence (or a stop), or its max_tokens."""


class Generation(BaseModel):
    """The result of a generation request (`trace` only when the caller asked for traces)."""

    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    prompt_seconds: float = 0.0
    generation_seconds: float = 0.0


class ScoreRequest(BaseModel):
    """Teacher forcing: `tokens` as the continuation of `prompt_tokens`, exact token ids (no template)."""

    prompt_tokens: list[int] = Field(min_length=1)
    tokens: list[int] = Field(min_length=1)
    deadline_seconds: float | None = Field(default=None, gt=0)


class TokenScores(BaseModel):
    """Each scored token under the model: its log-probability, the best token's, its rank (0 = top)."""

    logprobs: list[float]
    best_logprobs: list[float]
    ranks: list[int]
    text: str  # the scored tokens as text (special tokens render as nothing)
    prompt_text: str = ""  # the prompt tokens as text: what the scored step was asked
    prompt_seconds: float = 0.0


class EmbeddingRequest(BaseModel):
    """Sentence embeddings (mean pooled) for each text."""

    texts: list[str] = Field(min_length=1)


class ModelError(Exception):
    """A model could not serve a request (base class of the runtime's errors)."""


class UnknownModelError(ModelError):
    """The model name is not in the registry."""


class TokenOutOfVocabularyError(ModelError):
    """A token id to score is not in the model's vocabulary (the same on every node with that model)."""


class ModelLoadError(ModelError):
    """The model file is missing, corrupt, or could not be loaded."""


class ContextOverflowError(ModelError):
    """The prompt plus max_tokens do not fit one slot's context window (the same on every try)."""


class UnsupportedRequestError(ModelError):
    """The request asks for something this backend cannot do; it fails the same on every try here.

    Another node's backend may do it, so the message carries no `Invalid prompt: ` (the prefix
    that tells a publisher not to retry anywhere: PROTOCOL.md section 5).
    """


class ModelClosedError(ModelError):
    """The model was closed before or while the request ran."""


class DeadlineExceededError(ModelError):
    """The request's deadline passed while it was running; it was stopped."""
