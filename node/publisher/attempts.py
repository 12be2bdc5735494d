"""The attempts of one `Client.execute`: each task id sent to one node, and waiting for the first news of any.

A retry is a new attempt with a new task id; earlier attempts stay live, so a late result
from a slow node is still taken (once: the Client accepts one result per call).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from node.publisher.direct import DirectDelivery


@dataclass
class Attempt:
    """One task id sent to one node, waiting for its result (a retry is a new attempt)."""

    task_id: str
    node: str
    result: asyncio.Future[Any]
    direct: DirectDelivery | None = None
    lost_seen: bool = False  # its stream's loss was acted on (a retry sent)


async def next_outcome(live: list[Attempt], timeout: float) -> tuple[Attempt | None, str]:
    """The first attempt with news within `timeout` s: ("result", its future is done) or
    ("lost", its stream ended without a result; it still waits for gossip). (None, "") on timeout."""
    for attempt in live:
        if attempt.result.done():
            return attempt, "result"
    watchers: dict[asyncio.Future[Any], tuple[Attempt, str]] = {a.result: (a, "result") for a in live}
    for attempt in live:
        if attempt.direct is not None and not attempt.lost_seen:
            watchers[asyncio.ensure_future(attempt.direct.lost.wait())] = (attempt, "lost")
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
