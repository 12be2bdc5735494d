"""The publisher's side of one direct delivery (protocol 0.4): a task sent on a stream to one node.

`deliver` dials the node at its heartbeat `addrs`, writes the sealed task and reads the
node's answer within `answer_timeout`. Anything but `accepted` raises `DeclinedError`
at once (busy, ignored, rejected, a broken stream, silence), so the caller tries
another node without waiting. An accepted delivery then reads the stream in the
background: progress frames go to `on_delta` (and are kept, to check the result
against), the result envelope goes to `on_result` (the same verification as a gossip
result), and a stream that ends without a result sets `lost`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from node.p2p.frame_stream import FrameStream
from node.p2p.host import P2PError, P2PHost, StreamTimeoutError
from node.wire.direct import AnswerStatus, decode_answer, decode_progress, frame_kind
from node.wire.inbound import Inbound, InboundError, decode
from node.wire.messages import MessageError
from node.wire.topics import RESULTS_TOPIC

log = structlog.get_logger(__name__)

OnDelta = Callable[[str], None]  # a piece of the final step's text, in order


class DeclinedError(Exception):
    """The node did not take the task (or could not be asked); another node may."""

    def __init__(self, task_id: str, reason: str) -> None:
        super().__init__(f"task {task_id} declined: {reason}")
        self.task_id = task_id
        self.reason = reason


class UndialableError(Exception):
    """The node could not be dialled or does not speak the protocol: use gossip for it."""


class DirectDelivery:
    """One task on one stream: its progress text so far and whether the stream was lost."""

    def __init__(self, task_id: str, stream: FrameStream) -> None:
        self.task_id = task_id
        self.stream = stream
        self.deltas: list[str] = []
        self.lost: asyncio.Event = asyncio.Event()  # the stream ended (or broke) before a result came
        self._reader: asyncio.Task[None] | None = None

    @property
    def progress_text(self) -> str:
        return "".join(self.deltas)

    def follow(self, on_result: Callable[[Inbound], None], on_delta: OnDelta | None) -> None:
        """Read the rest of the stream in the background."""
        self._reader = asyncio.create_task(self._read(on_result, on_delta))

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        await self.stream.close()

    async def _read(self, on_result: Callable[[Inbound], None], on_delta: OnDelta | None) -> None:
        try:
            while (frame := await self.stream.receive()) is not None:
                kind = frame_kind(frame)
                if kind == "progress":
                    progress = decode_progress(frame)
                    if progress.task_id != self.task_id:
                        raise MessageError("progress frame for another task")
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


async def deliver(
    host: P2PHost, addrs: list[str], task_id: str, envelope: bytes, answer_timeout: float
) -> DirectDelivery:
    """Send the sealed task to the node at `addrs`; return once it accepted.

    UndialableError: no stream could be opened (use gossip). DeclinedError: any answer
    but accepted, a bad or missing answer within `answer_timeout` (opening included).
    """
    try:
        stream = await host.open_stream(addrs, envelope, timeout=answer_timeout)
    except StreamTimeoutError:  # slow, not unreachable: another node rather than gossip to this one
        raise DeclinedError(task_id, f"no answer within {answer_timeout:g} s") from None
    except P2PError as exc:
        raise UndialableError(str(exc)) from None
    try:
        frame = await stream.receive(timeout=answer_timeout)
    except TimeoutError:
        await stream.close(graceful=False)
        raise DeclinedError(task_id, f"no answer within {answer_timeout:g} s") from None
    if frame is None:
        raise DeclinedError(task_id, "stream closed without an answer")
    try:
        answer = decode_answer(frame)
    except MessageError as exc:
        await stream.close(graceful=False)
        raise DeclinedError(task_id, f"bad answer: {exc}") from None
    if answer.status is not AnswerStatus.ACCEPTED:
        await stream.close()
        raise DeclinedError(task_id, f"{answer.status.value}: {answer.reason}")
    if answer.task_id != task_id:
        await stream.close(graceful=False)
        raise DeclinedError(task_id, "answer for another task")
    return DirectDelivery(task_id, stream)
