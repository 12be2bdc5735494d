"""The publisher's side of one direct delivery (protocol 0.4): a task sent on a stream to one node.

`deliver` dials the node at its heartbeat `addrs`, writes the sealed task and reads the
node's answer within `answer_timeout`. Anything but `accepted` raises `DeclinedError`
at once (busy, ignored, rejected, a broken stream), so the caller tries another node
without waiting. Silence is different: the node has the task and, slow under a burst,
may still take it; giving up on it then would run the task twice (once there, once on
the next node). So an answer late past `answer_timeout` is still awaited on the open
stream, bounded by the caller's attempt timeout: accepted goes on as usual, any other
answer (or the stream's end) sets `lost` with `declined` saying why. A stream not
opened within `answer_timeout` may also have carried the task: it goes on gossip
(UndialableError, `may_have_task`), which reaches the node either way and runs once. A node
that could not be dialled at all never saw it: the caller gives the task to another node. An accepted
delivery then reads the stream in the background: progress frames go to `on_delta`
(and are kept, to check the result against; more text than any result can carry breaks the stream),
the result envelope goes to `on_result` (the same verification as a gossip
result), and a stream that ends without a result sets `lost`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from enum import Enum

import structlog

from node.p2p.errors import P2PError, StreamRefusedError, StreamTimeoutError
from node.p2p.frame_stream import FrameStream
from node.p2p.host import P2PHost
from node.p2p.streams import TOO_MANY_FROM_PEER
from node.publisher.errors import TaskFailedError
from node.wire.direct import AnswerStatus, StreamAnswer, decode_answer, decode_progress, frame_kind
from node.wire.error_kinds import ErrorKind
from node.wire.inbound import Inbound, InboundError, decode
from node.wire.messages import MessageError
from node.wire.topics import MAX_FRAME_BYTES, RESULTS_TOPIC

log = structlog.get_logger(__name__)

OnDelta = Callable[[str], None]  # a piece of the final step's text, in order
# The result must extend the progress text, and its text travels hex-encrypted in one frame: no more
# than half a frame of UTF-8 bytes, so no more characters. Progress beyond it breaks the protocol.
MAX_PROGRESS_CHARS = MAX_FRAME_BYTES // 2


class DeclineKind(Enum):
    """Why a node did not take a task sent to it on a stream (`DeclinedError.kind`)."""

    BUSY = "busy"  # it answered busy: no task place now
    STREAMS_FULL = "streams full"  # it answered busy past its streams per publisher: it read nothing
    REFUSED = "refused"  # the stream was refused before the task's first byte: it read nothing
    IGNORED = "ignored"  # it answered ignored: not for it (model, picked, deadline, duplicate)
    REJECTED = "rejected"  # it answered rejected: invalid
    UNANSWERED = "unanswered"  # the stream closed without an answer
    BAD_ANSWER = "bad answer"  # an answer that breaks the protocol, or answers another task
    NOT_DIALABLE = "not dialable"  # no stream: the node could not be dialled (NotDialableError)

    @property
    def on_gossip(self) -> bool:
        """The node read nothing of the task and takes no more streams from us now (past its streams per peer,
        or a stream it reset on a live connection): it may be sent the task on gossip, where only its task
        places count."""
        return self in (DeclineKind.STREAMS_FULL, DeclineKind.REFUSED)

    @property
    def error_kind(self) -> ErrorKind:
        """The kind of the failure a decline becomes once no node took the task: BUSY when the node was."""
        busy = self in (DeclineKind.BUSY, DeclineKind.STREAMS_FULL, DeclineKind.REFUSED)
        return ErrorKind.BUSY if busy else ErrorKind.FAILED


class DeclinedError(Exception):
    """The node did not take the task (or could not be asked), for the reason `kind` names; another node may.
    `reason` says it in words (a busy node's starts `busy: `, as its error result would)."""

    def __init__(self, task_id: str, reason: str, kind: DeclineKind) -> None:
        super().__init__(f"task {task_id} declined: {reason}")
        self.task_id = task_id
        self.reason = reason
        self.kind = kind

    @property
    def on_gossip(self) -> bool:
        """See DeclineKind.on_gossip."""
        return self.kind.on_gossip

    def failure(self, node: str) -> TaskFailedError:
        """The failure this decline is once no other node takes the task (not a retry: nothing ran)."""
        return TaskFailedError(self.task_id, self.reason, node, self.kind.error_kind)


class UndialableError(Exception):
    """No stream to the node: it could not be dialled or does not speak the protocol
    (`may_have_task` False: it never saw the task), or its stream did not open in time
    (`may_have_task` True: it may have read the task all the same)."""

    def __init__(self, message: str, may_have_task: bool = False) -> None:
        super().__init__(message)
        self.may_have_task = may_have_task


class NotDialableError(DeclinedError):
    """A node could not be dialled for this task: another node gets it at once, and this one,
    if chosen again soon, gets its tasks on gossip (see TaskSender). `dialled` False: it was not dialled
    (another key's dial of its host:ports failed), so nothing was learnt of the node itself."""

    def __init__(self, task_id: str, reason: str, dialled: bool = True) -> None:
        super().__init__(task_id, reason, DeclineKind.NOT_DIALABLE)
        self.dialled = dialled


class DirectDelivery:
    """One task on one stream: its progress text so far and whether the stream was lost."""

    def __init__(self, task_id: str, stream: FrameStream, answered: bool = True, streamed: bool = True) -> None:
        self.task_id = task_id
        self.stream = stream
        self.answered = answered  # False: the node's answer had not come within answer_timeout
        self.streamed = streamed  # the task asked for progress frames (`"stream": true`)
        self.declined: DeclinedError | None = None  # a late answer that was not `accepted`
        self.deltas: list[str] = []
        self.progress_chars = 0  # in `deltas` (an empty one counted as one), at most MAX_PROGRESS_CHARS
        self.lost: asyncio.Event = asyncio.Event()  # the stream ended (or broke) before a result came
        self.last_progress: float | None = None  # the event loop's time of the latest progress frame
        self._reader: asyncio.Task[None] | None = None

    @property
    def progress_text(self) -> str:
        """The text streamed so far."""
        return "".join(self.deltas)

    def follow(self, on_result: Callable[[Inbound], None], on_delta: OnDelta | None) -> None:
        """Read the rest of the stream in the background."""
        self._reader = asyncio.create_task(self._read(on_result, on_delta))

    async def close(self) -> None:
        """Stop reading and close the stream."""
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        await self.stream.close()

    async def _read(self, on_result: Callable[[Inbound], None], on_delta: OnDelta | None) -> None:
        try:
            if not self.answered and not await self._late_answer():
                return
            while (frame := await self.stream.receive()) is not None:
                kind = frame_kind(frame)
                if kind == "progress":
                    progress = decode_progress(frame)
                    if progress.task_id != self.task_id:
                        raise MessageError("progress frame for another task")
                    # An empty delta costs as one character: no honest stream has more frames than characters.
                    self.progress_chars += max(len(progress.delta), 1)
                    if self.progress_chars > MAX_PROGRESS_CHARS:
                        raise MessageError(f"progress frames longer than any result ({MAX_PROGRESS_CHARS} characters)")
                    if progress.delta and self.streamed:
                        # Text the task asked for is news that the node works on it; an empty frame (no honest
                        # node sends one) or one on a task without "stream": true (PROTOCOL.md 8) is not, or a
                        # node could hold a task to its deadline and never be timed out.
                        self.last_progress = asyncio.get_running_loop().time()
                    if progress.delta:
                        self.deltas.append(progress.delta)
                        if on_delta is not None:
                            on_delta(progress.delta)
                elif kind == "envelope":
                    on_result(decode(RESULTS_TOPIC, frame))
                    return
                else:
                    raise MessageError("a second answer frame")
        except (MessageError, InboundError) as exc:
            log.warning("node broke the stream protocol", task_id=self.task_id, error=str(exc))
        except Exception:  # noqa: BLE001 - a failing observer must not hide the stream's end
            log.exception("reading a direct stream failed", task_id=self.task_id)
        finally:
            self.lost.set()  # after a result too: the caller has it by then
            await self.stream.close()

    async def _late_answer(self) -> bool:
        """Read the answer that came late; True when the node accepted the task."""
        frame = await self.stream.receive()
        if frame is None:
            self.declined = DeclinedError(self.task_id, "stream closed without an answer", DeclineKind.UNANSWERED)
            return False
        self.declined = _declined_by(frame, self.task_id)
        self.answered = self.declined is None
        return self.answered


def _declined_by(frame: bytes, task_id: str) -> DeclinedError | None:
    """How the answer frame does not accept `task_id` (None: accepted)."""
    try:
        answer = decode_answer(frame)
    except MessageError as exc:
        return DeclinedError(task_id, f"bad answer: {exc}", DeclineKind.BAD_ANSWER)
    if answer.status is not AnswerStatus.ACCEPTED:
        return DeclinedError(task_id, f"{answer.status.value}: {answer.reason}", _decline_kind(answer))
    if answer.task_id != task_id:
        return DeclinedError(task_id, "answer for another task", DeclineKind.BAD_ANSWER)
    return None


def _decline_kind(answer: StreamAnswer) -> DeclineKind:
    """The kind of an answer that is not `accepted`."""
    if answer.status is AnswerStatus.BUSY:
        return DeclineKind.STREAMS_FULL if answer.reason == TOO_MANY_FROM_PEER else DeclineKind.BUSY
    return DeclineKind.IGNORED if answer.status is AnswerStatus.IGNORED else DeclineKind.REJECTED


async def deliver(
    host: P2PHost, addrs: list[str], task_id: str, envelope: bytes, answer_timeout: float, streamed: bool = True
) -> DirectDelivery:
    """Send the sealed task to the node at `addrs`; return once it accepted.

    UndialableError: no stream could be opened, or not within `answer_timeout` (use gossip).
    DeclinedError: any answer but accepted, or a bad answer. No answer
    within `answer_timeout` on an open stream returns an unanswered delivery (see the module doc).
    """
    try:
        stream = await host.open_stream(addrs, envelope, timeout=answer_timeout)
    except StreamTimeoutError as exc:
        # Slow under a burst, the node may have read the task all the same: the same task on gossip
        # reaches it either way, and its journal runs a task id once (the copy is a duplicate).
        raise UndialableError(
            f"the stream did not open in time ({exc}); the node may have the task", may_have_task=True
        ) from None
    except StreamRefusedError as exc:  # before the task's first byte: it read nothing
        raise DeclinedError(task_id, ErrorKind.BUSY.prefix + f"stream refused ({exc})", DeclineKind.REFUSED) from None
    except P2PError as exc:
        raise UndialableError(str(exc)) from None
    try:
        frame = await stream.receive(timeout=answer_timeout)
    except TimeoutError:
        log.info("no answer yet; still waiting on the stream", task_id=task_id, after_s=answer_timeout)
        return DirectDelivery(task_id, stream, answered=False, streamed=streamed)
    except asyncio.CancelledError:
        await stream.close(graceful=False)  # the caller is gone: nobody reads this stream
        raise
    if frame is None:
        raise DeclinedError(task_id, "stream closed without an answer", DeclineKind.UNANSWERED)
    if (declined := _declined_by(frame, task_id)) is not None:
        await stream.close(graceful=declined.kind is not DeclineKind.BAD_ANSWER)
        raise declined
    return DirectDelivery(task_id, stream, streamed=streamed)
