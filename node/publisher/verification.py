"""Checking a node's proof against a re-scoring of its tokens (design: docs/VERIFICATION.md).

`ProofChecker` needs a `Scorer` for the model the result names: something that evaluates
prompt + chosen tokens in one pass and reports each chosen token's log-probability, the
best token's and its rank (models.scoring.TokenScorer in the publisher's process; the
publisher package does not import models, the caller hands one in). A result fails when:
  - it has no proof, or a proof without a generation (nothing to check);
  - any claimed log-probability is further than `position_tolerance` from the re-scored one
    (a lie about the model's numbers, or another model's numbers);
  - the claimed log-probabilities are on average higher than the re-scored ones by more than
    the mean tolerance for that many positions (tokens a different model found likelier than
    this one does): `mean_tolerance`, or `mean_spread / sqrt(positions)` where that is wider
    (a mean over few positions spreads more);
  - an unconstrained token could not have been sampled under the claimed settings: at
    temperature 0 a token that is not the model's best, above 0 one outside top-k 40 or the
    min-p 0.05 window (a fixed or foreign text the model would not produce);
  - the result text is not the text of one of its generations (work done, but another answer sent);
  - a generation's prompt does not hold the publisher's own messages (node/publisher/prompt_match.py).
The tolerances come from the measured spread of honest nodes (benchmarks/verification.py).

The scorer is local when the publisher has the model file, else remote: a `score` task on
another node that serves the model (node/publisher/remote_scoring.py).
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import structlog

from node.publisher.prompt_match import PromptExpectation
from node.publisher.remote_scoring import (
    REMOTE_TIMEOUT_S,
    NoOtherScorerError,
    ScorerUnavailableError,
    ScoreTaskRunner,
    TokensRefusedError,
    fetch_scores,
)
from node.wire.proof import Proof

log = structlog.get_logger(__name__)

# Measured (benchmarks/verification.py, README "Verification"): honest |claimed - re-scored|
# per position across 1/2 threads and 1/4 parallel sequences, with margin.
POSITION_TOLERANCE = 1.0
MEAN_TOLERANCE = 0.05
# A mean over k positions spreads as ~1/sqrt(k), so the mean tolerance is max(MEAN_TOLERANCE,
# MEAN_SPREAD / sqrt(k)). Measured: over every prefix of 1,139 honest results (1/2 threads, 1/4
# sequences, the bf16 scoring copy), (mean bias of the first k) x sqrt(k) reached 0.39 at most.
MEAN_SPREAD = 0.5
# The sampler chain's candidate window (models/sampling.py): top-k 40, min-p 0.05.
TOP_K = 40
MIN_P_GAP = -math.log(0.05)
# How much of the result text and a generation's text must agree.
TEXT_PREFIX_CHARS = 64
# The last steps of a proof checked, here (a local scorer) or remotely (one score task each).
MAX_CHECKED_STEPS = 8


class Scores(Protocol):
    """Re-scored tokens: per chosen token its log-probability, the best token's, and its rank."""

    logprobs: list[float]
    best_logprobs: list[float]
    ranks: list[int]
    text: str


class Scorer(Protocol):
    """Re-scores tokens with one model file (blocking)."""

    def score(self, prompt_tokens: list[int], tokens: list[int]) -> Scores:
        """The scores of `tokens` after `prompt_tokens`."""
        ...

    def prompt_text(self, prompt_tokens: list[int]) -> str:
        """The prompt token ids as text (checked against the publisher's messages)."""
        ...


ScorerFor = Callable[[str], Scorer | None]  # the scorer for a model name, or None if this publisher lacks it


class VerificationError(Exception):
    """A result failed its check; str(e) says which rule it broke."""


class UncheckableError(Exception):
    """A scorer here cannot check these tokens (its context is smaller than the node's, it failed): the result
    stays unverified and its node is not blamed. Any other error of `Scorer.score` is the proof's fault."""


@dataclass(frozen=True)
class Verdict:
    """What a check found: the worst single deviation, the mean bias, and positions checked."""

    positions: int
    max_deviation: float
    mean_bias: float


@dataclass(frozen=True)
class ProofChecker:
    """Checks proofs against a scorer, with tolerances."""

    position_tolerance: float = POSITION_TOLERANCE
    mean_tolerance: float = MEAN_TOLERANCE
    mean_spread: float = MEAN_SPREAD

    def mean_tolerance_for(self, positions: int) -> float:
        """How far above the model's the claimed log-probabilities may be on average over `positions` tokens."""
        return max(self.mean_tolerance, self.mean_spread / math.sqrt(max(positions, 1)))

    def check(
        self, proof: Proof | None, result_text: str, scorer: Scorer, expected: PromptExpectation | None = None
    ) -> Verdict:
        """The verdict for a result and its proof; VerificationError when it fails.

        `expected`: what every step's prompt must hold (the publisher's messages); None skips that rule.
        """
        if proof is None:
            raise VerificationError("the result carries no proof")
        if not proof.steps:
            raise VerificationError("the proof has no generation to check")
        if expected is not None:  # before any scoring: a step that cannot be scored here is no way around it
            for number, generation in enumerate(proof.steps):
                try:
                    prompt = scorer.prompt_text(generation.prompt_tokens)
                except UncheckableError:
                    raise
                except Exception as exc:  # noqa: BLE001 - ids the model does not have are the node's fault
                    raise VerificationError(f"generation {number}: the prompt cannot be read: {exc}") from None
                if not expected.holds(prompt):
                    raise VerificationError(
                        f"generation {number} was run on a prompt that does not hold the task's messages"
                    )
        deviations: list[float] = []
        texts: list[str] = []
        for number, generation in enumerate(proof.steps):
            try:
                scores = scorer.score(generation.prompt_tokens, generation.tokens)
            except UncheckableError:
                raise
            except Exception as exc:  # noqa: BLE001 - tokens the model cannot take are the node's fault
                raise VerificationError(f"generation {number}: tokens cannot be scored: {exc}") from None
            texts.append(scores.text)
            for i, (claimed, actual) in enumerate(zip(generation.logprobs, scores.logprobs, strict=True)):
                deviation = claimed - actual
                if abs(deviation) > self.position_tolerance:
                    raise VerificationError(
                        f"generation {number} token {i}: claimed log-probability {claimed:.3f}, the model gives {actual:.3f}"
                    )
                deviations.append(deviation)
                if not generation.constrained:
                    self._sampleable(
                        number, i, generation.temperature, actual, scores.best_logprobs[i], scores.ranks[i]
                    )
        mean = sum(deviations) / len(deviations) if deviations else 0.0
        tolerance = self.mean_tolerance_for(len(deviations))
        if mean > tolerance:
            raise VerificationError(
                f"claimed log-probabilities are {mean:.3f} nats above the model's on average "
                f"(over {len(deviations)} tokens, tolerance {tolerance:.3f}): another model's tokens"
            )
        if not any(_same_text(result_text, text) for text in texts):
            raise VerificationError("the result text is not the text of any proven generation")
        worst = max((abs(d) for d in deviations), default=0.0)
        return Verdict(positions=len(deviations), max_deviation=worst, mean_bias=mean)

    def _sampleable(self, generation: int, i: int, temperature: float, logprob: float, best: float, rank: int) -> None:
        gap = best - logprob
        if temperature == 0.0:
            if rank > 0 and gap > self.position_tolerance:
                raise VerificationError(
                    f"generation {generation} token {i}: not the model's best token at temperature 0"
                )
        elif rank >= TOP_K or gap > MIN_P_GAP + self.position_tolerance:
            raise VerificationError(f"generation {generation} token {i}: outside the sampler's top-k/min-p window")


def _same_text(result: str, generated: str) -> bool:
    """The result and a generation's output agree on their start (stop strings and templates cut the ends)."""
    a, b = result.strip()[:TEXT_PREFIX_CHARS], generated.strip()[:TEXT_PREFIX_CHARS]
    if not a or not b:
        return a == b
    return b.startswith(a) or a.startswith(b) or a in generated or b in result


class VerificationFailedError(Exception):
    """A result failed verification (raised by ResultVerifier; the Client makes it the task's error)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"verification failed: {reason}")
        self.reason = f"verification failed: {reason}"


def checked_part(proof: Proof) -> Proof:
    """The part of `proof` that is checked, here or remotely: its last MAX_CHECKED_STEPS steps (the last one
    made the result). Earlier ones count as omitted: a proof of 256 full-context steps costs a node nothing
    to make up, and would cost the verifier minutes to re-score."""
    if len(proof.steps) <= MAX_CHECKED_STEPS:
        return proof
    dropped = len(proof.steps) - MAX_CHECKED_STEPS
    return proof.model_copy(update={"steps": proof.steps[dropped:], "omitted": proof.omitted + dropped})


class ResultVerifier:
    """Which results the Client verifies (a share, at random) and how (a scorer per model name, else remotely)."""

    def __init__(
        self,
        share: float,
        scorer_for: ScorerFor,
        checker: ProofChecker | None = None,
        rng: random.Random | None = None,
        remote: bool = True,
        remote_timeout: float = REMOTE_TIMEOUT_S,
    ) -> None:
        """`remote`: without a local scorer, score on another node that serves the model (a `score` task)."""
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"verify share must be within 0..1, not {share}")
        self.share = share
        self._scorer_for = scorer_for
        self.checker = checker or ProofChecker()
        self._rng = rng or random.Random()
        self.remote = remote
        self.remote_timeout = remote_timeout

    def wants_proof(self) -> bool:
        """Whether the next task asks for a proof (and so gets verified)."""
        return self.share > 0.0 and self._rng.random() < self.share

    async def verify(
        self,
        model: str,
        proof: Proof | None,
        text: str,
        *,
        node: str = "",
        runner: ScoreTaskRunner | None = None,
        expected: PromptExpectation | None = None,
    ) -> Verdict | None:
        """The verdict (None: no scorer here nor elsewhere, so unverified); VerificationFailedError when it fails.

        `node` produced the result: a remote scorer is never that node. `runner` (the Client) runs
        score tasks; without it, only a local scorer verifies.
        """
        scorer = self._scorer_for(model)
        if proof is not None:
            proof = checked_part(proof)
        if scorer is None and self.remote and runner is not None:
            if proof is None or not proof.steps:
                return await self._checked(proof, text, _NoScorer(), expected)  # fails before scoring anything
            return await self._remotely(model, proof, text, node, runner, expected)
        if scorer is None:
            return None
        return await self._checked(proof, text, scorer, expected)

    async def _checked(
        self, proof: Proof | None, text: str, scorer: Scorer, expected: PromptExpectation | None
    ) -> Verdict | None:
        try:
            return await asyncio.to_thread(self.checker.check, proof, text, scorer, expected)
        except VerificationError as exc:
            raise VerificationFailedError(str(exc)) from None
        except UncheckableError as exc:
            log.warning("result not verified: the scorer here cannot check it", reason=str(exc))
            return None

    async def _remotely(
        self,
        model: str,
        proof: Proof,
        text: str,
        node: str,
        runner: ScoreTaskRunner,
        expected: PromptExpectation | None,
    ) -> Verdict | None:
        """Check on a remote scorer; a failure is confirmed by a second, different scorer when there is one
        (a scorer that lies cannot get an honest node banned where another scorer exists)."""
        exclude = {node}
        failure: VerificationError | None = None
        for _ in range(2):
            try:
                scorer, scorers = await fetch_scores(runner, model, proof, exclude, self.remote_timeout)
            except TokensRefusedError as exc:
                refusal = VerificationError(f"the proof's tokens cannot be scored: {exc}")
                if failure is not None:  # a second scorer finds the proof at fault too
                    raise VerificationFailedError(str(failure)) from None
                if not exc.node:  # a refusal nobody can be asked to confirm (the scorer is unknown)
                    log.info("result not verified: unconfirmable refusal", node=node, model=model, reason=str(exc))
                    return None
                failure, exclude = refusal, exclude | {exc.node}
                continue
            except ScorerUnavailableError as exc:
                if failure is not None and isinstance(exc, NoOtherScorerError):  # nobody else serves the model:
                    log.info("remote failure unconfirmed: no second scorer", node=node, model=model, reason=str(exc))
                    raise VerificationFailedError(str(failure)) from None  # the first one's finding stands
                if failure is not None:  # a second scorer that errs or times out confirms nothing
                    log.warning(
                        "remote failure unconfirmed: the second scorer failed",
                        node=node,
                        model=model,
                        first=str(failure),
                    )
                    return None
                log.info("result not verified: no remote scorer answered", node=node, model=model, reason=str(exc))
                return None
            try:
                verdict = self.checker.check(proof, text, scorer, expected)
            except VerificationError as exc:
                if failure is not None:
                    raise VerificationFailedError(str(failure)) from None
                failure = exc
                exclude |= scorers
                continue
            if failure is not None:
                log.warning(
                    "remote scorers disagree: result left unverified", node=node, model=model, first=str(failure)
                )
                return None
            return verdict
        return None


class _NoScorer:
    """Stands in where a proof has no step: the checker fails it before scoring anything."""

    def score(self, prompt_tokens: list[int], tokens: list[int]) -> Scores:
        raise AssertionError("a proof without steps is never scored")

    def prompt_text(self, prompt_tokens: list[int]) -> str:
        raise AssertionError("a proof without steps is never scored")
