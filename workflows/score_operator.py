"""The `score` operator: teacher forcing of given token ids, for verifying another node's result.

The task's last message is a JSON object `{"promptTokens": [int], "tokens": [int]}`: exact
token ids of the step's model (template applied, BOS included), as a proof carries them
(docs/VERIFICATION.md). The result is compact JSON with, for each of `tokens`, its
log-probability under the model given everything before it, the best token's, and its
rank (0 = the model's top token), plus the tokens and the prompt as text:
`{"logprobs": [float], "bestLogprobs": [float], "ranks": [int], "text": str, "promptText": str}`.

Bounds: a score task costs no more than a generation of the same size. The ids must fit
one slot's context together, like a generation's prompt plus max_tokens; `tokens` count
against the same per-generation cap and per-run token budget as generated tokens; it is
one prompt-evaluation pass (no sampling), cancelled by `max_time` like a generation.
"""

from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from models.requests import ContextOverflowError, ModelError, ScoreRequest, TokenOutOfVocabularyError
from workflows.backend import ModelBackend
from workflows.errors import ContextTooSmallError, InvalidStepError, LimitExceededError, ModelFailedError

DIGITS = 4  # log-probabilities are sent rounded to 1e-4, as proofs carry them


class ScoreSpec(BaseModel):
    """What a score task's last message holds."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    prompt_tokens: list[int] = Field(alias="promptTokens", min_length=1)
    tokens: list[int] = Field(min_length=1)


def parse_spec(content: str) -> ScoreSpec:
    """The score request a message holds; InvalidStepError naming what is wrong."""
    try:
        return ScoreSpec.model_validate_json(content)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "message"
        raise InvalidStepError(
            f'the score operator\'s last message must be JSON {{"promptTokens": [int], "tokens": [int]}} '
            f"({where}: {first['msg']})"
        ) from None


async def score(model: ModelBackend, allowed: int, content: str) -> tuple[str, int, int]:
    """Score the message's tokens with the step's model, at most `allowed` of them.

    Returns the result JSON (module doc) and the prompt and scored token counts, which
    the caller adds to the run's usage like a generation's.
    """
    spec = parse_spec(content)
    if len(spec.tokens) > allowed:
        raise LimitExceededError(
            "max_tokens", f"{len(spec.tokens)} tokens to score, more than the {allowed} a generation may produce here"
        )
    if any(t < 0 for t in spec.prompt_tokens + spec.tokens):
        raise InvalidStepError("a token id to score is negative")
    try:
        scores = await model.score(ScoreRequest(prompt_tokens=spec.prompt_tokens, tokens=spec.tokens))
    except TokenOutOfVocabularyError as e:  # the same model file refuses it on every node
        raise InvalidStepError(f"a token id to score is outside the model's vocabulary: {e}") from e
    except ContextOverflowError as e:
        raise ContextTooSmallError(f"the tokens to score do not fit the model's context: {e}") from e
    except ModelError as e:
        raise ModelFailedError(f"model {model.name!r} failed to score: {e}") from e
    text = json.dumps(
        {
            "logprobs": [round(v, DIGITS) for v in scores.logprobs],
            "bestLogprobs": [round(v, DIGITS) for v in scores.best_logprobs],
            "ranks": scores.ranks,
            "text": scores.text,
            "promptText": scores.prompt_text,
        },
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return text, len(spec.prompt_tokens), len(spec.tokens)
