"""Result bodies: success (the text encrypted to the publisher) or error."""

from __future__ import annotations

from node.wire.ecies import encrypt
from node.wire.messages import ResultBody, Stats


def success_body(task_id: str, model: str, plaintext: str, public_key: str, stats: Stats) -> ResultBody:
    """A success result: the text encrypted to the publisher's key."""
    ciphertext = encrypt(public_key, plaintext.encode("utf-8")).hex()
    return ResultBody(task_id=task_id, ciphertext=ciphertext, model=model, stats=stats)


def error_body(task_id: str, model: str, reason: str, stats: Stats) -> ResultBody:
    """An error result: the task was accepted but could not be completed."""
    return ResultBody(task_id=task_id, error=reason, model=model, stats=stats)
