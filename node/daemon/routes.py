"""The streams of accepted direct-delivery tasks, waiting for their results (protocol 0.4).

`node/daemon/direct.py` adds a route when it accepts a task that came on a stream; the
outbox (`node/daemon/outbox.py`) writes the result envelope there and closes the stream,
or, when the stream is gone, publishes the result on gossip.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import structlog

from node.p2p.frame_stream import FrameStream
from node.p2p.host import P2PError

log = structlog.get_logger(__name__)

ANSWER_WAIT_S = 5.0  # a result never overtakes its answer; past this the stream is given up


@dataclass
class DirectRoute:
    """The stream an accepted task's result goes back on."""

    stream: FrameStream
    answered: asyncio.Event = field(default_factory=asyncio.Event)


class DirectRoutes:
    """Streams waiting for their task's result, by task id."""

    def __init__(self) -> None:
        self._routes: dict[str, DirectRoute] = {}

    def __len__(self) -> int:
        return len(self._routes)

    def __contains__(self, task_id: str) -> bool:
        return task_id in self._routes

    def add(self, task_id: str, stream: FrameStream) -> DirectRoute:
        route = self._routes[task_id] = DirectRoute(stream)
        return route

    def drop(self, task_id: str) -> None:
        """Forget a route (its stream is gone): the result goes to gossip."""
        self._routes.pop(task_id, None)

    async def deliver(self, task_id: str, envelope: bytes) -> bool:
        """Write the result envelope on the task's stream and close it; False if there is none or it is gone."""
        route = self._routes.pop(task_id, None)
        if route is None:
            return False
        try:
            await asyncio.wait_for(route.answered.wait(), ANSWER_WAIT_S)
            await route.stream.send(envelope)
            return True
        except (P2PError, TimeoutError) as exc:
            log.info("result stream gone; publishing on gossip", task_id=task_id, error=str(exc))
            return False
        finally:
            await route.stream.close()
