"""The shapes of node reputation: its settings, one node's stored record, the decayed sums a
weight is computed from, and the view shown to people (reputation.py holds the table)."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, Field

DECAYED = (
    "answered", "errors", "timeouts", "busy", "tokens", "result_seconds", "exec_seconds",
    "scored", "scored_tokens", "score_seconds",
)  # fmt: skip


class ReputationSettings(BaseModel):
    """How measurements turn into weights."""

    half_life_s: float = Field(default=3600.0, gt=0, description="Seconds for a measurement to count half")
    prior_successes: float = Field(default=1.0, gt=0, description="Beta prior a: pseudo-answers of an unseen node")
    prior_failures: float = Field(default=1.0, gt=0, description="Beta prior b: pseudo-failures of an unseen node")
    busy_weight: float = Field(default=0.5, ge=0, description="A decline counts as this much of a failure")
    prior_tps: float = Field(
        default=10.0, gt=0, description="Speed assumed of an unmeasured node before any node is measured (tokens/s)"
    )
    prior_seconds: float = Field(default=5.0, gt=0, description="How many seconds of service the prior speed weighs")
    claim_tolerance: float = Field(
        default=10.0, ge=1, description="Claimed tps may exceed measured tps this much (stats include prompt time)"
    )
    min_penalty: float = Field(default=0.02, gt=0, le=1, description="Floor of the claim penalty factor")
    min_exec_seconds: float = Field(
        default=0.5, gt=0, description="Execution seconds measured before a claim is judged"
    )
    verify_ban_seconds: float = Field(default=7 * 86400.0, ge=0, description="A failed verification bans this long")
    max_rows: int = Field(default=10_000, ge=1, description="Nodes remembered at most")
    explore_share: float = Field(
        default=0.1,
        ge=0,
        lt=1,
        description="Share of node choice that nodes not yet measured serving may hold together, while one that was has room",
    )
    min_explore_share: float = Field(
        default=0.01,
        ge=0,
        lt=1,
        description="The least that share falls to while such nodes fail the tasks they are tried with",
    )


class NodeRecord(BaseModel):
    """The decayed measurements of one node (sums as of `updated_at`)."""

    address: str
    answered: float = 0.0
    errors: float = 0.0
    timeouts: float = 0.0
    busy: float = 0.0
    tokens: float = 0.0  # completion tokens of its results (at most their size in bytes)
    result_seconds: float = 0.0  # time to result on our clock, summed over answered tasks
    exec_seconds: float = 0.0  # execution time its stats report, summed (at most the time to result)
    scored: float = 0.0  # answered score tasks, kept out of the speed sums above
    scored_tokens: float = 0.0
    score_seconds: float = 0.0  # their time to result on our clock
    claimed_tps: float = 0.0  # the last claim seen for a result's model
    peak: int = 0  # the most of our tasks it answered while that many were in flight at once
    verify_passed: int = 0
    verify_failed: int = 0
    banned_until: float = 0.0
    updated_at: float = 0.0


@dataclass(frozen=True, slots=True)
class Sums:
    """A record's decayed sums at one moment (cheap to make: node choice makes one per candidate)."""

    answered: float = 0.0
    errors: float = 0.0
    timeouts: float = 0.0
    busy: float = 0.0
    tokens: float = 0.0
    result_seconds: float = 0.0
    exec_seconds: float = 0.0
    scored: float = 0.0
    scored_tokens: float = 0.0
    score_seconds: float = 0.0


NOTHING_MEASURED = Sums()


class ReputationView(BaseModel):
    """One node's reputation as shown to people (CLI, gateway)."""

    address: str
    answered: float
    errors: float
    timeouts: float
    busy: float
    mean_result_s: float | None = Field(description="Mean time to result (s) of generating tasks")
    measured_tps: float | None = Field(description="Completion tokens per second of execution, from its stats")
    scored: float = Field(default=0.0, description="Answered score tasks (counted for success, not speed)")
    scoring_tps: float | None = Field(default=None, description="Tokens scored per second of time to result")
    service_tps: float = Field(description="Speed estimate used for choice (prior included)")
    claimed_tps: float
    success: float = Field(description="Beta posterior mean of answering")
    penalty: float = Field(description="Factor for claiming more than measured (1: none)")
    peak: int
    verify_passed: int
    verify_failed: int
    banned_until: float | None
    score: float = Field(description="success x speed x penalty (the weight before capacity; 0 while banned)")
