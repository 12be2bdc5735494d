"""Result bodies: a success (the text encrypted to the publisher) or an error, with the task's timings.

`result_body` is the one place a result and its `Stats` are assembled; `as_error`
puts an error in place of a result that cannot be sent as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import TypeAdapter, ValidationError

from node.wire.ecies import encrypt
from node.wire.messages import ResultBody, Stats
from node.wire.proof import Proof, seal_proof
from node.wire.topics import MAX_FRAME_BYTES
from node.wire.wire_time import INT64_MAX

# Room in a result frame for everything but the two ciphertexts (envelope, signature, stats, names).
_FRAME_OVERHEAD = 16 * 1024
# The stat naming the address that signed the task a result answers (an extra field, as PROTOCOL.md section 5
# allows in `stats`; older nodes omit it). A task id is not owned: a peer that saw one on gossip can send a
# task of its own under it (with the publisher's public key) to the picked node first; the node runs that
# one and ignores the publisher's as a duplicate. This names whose task ran, so the publisher can refuse it.
PUBLISHER_STAT = "publisher"
# The stat saying why the generation that is the result's text ended (an extra field too; older nodes omit it, and
# so does a node whose result is not one generation's text): "length" when it was cut at the node's max_tokens,
# which may be lower than the task asked (the node's cap), so a publisher cannot tell it from the token count.
FINISH_STAT = "finishReason"
FinishReason = Literal["stop", "length"]
_FINISH_REASON: TypeAdapter[FinishReason] = TypeAdapter(FinishReason)


def result_publisher(body: ResultBody) -> str | None:
    """The address that signed the task `body` answers, when the node said (lowercase hex, no 0x)."""
    named = (body.stats.model_extra or {}).get(PUBLISHER_STAT)
    return named.lower().removeprefix("0x") if isinstance(named, str) else None


def answers_another_publisher(body: ResultBody, address: str) -> bool:
    """Whether the node says `body` answers a task some other key than `address` signed (see PUBLISHER_STAT)."""
    signer = result_publisher(body)
    return signer is not None and signer != address.lower().removeprefix("0x")


def result_finish_reason(stats: Stats) -> FinishReason | None:
    """Why the result's generation ended, when its node said so in a value this node knows (see FINISH_STAT)."""
    try:
        return _FINISH_REASON.validate_python((stats.model_extra or {}).get(FINISH_STAT), strict=True)
    except ValidationError:
        return None


@dataclass(frozen=True)
class Output:
    """What a finished workflow produced: its text (encrypted to `public_key` in the result), token counts and
    why its generation ended."""

    text: str
    public_key: str
    prompt_tokens: int
    completion_tokens: int
    proof: Proof | None = None  # the task asked for one
    finish_reason: FinishReason | None = None  # why the generation that is `text` ended (FINISH_STAT)


def result_body(
    task_id: str,
    model: str,
    outcome: Output | str,
    *,
    received_at_ns: int,
    started_at_ns: int,
    ended_at_ns: int,
    publisher: str | None = None,
) -> ResultBody:
    """The result of a task: `outcome` is its output, or the error text when it could not be completed.

    `published_at` starts as `ended_at_ns`; the outbox stamps it again when it publishes. `publisher`,
    the address that signed the task, goes in `stats` (PUBLISHER_STAT).
    """
    timings: dict[str, int | str] = {
        "received_at": received_at_ns,
        "execution_started_at": started_at_ns,
        "execution_ended_at": ended_at_ns,
        "published_at": ended_at_ns,
    }
    if publisher is not None:
        timings[PUBLISHER_STAT] = publisher.lower().removeprefix("0x")
    if isinstance(outcome, str):
        return ResultBody(task_id=task_id, error=outcome, model=model, stats=Stats.model_validate(timings))
    # A remote engine may report any count: the wire's int64 fields must still hold it.
    extra: dict[str, int | str] = {
        "promptTokens": clamp_count(outcome.prompt_tokens),
        "completionTokens": clamp_count(outcome.completion_tokens),
    }
    if outcome.finish_reason is not None:
        extra[FINISH_STAT] = outcome.finish_reason
    stats = Stats.model_validate({**timings, **extra})  # token counts and the finish reason travel as extra fields
    # A lone surrogate (from an engine's JSON escape) is not UTF-8: it becomes "?", not a lost result.
    ciphertext = encrypt(outcome.public_key, outcome.text.encode("utf-8", errors="replace")).hex()
    proof = None
    if outcome.proof is not None:
        # The envelope carries the body as JSON text: the proof gets what the result text leaves.
        budget = MAX_FRAME_BYTES - _FRAME_OVERHEAD - len(ciphertext)
        proof = seal_proof(outcome.proof, outcome.public_key, budget)
    return ResultBody(task_id=task_id, ciphertext=ciphertext, model=model, stats=stats, proof=proof)


def clamp_count(value: int) -> int:
    """A token count as the wire's stats can carry it: within 0..int64."""
    return min(max(int(value), 0), INT64_MAX)


def as_error(body: ResultBody, reason: str) -> ResultBody:
    """An error result for the same task, model and timings as `body`, in its place.

    The model name is cut to 256 characters: the error must fit where the result did not.
    """
    return ResultBody(task_id=body.task_id, error=reason, model=body.model[:256], stats=body.stats)
