"""The Client against what a caller or a dishonest node may hand it, over a real libp2p peer speaking
protocol 0.4 as a node would: a task no envelope can carry, progress frames longer than any result, token
counts that are not counts, a result naming a model the task did not ask for. Each is refused or read as nothing, without a crash and without marking an
honest node."""

from __future__ import annotations

from typing import Any

import pytest

from node.publisher import direct
from node.publisher.client import ClientError, Task, TaskFailedError, TaskTooLargeError, VerificationFailedTaskError
from node.publisher.direct import MAX_PROGRESS_CHARS
from node.publisher.verification import ResultVerifier, Scorer
from node.wire.messages import Stats
from node.wire.topics import MAX_MESSAGE_BYTES
from tests.support.streaming_peer import StreamingPeer, client_of
from workflows import Simple


async def test_a_task_too_large_to_seal_is_refused_before_a_node_is_chosen() -> None:
    peer = StreamingPeer([], "ok")
    big = Task(workflow=Simple().workflow(prompt="x" * MAX_MESSAGE_BYTES), models=["m"])
    async with client_of(peer) as client:
        free = client.nodes.live()[0].free
        with pytest.raises(TaskTooLargeError, match="over the network's limit of 262144 bytes"):
            await client.execute(big, timeout=10)
        with pytest.raises(TaskTooLargeError):
            await client.submit(big, timeout=10)
        with pytest.raises(TaskTooLargeError):  # picked nodes make the body larger too
            await client.execute(Task(workflow={}, models=["m"], nodes=[peer.identity.address] * 10_000), timeout=10)
        assert client.nodes.live()[0].free == free  # no place reserved on the node
        assert len(client.reputation) == 0  # nor a decline recorded against it
        assert (await client.execute(Task(workflow={}, models=["m"]), timeout=20)).text == "ok"
    assert len(peer.streamed) == 1


async def test_progress_longer_than_any_result_breaks_the_stream_and_marks_its_node() -> None:
    peer = StreamingPeer(["z" * 200_000] * 20, "ok")  # 4 MB of progress, then a result of 2 characters
    seen: list[str] = []
    async with client_of(peer) as client:
        with pytest.raises(ClientError):
            await client.execute(Task(workflow={}, models=["m"]), timeout=3, on_delta=seen.append)
        measured = client.reputation.view(peer.identity.address)
    assert sum(map(len, seen)) <= MAX_PROGRESS_CHARS  # what reached the caller, and what was held
    assert measured.errors == pytest.approx(1, abs=0.01) and measured.answered == 0


async def test_empty_progress_frames_count_against_the_same_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(direct, "MAX_PROGRESS_CHARS", 100)  # the bound is 128 Ki characters: as many frames
    peer = StreamingPeer([""] * 300, "ok")  # frames without text, each a round of work for the publisher
    seen: list[str] = []
    async with client_of(peer) as client:
        with pytest.raises(ClientError):
            await client.execute(Task(workflow={}, models=["m"]), timeout=3, on_delta=seen.append)
        measured = client.reputation.view(peer.identity.address)
    assert seen == []  # nothing to pass on
    assert measured.errors == pytest.approx(1, abs=0.01) and measured.answered == 0


async def test_a_nodes_error_text_reaches_the_caller_and_the_logs_cut_short() -> None:
    # Error results are not encrypted and name their cause in a few words (PROTOCOL.md section 5);
    # a node could send 150 kB, shown to the gateway's caller, stored with the task and logged per retry.
    async with client_of(StreamingPeer([], "", error="busy: " + "x" * 150_000)) as client:
        with pytest.raises(TaskFailedError) as caught:
            await client.execute(Task(workflow={}, models=["m"]), timeout=20)
    reason = caught.value.reason
    assert reason.startswith("busy: xxx") and reason.endswith("(and 149006 more characters)")
    assert len(reason) < 1100 and len(str(caught.value)) < 1300


@pytest.mark.parametrize(
    ("claimed", "counts"),
    [
        ({"promptTokens": "many", "completionTokens": [1]}, (0, 0)),
        ({"promptTokens": -3, "completionTokens": -7}, (0, 0)),
        ({"promptTokens": True, "completionTokens": 2.5}, (0, 0)),
        ({"promptTokens": 2**62, "completionTokens": 2**62}, (2**31 - 1, 2)),  # completion: the text's bytes
    ],
)
async def test_token_counts_a_node_claims_are_counts_or_nothing(
    claimed: dict[str, Any], counts: tuple[int, int]
) -> None:
    async with client_of(StreamingPeer([], "ok", stats=claimed)) as client:
        result = await client.execute(Task(workflow={}, models=["m"]), timeout=20)
        assert (result.prompt_tokens, result.completion_tokens) == counts
        assert client.reputation.view(result.node).answered == pytest.approx(1)
    assert isinstance(result.stats, Stats)


async def test_a_result_naming_a_model_the_task_did_not_ask_for_is_refused_not_left_unverified() -> None:
    # Verification finds its scorer by the model the result names: naming one without a scorer
    # (here: any but "m") left a result unverified, and its node unbanned, instead of checked.
    def scorer_for(model: str) -> Scorer | None:
        return None if model != "m" else never_scores

    never_scores: Any = object()  # a result without a proof fails before anything is scored
    verifier = ResultVerifier(1.0, scorer_for, remote=False)
    async with client_of(StreamingPeer([], "ok", claims="other"), verifier=verifier) as client:
        with pytest.raises(TaskFailedError, match="names the model 'other', which the task did not ask for"):
            await client.execute(Task(workflow={}, models=["m"]), timeout=20)
        node = client.nodes.live()[0].address
        assert client.reputation.view(node).errors == pytest.approx(1, abs=0.01)
        assert (await client.execute(Task(workflow={}, models=["*"]), timeout=20)).model == "other"  # any
    async with client_of(StreamingPeer([], "ok"), verifier=verifier) as client:  # the name asked for: checked
        with pytest.raises(VerificationFailedTaskError, match="carries no proof"):
            await client.execute(Task(workflow={}, models=["m"]), timeout=20)
