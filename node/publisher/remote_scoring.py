"""Verifying on another node: proof steps scored by a `score` task (docs/VERIFICATION.md, "Remote scoring").

A publisher without the claimed model's file sends each proven step's token ids to another
node that serves the model (never the node that produced the result), as a one-task workflow
with the `score` operator (workflows/score_operator.py); the numbers come back as the task's
result and `ProofChecker` compares them exactly as it compares local ones.

The answer of a remote scorer is trusted only as far as two rules go: its lists must have
one entry per token sent, and a failed check is confirmed by a second scorer where one exists
(a lying scorer could otherwise get an honest node banned); when they disagree the result stays
unverified. A scorer that errs, times out or answers
malformed leaves the result unverified; one that refuses the tokens the way any node would (ids
outside the model's vocabulary) finds the proof at fault, which a second scorer must confirm too.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Protocol

import structlog
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.alias_generators import to_camel

from node.wire.proof import Proof, ProofGeneration

log = structlog.get_logger(__name__)

REMOTE_TIMEOUT_S = 120.0
# What the score operator says, deterministically, of ids the model does not have (the proof's fault).
OUT_OF_VOCABULARY = "outside the model's vocabulary"


class ScoreTaskRunner(Protocol):
    """What remote scoring needs of the Client."""

    def others_serve(self, model: str, exclude: set[str]) -> bool:
        """Whether a live node outside `exclude` serves `model`."""
        ...

    async def run_score_task(
        self, workflow: dict[str, Any], model: str, exclude: set[str], timeout: float
    ) -> tuple[str, str]:
        """Run the workflow on a node outside `exclude`, without a proof: (result text, node address)."""
        ...


class RemoteScores(BaseModel):
    """A score task's result (workflows/score_operator.py)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, allow_inf_nan=False)

    logprobs: list[float]
    best_logprobs: list[float]
    ranks: list[int]
    text: str
    prompt_text: str = ""


class ScorerUnavailableError(Exception):
    """No remote scorer gave an answer to judge by: the result stays unverified."""


class NoOtherScorerError(ScorerUnavailableError):
    """No live node outside those excluded serves the model: nobody else to ask."""


class TokensRefusedError(Exception):
    """A scorer refused the proof's tokens the way every node would (ids outside the model's vocabulary): the
    proof is at fault, if a second scorer agrees (the first one's error text is its own word, a lie included)."""

    def __init__(self, reason: str, node: str) -> None:
        super().__init__(reason)
        self.node = node  # the scorer that refused ("" when unknown)


def score_workflow(step: ProofGeneration, timeout: float) -> dict[str, Any]:
    """The one-task workflow that scores `step`'s tokens (the shared workflow format + the `score` operator)."""
    spec = json.dumps({"promptTokens": step.prompt_tokens, "tokens": step.tokens}, separators=(",", ":"))
    return {
        "config": {"max_steps": 2, "max_time": max(int(timeout), 1), "tools": [], "max_tokens": len(step.tokens)},
        "tasks": [
            {
                "id": "score",
                "name": "score",
                "description": "teacher forcing of a proof step",
                "messages": [{"role": "user", "content": spec}],
                "operator": "score",
                "outputs": [{"type": "write", "key": "scores", "value": "__result"}],
            },
            {"id": "_end", "name": "end", "description": "", "messages": [], "operator": "end"},
        ],
        "steps": [{"source": "score", "target": "_end"}],
        "return_value": {"input": {"type": "read", "key": "scores"}},
    }


class PrefetchedScorer:
    """A `Scorer` answering from scores fetched beforehand (the checker's interface is blocking)."""

    def __init__(self, scores: dict[tuple[tuple[int, ...], tuple[int, ...]], RemoteScores]) -> None:
        self._scores = scores
        self._prompts = {prompt: s.prompt_text for (prompt, _), s in scores.items()}

    def score(self, prompt_tokens: list[int], tokens: list[int]) -> RemoteScores:
        """The scores fetched for these tokens."""
        return self._scores[(tuple(prompt_tokens), tuple(tokens))]

    def prompt_text(self, prompt_tokens: list[int]) -> str:
        """The prompt's text, as fetched."""
        return self._prompts[tuple(prompt_tokens)]


async def fetch_scores(
    runner: ScoreTaskRunner, model: str, proof: Proof, exclude: set[str], timeout: float = REMOTE_TIMEOUT_S
) -> tuple[PrefetchedScorer, set[str]]:
    """Every step of `proof` scored on nodes outside `exclude`: the scorer and those nodes' addresses.

    Raises ScorerUnavailableError (no other node, or no usable answer) or TokensRefusedError.
    """
    if not runner.others_serve(model, exclude):
        raise NoOtherScorerError(f"no node other than the result's (and those asked) serves {model}")
    results = await asyncio.gather(
        *(_score_step(runner, model, step, exclude, timeout) for step in proof.steps), return_exceptions=True
    )
    scores: dict[tuple[tuple[int, ...], tuple[int, ...]], RemoteScores] = {}
    nodes: set[str] = set()  # the scorers (one per step at most)
    for step, outcome in zip(proof.steps, results, strict=True):
        if isinstance(outcome, TokensRefusedError | ScorerUnavailableError):
            raise outcome
        if isinstance(outcome, BaseException):
            raise ScorerUnavailableError(f"scoring failed: {outcome}") from outcome
        scores[(tuple(step.prompt_tokens), tuple(step.tokens))] = outcome[0]
        nodes.add(outcome[1])
    return PrefetchedScorer(scores), {n for n in nodes if n}


async def _score_step(
    runner: ScoreTaskRunner, model: str, step: ProofGeneration, exclude: set[str], timeout: float
) -> tuple[RemoteScores, str]:
    if not step.tokens:  # nothing to score; the checker sees no positions
        return RemoteScores(logprobs=[], best_logprobs=[], ranks=[], text="", prompt_text=""), ""
    try:
        text, node = await runner.run_score_task(score_workflow(step, timeout), model, exclude, timeout)
    except Exception as exc:  # noqa: BLE001 - any failure of the scorer leaves the result unverified
        reason = str(getattr(exc, "reason", exc))
        if OUT_OF_VOCABULARY in reason:
            raise TokensRefusedError(reason, str(getattr(exc, "node", ""))) from None
        raise ScorerUnavailableError(f"the score task failed: {reason}") from None
    try:
        scores = RemoteScores.model_validate_json(text)
    except ValidationError:
        log.warning("malformed score result", node=node, model=model)
        raise ScorerUnavailableError(f"node {node} answered the score task with something else") from None
    n = len(step.tokens)
    if not len(scores.logprobs) == len(scores.best_logprobs) == len(scores.ranks) == n:
        raise ScorerUnavailableError(f"node {node} scored a different number of tokens than {n}")
    return scores, node
