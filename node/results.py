"""Result bodies (PROTOCOL.md section 5) and their signed publication on `results`."""

from __future__ import annotations

import time

from node.ecies import encrypt
from node.envelope import seal
from node.identity import Identity
from node.inbound import RESULTS_TOPIC
from node.messages import ResultBody, Stats, encode_body
from node.p2p import P2PHost


def success_body(task_id: str, model: str, plaintext: str, public_key: str, stats: Stats) -> ResultBody:
    """A success result: the text encrypted to the publisher's key."""
    ciphertext = encrypt(public_key, plaintext.encode("utf-8")).hex()
    return ResultBody(task_id=task_id, ciphertext=ciphertext, model=model, stats=stats)


def error_body(task_id: str, model: str, reason: str, stats: Stats) -> ResultBody:
    """An error result: the task was taken but could not be completed."""
    return ResultBody(task_id=task_id, error=reason, model=model, stats=stats)


class ResultPublisher:
    """Stamps `publishedAt`, signs, and publishes result bodies."""

    def __init__(self, identity: Identity, host: P2PHost) -> None:
        self._identity = identity
        self._host = host

    async def publish(self, body: ResultBody) -> ResultBody:
        """Publish the result now; returns the body as sent (with publishedAt)."""
        stats = body.stats.model_copy(update={"published_at": max(time.time_ns(), body.stats.execution_ended_at)})
        sent = body.model_copy(update={"stats": stats})
        await self._host.publish(RESULTS_TOPIC, seal(self._identity, RESULTS_TOPIC, encode_body(sent)))
        return sent
