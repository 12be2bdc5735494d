"""Direct delivery on the node (protocol 0.4): tasks that arrive on a stream.

`DirectIntake.on_stream` gets a stream's first frame from the P2P layer, checks it as
the gossip validator would (`decode`: envelope and body), hands it to the same
`TaskIntake.take` (so a task id runs at most once, whichever way it arrives) and
answers at once: accepted, busy, ignored or rejected. An accepted task's stream waits
in `DirectRoutes` for its result; the outbox writes the result envelope there and
closes it, or publishes it on gossip when the stream is gone.

The first frame's checks run off the event loop, in `FrameChecks`' worker thread
(node/daemon/frame_checks.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

from node.daemon.frame_checks import FrameChecks
from node.daemon.intake import TaskIntake
from node.daemon.routes import DirectRoutes
from node.p2p.errors import P2PError
from node.p2p.frame_stream import FrameStream
from node.wire.direct import AnswerStatus, StreamAnswer, encode_frame_body
from node.wire.identity import IdentityError, peer_id_of_public_key
from node.wire.inbound import InboundError, LogWindow
from node.wire.messages import TaskBody
from node.wire.topics import TASK_TOPIC

log = structlog.get_logger(__name__)

FAILURE_LOG_WINDOW_S = 10.0


class DirectIntake:
    """Answers each task that arrives on a stream, and routes its result back."""

    def __init__(
        self,
        intake: TaskIntake,
        routes: DirectRoutes,
        on_reject: Callable[[str, str], None] | None = None,
        log_window_s: float = FAILURE_LOG_WINDOW_S,
        on_valid: Callable[[], None] | None = None,
    ) -> None:
        self._intake = intake
        self._routes = routes
        self._on_reject = on_reject
        self._on_valid = on_valid
        self._answering: set[asyncio.Task[None]] = set()
        self._checks = FrameChecks()
        self._failures = LogWindow(FAILURE_LOG_WINDOW_S)  # a frame that makes a check fail may come again and again
        self._rejections = LogWindow(log_window_s)  # streams are cheap: one line per reason a window, as gossip's
        # An answer a peer resets its stream before: free for it (no task runs), so one line per status a window.
        self._undelivered = LogWindow(log_window_s)

    def on_stream(self, stream: FrameStream, first: bytes) -> None:
        """The P2P layer's inbound-stream callback (on the event loop): answer in a task of its own."""
        task = asyncio.create_task(self._serve(stream, first, time.time_ns()))
        self._answering.add(task)
        task.add_done_callback(self._answering.discard)

    async def close(self) -> None:
        """Cancel the answers in flight and close the checks."""
        for task in self._answering:
            task.cancel()
        await asyncio.gather(*self._answering, return_exceptions=True)
        self._checks.close()

    async def _serve(self, stream: FrameStream, first: bytes, arrived_ns: int) -> None:
        try:
            inbound = await self._checks.task(first, arrived_ns)
        except InboundError as exc:
            if self._on_reject is not None:
                self._on_reject(TASK_TOPIC, exc.reason)
            if (not_logged := self._rejections.may_log(exc.reason)) is not None:
                log.info(
                    "direct task rejected",
                    peer=stream.peer_id,
                    reason=exc.reason,
                    detail=str(exc)[:300],
                    not_logged_since=not_logged,
                )
            await self._answer(
                stream, StreamAnswer(task_id="", status=AnswerStatus.REJECTED, reason=exc.reason), last=True
            )
            return
        except Exception:  # noqa: BLE001 - a check that fails otherwise still answers and frees its stream
            if self._on_reject is not None:
                self._on_reject(TASK_TOPIC, "internal")
            if (not_logged := self._failures.may_log("checks")) is not None:
                log.exception("direct task checks failed", peer=stream.peer_id, not_logged_since=not_logged)
            await self._answer(
                stream, StreamAnswer(task_id="", status=AnswerStatus.REJECTED, reason="internal"), last=True
            )
            return
        if self._on_valid is not None:
            self._on_valid()
        task = inbound.body
        assert isinstance(task, TaskBody)
        try:
            outcome = self._intake.take(inbound, direct=True)
        except Exception:  # noqa: BLE001 - one task must never cost the stream handler
            log.exception("direct task intake failed", task_id=task.task_id)
            await self._answer(
                stream, StreamAnswer(task_id=task.task_id, status=AnswerStatus.IGNORED, reason="internal"), last=True
            )
            return
        answer = StreamAnswer(task_id=task.task_id, status=outcome.status, reason=outcome.reason)
        if answer.status is not AnswerStatus.ACCEPTED:
            await self._answer(stream, answer, last=True)
            return
        # Routed before the answer is written (nothing ran yet: take() only scheduled the task),
        # so the result cannot miss its stream; the outbox waits for `answered` before writing.
        route = self._routes.add(task.task_id, stream, forwarded=not _from_signer(stream, inbound.signed.sender_key))
        if await self._answer(stream, answer):
            route.answered.set()
        else:
            self._routes.drop(task.task_id)
            await stream.close(graceful=False)

    async def _answer(self, stream: FrameStream, answer: StreamAnswer, last: bool = False) -> bool:
        """Write the answer (`last`: a refusal, the stream closed with it, or after it failed); False if it could not be."""
        try:
            await stream.send(encode_frame_body(answer), last)
            return True
        except P2PError as exc:
            if (not_logged := self._undelivered.may_log(answer.status)) is not None:
                log.info(
                    "direct answer not delivered",
                    task_id=answer.task_id,
                    status=answer.status.value,
                    error=str(exc),
                    not_logged_since=not_logged,
                )
            if last:
                await stream.close()
            return False


def _from_signer(stream: FrameStream, sender_key: bytes) -> bool:
    """Whether the stream's peer is the task's signer (a publisher's peer id is the key it signs with)."""
    try:
        return peer_id_of_public_key(sender_key) == stream.peer_id
    except IdentityError:
        return False
