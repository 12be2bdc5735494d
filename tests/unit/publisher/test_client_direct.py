"""The Client's side of direct delivery against a real libp2p peer speaking protocol 0.4 as a node would:
progress frames reach `on_delta`, and a signed result that contradicts them is refused."""

from __future__ import annotations

import time

import pytest

from node.publisher.client import Task, TaskFailedError
from node.publisher.remote_scoring import score_workflow
from node.wire.direct import AnswerStatus
from node.wire.proof import ProofGeneration
from tests.support.streaming_peer import StreamingPeer, client_of


async def test_progress_frames_reach_on_delta_and_the_result_extends_them() -> None:
    peer = StreamingPeer(["Hel", "lo"], "Hello world")
    async with client_of(peer) as client:
        deltas: list[str] = []
        result = await client.execute(Task(workflow={}, models=["m"]), timeout=20, on_delta=deltas.append)
    assert deltas == ["Hel", "lo"] and result.text == "Hello world" and result.node == peer.identity.address
    measured = client.reputation.view(peer.identity.address)  # what the client saw of the node
    assert (measured.answered, measured.errors, measured.peak) == (pytest.approx(1), 0, 1)
    assert measured.mean_result_s is not None and measured.mean_result_s > 0
    assert peer.streamed == [True]  # `"stream": true` is sent only to a caller that takes deltas


async def test_a_result_that_contradicts_the_streamed_text_is_refused() -> None:
    peer = StreamingPeer(["Goodbye"], "Hello world")
    async with client_of(peer) as client:
        with pytest.raises(TaskFailedError, match="does not match the text its node streamed"):
            await client.execute(Task(workflow={}, models=["m"]), timeout=20, on_delta=lambda _: None)
    measured = client.reputation.view(peer.identity.address)
    assert (measured.answered, measured.errors) == (0, pytest.approx(1))  # a mark on the node


async def test_without_on_delta_the_task_does_not_ask_for_a_stream() -> None:
    peer = StreamingPeer([], "plain")
    async with client_of(peer) as client:
        result = await client.execute(Task(workflow={}, models=["m"]), timeout=20)
    assert result.text == "plain" and peer.streamed == [False]


async def test_an_answer_later_than_answer_timeout_is_still_used_and_the_task_runs_once() -> None:
    # A node slow under a burst has the task and may take it: giving up on it would run the task twice.
    peer = StreamingPeer([], "late but there", answer_after=1.5)
    async with client_of(peer, answer_timeout=0.5) as client:
        result = await client.execute(Task(workflow={}, models=["m"]), timeout=20)
    assert result.text == "late but there" and len(peer.streamed) == 1
    assert client.reputation.view(peer.identity.address).answered == pytest.approx(1)


async def test_a_late_busy_answer_is_a_decline_at_once_not_a_wait_for_the_attempt_timeout() -> None:
    peer = StreamingPeer([], "never", answer_after=1.5, status=AnswerStatus.BUSY)
    async with client_of(peer, answer_timeout=0.5) as client:
        started = time.monotonic()
        with pytest.raises(TaskFailedError, match="busy: no_capacity"):
            await client.execute(Task(workflow={}, models=["m"]), timeout=60)
        took = time.monotonic() - started
    assert len(peer.streamed) == 1
    assert took < 30, f"the decline was acted on only after {took:.1f} s (the attempt timeout is 30 s)"


async def test_a_score_tasks_tokens_count_for_success_but_never_for_speed() -> None:
    # Scoring is teacher forcing, far faster per token than generating: a scorer's 400 tokens in a
    # moment must not make it look like a fast generator (nor feed the claim penalty).
    peer = StreamingPeer([], "x" * 1000, tokens=400)
    step = ProofGeneration(prompt_tokens=[1, 2, 3], tokens=list(range(10, 410)), logprobs=[-1.0] * 400, temperature=0)
    async with client_of(peer) as client:
        text, node = await client.run_score_task(score_workflow(step, 20), "m", set(), 20)
        assert node == peer.identity.address and text == "x" * 1000
        scorer = client.reputation.view(node)
        assert (scorer.answered, scorer.scored) == (0, pytest.approx(1))
        assert scorer.scoring_tps is not None and scorer.scoring_tps > 400  # answered at once: well above 400 tok/s
        assert scorer.mean_result_s is None and scorer.measured_tps is None
        assert scorer.service_tps == pytest.approx(10.0)  # still the prior: nothing generated yet
        assert scorer.success == pytest.approx(2 / 3)  # (1 + 1) / (1 + 2): the answer counts
        await client.execute(Task(workflow={}, models=["m"]), timeout=20)  # the same answer to a generating task
        generator = client.reputation.view(node)
    assert (generator.answered, generator.scored) == (pytest.approx(1), pytest.approx(1))
    assert generator.service_tps > 10.0  # its 400 generated tokens do count
