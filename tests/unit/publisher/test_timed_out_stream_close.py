"""A direct attempt timed out (its node silent for the attempt timeout) is ended once: one mark (the timeout) and
one retry. Its stream's later end, with or without a late answer, neither marks its node again nor starts
another attempt; a result that still comes for it on gossip is taken, as before. Real libp2p peers on
127.0.0.1 (tests/support/streaming_peer.py), chosen in a known order: `stalling`, then `working`, then `spare`."""

from __future__ import annotations

import asyncio
import time

import pytest
import structlog

from node.p2p.frame_stream import FrameStream
from node.publisher.client import Task, TaskFailedError
from node.publisher.node_table import NodeTable
from node.publisher.reputation_records import ReputationView
from node.wire.direct import AnswerStatus, Progress, StreamAnswer, encode_frame_body
from node.wire.envelope import seal
from node.wire.inbound import decode
from node.wire.messages import TaskBody, encode_body
from node.wire.results import Output, result_body
from node.wire.topics import RESULTS_TOPIC, TASK_TOPIC
from tests.support.gossip_nodes import Prefer
from tests.support.streaming_peer import StreamingPeer, client_of_many

ATTEMPT_TIMEOUT = 2.0
CLOSES_AFTER = ATTEMPT_TIMEOUT + 0.5  # the stalling node's stream ends this long after it got the task
WORKING_GAP = 1.3  # the working node's result comes this long after it took the task (within its attempt timeout)


class StallingPeer(StreamingPeer):
    """Takes a task on a stream (`answer`: its answer at once; None: no answer), says nothing more for
    CLOSES_AFTER s, then closes the stream; `gossip_result`: then publishes a result of that text on gossip,
    as a node whose result stream is gone does (node/daemon/routes.py)."""

    def __init__(self, answer: AnswerStatus | None, late_answer: AnswerStatus | None = None, gossip_result: str = ""):
        super().__init__([], "")
        self.answer, self.late_answer, self.gossip_result = answer, late_answer, gossip_result

    async def _serve(self, stream: FrameStream, first: bytes) -> None:
        body = decode(TASK_TOPIC, first).body
        assert isinstance(body, TaskBody)
        self.task_ids.append(body.task_id)
        if self.answer is not None:
            await stream.send(encode_frame_body(StreamAnswer(task_id=body.task_id, status=self.answer)))
        await asyncio.sleep(CLOSES_AFTER)
        if self.late_answer is not None:
            answer = StreamAnswer(task_id=body.task_id, status=self.late_answer, reason="no_capacity")
            await stream.send(encode_frame_body(answer))
        await stream.close()
        if self.gossip_result:
            await asyncio.sleep(0.2)
            now = time.time_ns()
            output = Output(self.gossip_result, body.public_key, 1, 1)
            result = result_body(body.task_id, "m", output, received_at_ns=now, started_at_ns=now, ended_at_ns=now)
            await self.host.publish(RESULTS_TOPIC, seal(self.identity, RESULTS_TOPIC, encode_body(result)))


async def run_task(stalling: StallingPeer) -> tuple[str, list[dict[str, object]], StreamingPeer, ReputationView]:
    """A task on `stalling`, then (after its timeout) on `working`; `spare` would be the third node tried.
    The result's text, the logs, `spare` and the stalling node's reputation view."""
    working = StreamingPeer(["working"], "working: done", gap=WORKING_GAP)
    spare = StreamingPeer([], "spare: done")
    order = [peer.identity.address for peer in (stalling, working, spare)]
    settings = {"max_retries": 2, "attempt_timeout": ATTEMPT_TIMEOUT, "node_table": NodeTable(rng=Prefer(order))}
    async with client_of_many([stalling, working, spare], answer_timeout=0.5, **settings) as client:
        with structlog.testing.capture_logs() as logs:
            result = await client.execute(Task(workflow={}, models=["m"]), timeout=30)
        await asyncio.sleep(CLOSES_AFTER - ATTEMPT_TIMEOUT)  # the stalling stream's end, if not heard yet
        view = client.reputation.view(stalling.identity.address)
    return result.text, logs, spare, view


def retries(logs: list[dict[str, object]]) -> list[object]:
    return [entry["reason"] for entry in logs if entry["event"] == "retrying on another node"]


@pytest.mark.parametrize(
    ("answer", "late_answer"),
    [
        (AnswerStatus.ACCEPTED, None),  # accepted, then its stream closed without a result
        (None, None),  # no answer within answer_timeout, then its stream closed without one
        (None, AnswerStatus.BUSY),  # no answer within answer_timeout, then a late decline
    ],
    ids=["accepted-then-closed", "unanswered-then-closed", "unanswered-then-declined"],
)
async def test_a_timed_out_attempts_late_stream_end_neither_marks_its_node_again_nor_retries(
    answer: AnswerStatus | None, late_answer: AnswerStatus | None
) -> None:
    stalling = StallingPeer(answer, late_answer)
    text, logs, spare, view = await run_task(stalling)
    assert text == "working: done"
    assert spare.task_ids == []  # no second retry
    assert retries(logs) == ["no result yet"]  # the timeout's, once
    assert (view.timeouts, view.errors, view.busy) == pytest.approx((1, 0, 0), abs=0.01)


async def test_a_result_that_still_comes_on_gossip_after_the_late_stream_end_is_taken() -> None:
    # As before: the timed-out attempt stays live after its stream's end (the node sends its result on gossip).
    stalling = StallingPeer(AnswerStatus.ACCEPTED, gossip_result="stalling: done at last")
    text, logs, spare, view = await run_task(stalling)
    assert text == "stalling: done at last"
    assert spare.task_ids == [] and retries(logs) == ["no result yet"]
    assert (view.timeouts, view.errors, view.answered) == pytest.approx((1, 0, 1), abs=0.01)


class LateSpeaker(StallingPeer):
    """Takes a task, is timed out, then streams text (from then on the call's speaker) and loses its stream."""

    def __init__(self) -> None:
        super().__init__(AnswerStatus.ACCEPTED)

    async def _serve(self, stream: FrameStream, first: bytes) -> None:
        body = decode(TASK_TOPIC, first).body
        assert isinstance(body, TaskBody)
        self.task_ids.append(body.task_id)
        await stream.send(encode_frame_body(StreamAnswer(task_id=body.task_id, status=AnswerStatus.ACCEPTED)))
        await asyncio.sleep(CLOSES_AFTER)
        await stream.send(encode_frame_body(Progress(task_id=body.task_id, delta="late text")))
        await asyncio.sleep(0.3)
        await stream.close()


async def test_a_timed_out_speakers_stream_end_fails_the_call_at_once() -> None:
    # Its text went to the caller, so no other node's answer can follow it: as for any speaker whose stream ends
    # (before this, the late end was ignored, and the call waited one more attempt timeout for a gone stream).
    speaker = LateSpeaker()
    working = StreamingPeer([], "working: done", hang=True)
    spare = StreamingPeer([], "spare: done")
    order = [peer.identity.address for peer in (speaker, working, spare)]
    settings = {"max_retries": 2, "attempt_timeout": ATTEMPT_TIMEOUT, "node_table": NodeTable(rng=Prefer(order))}
    deltas: list[str] = []
    async with client_of_many([speaker, working, spare], answer_timeout=0.5, **settings) as client:
        with pytest.raises(TaskFailedError, match="stream closed without a result after streaming part of the answer"):
            await client.execute(Task(workflow={}, models=["m"]), timeout=30, on_delta=deltas.append)
    assert deltas == ["late text"]
