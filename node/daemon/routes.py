"""The streams of accepted direct-delivery tasks: their progress frames, then their results (protocol 0.4).

`node/daemon/direct.py` adds a route when it accepts a task that came on a stream; the
runner hands a streaming task's text deltas to `progress`, which queues them for the
route's writer (`_pump`); the outbox (`node/daemon/outbox.py`) writes the result
envelope there and closes the stream, or, when the stream is gone, publishes the result
on gossip.

Progress is best effort and never holds the result: deltas wait in a bounded buffer; a
stream too slow to take them (the buffer full) gets no more progress for that task (a
gap would break "the deltas are a prefix of the result"); when the result is ready, the
writer has `PROGRESS_FLUSH_S` to write what is queued, and is then stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import structlog

from node.p2p.errors import P2PError
from node.p2p.frame_stream import FrameStream
from node.wire.direct import Progress, encode_frame_body

log = structlog.get_logger(__name__)

ANSWER_WAIT_S = 5.0  # a result never overtakes its answer; past this the stream is given up
# Characters of progress text in one frame: JSON escapes at most 6 bytes per character,
# so a frame stays well under the 256 KiB frame limit.
FRAME_CHARS = 32 * 1024
MAX_QUEUED_CHARS = 256 * 1024  # progress waiting for a slow stream; past it, no more progress
PROGRESS_FLUSH_S = 2.0  # what the result waits for queued progress


@dataclass
class DirectRoute:
    """The stream an accepted task's progress and result go back on."""

    stream: FrameStream
    # The stream's peer did not sign the task: anyone may send an envelope it saw on gossip, before the
    # publisher's own copy arrives, so the result goes on gossip too and such a peer cannot keep it.
    forwarded: bool = False
    answered: asyncio.Event = field(default_factory=asyncio.Event)
    queued: list[str] = field(default_factory=list)
    queued_chars: int = 0
    progress_stopped: bool = False  # the stream fell behind or broke, or the result came
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    pump: asyncio.Task[None] | None = None


class DirectRoutes:
    """Streams waiting for their task's result, by task id."""

    def __init__(self) -> None:
        self._routes: dict[str, DirectRoute] = {}

    def __len__(self) -> int:
        return len(self._routes)

    def __contains__(self, task_id: str) -> bool:
        return task_id in self._routes

    def add(self, task_id: str, stream: FrameStream, forwarded: bool = False) -> DirectRoute:
        """Hold `stream` for the result of `task_id`."""
        route = self._routes[task_id] = DirectRoute(stream, forwarded=forwarded)
        return route

    def forwarded(self, task_id: str) -> bool:
        """Whether the task's stream is not its signer's: its result goes on gossip as well."""
        route = self._routes.get(task_id)
        return route is not None and route.forwarded

    def drop(self, task_id: str) -> None:
        """Forget a route (its stream is gone): the result goes to gossip."""
        route = self._routes.pop(task_id, None)
        if route is not None and route.pump is not None:
            route.pump.cancel()

    def progress(self, task_id: str, delta: str) -> None:
        """Queue more of the task's text for its stream; never blocks (dropped when the stream is behind)."""
        route = self._routes.get(task_id)
        if route is None or route.progress_stopped or not delta:
            return
        if route.queued_chars + len(delta) > MAX_QUEUED_CHARS:
            log.info("progress stopped: the stream is behind", task_id=task_id, queued_chars=route.queued_chars)
            route.progress_stopped = True
            route.queued.clear()
            route.queued_chars = 0
            return
        route.queued.append(delta)
        route.queued_chars += len(delta)
        route.wake.set()
        if route.pump is None:
            route.pump = asyncio.create_task(self._pump(task_id, route), name=f"progress-{task_id}")

    async def deliver(self, task_id: str, envelope: bytes) -> bool:
        """Write the result envelope on the task's stream and close it; False if there is none or it is gone."""
        route = self._routes.pop(task_id, None)
        if route is None:
            return False
        try:
            await asyncio.wait_for(route.answered.wait(), ANSWER_WAIT_S)
            await self._end_progress(task_id, route)
            await route.stream.send(envelope, last=True)  # closed with it: the publisher's next stream is welcome
            return True
        except (P2PError, TimeoutError) as exc:
            log.info("result stream gone; publishing on gossip", task_id=task_id, error=str(exc))
            return False
        finally:
            await route.stream.close()

    async def _end_progress(self, task_id: str, route: DirectRoute) -> None:
        """Let the writer write what is queued (within PROGRESS_FLUSH_S), then stop it."""
        pump = route.pump
        if pump is None:
            route.progress_stopped = True
            return
        route.wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(pump), PROGRESS_FLUSH_S)
        except TimeoutError:
            log.info("progress not flushed before the result", task_id=task_id, queued_chars=route.queued_chars)
        finally:
            route.progress_stopped = True
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump

    async def _pump(self, task_id: str, route: DirectRoute) -> None:
        """Write the route's queued progress as frames, in order, until the result comes or the stream breaks."""
        try:
            await asyncio.wait_for(route.answered.wait(), ANSWER_WAIT_S)
            while True:
                if not route.queued:
                    if task_id not in self._routes:  # the result is waiting: all is written
                        return
                    route.wake.clear()
                    await route.wake.wait()
                    continue
                text = "".join(route.queued)
                route.queued.clear()
                route.queued_chars = 0
                for start in range(0, len(text), FRAME_CHARS):
                    frame = Progress(task_id=task_id, delta=text[start : start + FRAME_CHARS])
                    await route.stream.send(encode_frame_body(frame))
        except (P2PError, TimeoutError) as exc:
            log.info("progress stopped: the stream is gone", task_id=task_id, error=str(exc))
            route.progress_stopped = True
