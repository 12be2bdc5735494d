"""One attempt of a `Client.execute` call: a task id sent to one node, and what its news means.

`next_outcome` waits for the first news of any live attempt (a result, or its way to the node lost);
`checked` reads a result as the caller may have it; `id_taken` tells a node that ran another key's
task under our id from one that lies about it. The loop over attempts is attempts.py's.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from node.publisher.direct import DirectDelivery
from node.publisher.errors import TaskFailedError, TaskIdTakenError
from node.publisher.tasks import TaskResult
from node.wire.error_kinds import ErrorKind


@dataclass
class Attempt:
    """One task id sent to one node, waiting for its result (a retry is a new attempt)."""

    task_id: str
    node: str
    result: asyncio.Future[Any]
    direct: DirectDelivery | None = None
    peer_id: str = ""  # its node's libp2p peer id (from its signed heartbeat), for a task sent on gossip
    lost_seen: bool = False  # its stream's loss (or its node's going) was acted on (a retry sent)
    models: tuple[str, ...] = ()  # the task's models, as its node's reservation counted them (NodeTable.reserve)
    # Sent on gossip: set when its node, which this publisher was connected to, lost its last connection to it
    # (PeerWatch.gone): the node was killed or cut off, as a direct attempt's stream ends then.
    node_gone: asyncio.Event = field(default_factory=asyncio.Event)
    ended: bool = False  # TaskSender.end ran: nothing watches it any more

    @property
    def lost(self) -> asyncio.Event:
        """Set when the way to its node is gone without a result: its stream ended, or (on gossip) its connection."""
        return self.direct.lost if self.direct is not None else self.node_gone


async def next_outcome(live: list[Attempt], timeout: float) -> tuple[Attempt | None, str]:
    """The first attempt with news within `timeout` s: ("result", its future is done) or
    ("lost", its stream ended, or its gossip node's connection closed, without a result; it still waits for
    gossip). (None, "") on timeout."""
    for attempt in live:
        if attempt.result.done():
            return attempt, "result"
    watchers: dict[asyncio.Future[Any], tuple[Attempt, str]] = {a.result: (a, "result") for a in live}
    for attempt in live:
        if not attempt.lost_seen:
            watchers[asyncio.ensure_future(attempt.lost.wait())] = (attempt, "lost")
    try:
        done, _ = await asyncio.wait(watchers, timeout=max(timeout, 0), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for future, (_, kind) in watchers.items():
            if kind == "lost":
                future.cancel()
    results = [watchers[f] for f in done if watchers[f][1] == "result"]
    if results:
        return results[0]
    for future in done:
        attempt, kind = watchers[future]
        if attempt.result.done():  # a result on the stream is handed over before its end is signalled
            return attempt, "result"
        attempt.lost_seen = True
        return attempt, kind
    return None, ""


def id_taken(attempt: Attempt) -> bool:
    """Its node says it ran another key's task under our id, and may have: sent on gossip, or on a stream the
    node had not answered (an honest node answers a duplicate `ignored` there; one that took our task and then
    says so lies, and its TaskIdTakenError is an error result like any other)."""
    if attempt.result.cancelled() or not isinstance(attempt.result.exception(), TaskIdTakenError):
        return False
    return attempt.direct is None or not attempt.direct.answered


def checked(attempt: Attempt) -> TaskResult:
    """The attempt's result (TaskFailedError as it came); it must extend the text its node streamed. A node that
    accepted the task on its stream, then says it ran another key's under its id (`id_taken` is False), lies:
    its error is an ordinary one, not TaskIdTakenError, which tells a caller a retry may go at once."""
    if not attempt.result.cancelled() and isinstance(taken := attempt.result.exception(), TaskIdTakenError):
        said = f"it accepted the task, then said {taken.reason}"
        raise TaskFailedError(attempt.task_id, said, attempt.node, ErrorKind.FAILED)
    result: TaskResult = attempt.result.result()
    streamed = attempt.direct.progress_text if attempt.direct is not None else ""
    if streamed and result.ciphertext is None and not result.text.startswith(streamed):
        mismatch = "result does not match the text its node streamed"
        raise TaskFailedError(attempt.task_id, mismatch, attempt.node, ErrorKind.FAILED)
    return result
