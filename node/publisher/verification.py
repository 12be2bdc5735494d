"""Checking a node's proof against a re-scoring of its tokens (design: docs/VERIFICATION.md).

`ProofChecker` needs a `Scorer` for the model the result names: something that evaluates
prompt + chosen tokens in one pass and reports each chosen token's log-probability, the
best token's and its rank (models.scoring.TokenScorer in the publisher's process; the
publisher package does not import models, the caller hands one in). A result fails when:
  - it has no proof, or a proof without a generation (nothing to check);
  - any claimed log-probability is further than `position_tolerance` from the re-scored one
    (a lie about the model's numbers, or another model's numbers);
  - the claimed log-probabilities are on average higher than the re-scored ones by more than
    `mean_tolerance` (tokens a different model found likelier than this one does);
  - an unconstrained token could not have been sampled under the claimed settings: at
    temperature 0 a token that is not the model's best, above 0 one outside top-k 40 or the
    min-p 0.05 window (a fixed or foreign text the model would not produce);
  - the result text is not the text of one of its generations (work done, but another answer sent).
The tolerances come from the measured spread of honest nodes (benchmarks/verification.py).
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from node.wire.proof import Proof

# Measured (benchmarks/verification.py, README "Verification"): honest |claimed - re-scored|
# per position across 1/2 threads and 1/4 parallel sequences, with margin.
POSITION_TOLERANCE = 1.0
MEAN_TOLERANCE = 0.05
# The sampler chain's candidate window (models/sampling.py): top-k 40, min-p 0.05.
TOP_K = 40
MIN_P_GAP = -math.log(0.05)
# How much of the result text and a generation's text must agree.
TEXT_PREFIX_CHARS = 64


class Scores(Protocol):
    """Re-scored tokens: per chosen token its log-probability, the best token's, and its rank."""

    logprobs: list[float]
    best_logprobs: list[float]
    ranks: list[int]
    text: str


class Scorer(Protocol):
    """Re-scores tokens with one model file (blocking)."""

    def score(self, prompt_tokens: list[int], tokens: list[int]) -> Scores: ...


ScorerFor = Callable[[str], Scorer | None]  # the scorer for a model name, or None if this publisher lacks it


class VerificationError(Exception):
    """A result failed its check; str(e) says which rule it broke."""


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

    def check(self, proof: Proof | None, result_text: str, scorer: Scorer) -> Verdict:
        """The verdict for a result and its proof; VerificationError when it fails."""
        if proof is None:
            raise VerificationError("the result carries no proof")
        if not proof.steps:
            raise VerificationError("the proof has no generation to check")
        deviations: list[float] = []
        texts: list[str] = []
        for number, generation in enumerate(proof.steps):
            try:
                scores = scorer.score(generation.prompt_tokens, generation.tokens)
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
        if mean > self.mean_tolerance:
            raise VerificationError(
                f"claimed log-probabilities are {mean:.3f} nats above the model's on average "
                f"(over {len(deviations)} tokens): another model's tokens"
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


class ResultVerifier:
    """Which results the Client verifies (a share, at random) and how (a scorer per model name)."""

    def __init__(
        self, share: float, scorer_for: ScorerFor, checker: ProofChecker | None = None, rng: random.Random | None = None
    ) -> None:
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"verify share must be within 0..1, not {share}")
        self.share = share
        self._scorer_for = scorer_for
        self.checker = checker or ProofChecker()
        self._rng = rng or random.Random()

    def wants_proof(self) -> bool:
        """Whether the next task asks for a proof (and so gets verified)."""
        return self.share > 0.0 and self._rng.random() < self.share

    async def verify(self, model: str, proof: Proof | None, text: str) -> Verdict | None:
        """The verdict (None: no scorer for `model` here, so unverified); VerificationFailedError when it fails."""
        scorer = self._scorer_for(model)
        if scorer is None:
            return None
        try:
            return await asyncio.to_thread(self.checker.check, proof, text, scorer)
        except VerificationError as exc:
            raise VerificationFailedError(str(exc)) from None
