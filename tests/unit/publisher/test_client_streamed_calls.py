"""A streamed call (`on_delta`) hears one node, against real libp2p peers speaking protocol 0.4 as nodes would:
a node streaming a long answer is not timed out while it streams, no retry's text is mixed into the one the
caller has, and a node that stalls after streaming ends the call rather than handing it to another node."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from node.publisher.client import Task, TaskFailedError, TaskTimeoutError
from node.publisher.node_table import NodeTable
from tests.support.streaming_peer import StreamingPeer, client_of, client_of_many

WORDS = [f"w{i} " for i in range(20)]
WORKFLOW: dict[str, object] = {}


async def until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


async def test_a_node_streaming_past_the_attempt_timeout_is_heard_alone_and_not_timed_out() -> None:
    # 20 deltas 0.15 s apart: 3 s of streaming, past the attempt timeout (2 s). The call's deadline (20 s) is
    # far past the stream's end: with a deadline of 4 s, a loaded machine's slower frames (3.1 s here) could
    # reach it, and the call failed for that, not for what the test shows.
    a = StreamingPeer(WORDS, "".join(WORDS) + "end", gap=0.15)
    b = StreamingPeer([w.upper() for w in WORDS], "".join(WORDS).upper() + "END", gap=0.15)
    async with client_of_many([a, b], max_retries=2, attempt_timeout=2) as client:
        heard: list[str] = []
        started = time.monotonic()
        result = await client.execute(Task(workflow={}, models=["m"]), timeout=20, on_delta=heard.append)
        took = time.monotonic() - started
    speaker, other = (a, b) if result.node == a.identity.address else (b, a)
    assert result.text.startswith("".join(heard)) and "".join(heard) == "".join(speaker.deltas)
    assert other.task_ids == [], "the call was retried on another node while its node streamed"
    assert client.reputation.view(speaker.identity.address).timeouts == 0
    assert took >= 2.5


async def test_a_node_that_stalls_after_streaming_ends_the_call_without_a_retry() -> None:
    a = StreamingPeer(["Once upon "], "never", hang=True)
    b = StreamingPeer(["ONCE UPON "], "never", hang=True)
    # An attempt timeout of 2 s, well under the call's 10 s deadline: the bound below tells the two apart
    # with room for a loaded machine (a deadline of 4 s, twice the attempt timeout, left 2x).
    async with client_of_many([a, b], max_retries=2, attempt_timeout=2) as client:
        heard: list[str] = []
        started = time.monotonic()
        with pytest.raises(TaskFailedError, match="went silent after streaming") as failed:
            await client.execute(Task(workflow={}, models=["m"]), timeout=10, on_delta=heard.append)
        took = time.monotonic() - started
    stalled, other = (a, b) if failed.value.node == a.identity.address else (b, a)
    assert heard == stalled.deltas and other.task_ids == []
    assert client.reputation.view(stalled.identity.address).timeouts > 0
    assert 1.5 <= took < 6  # the attempt timeout (2 s) after its last frame, not the call's deadline (10 s)


@pytest.mark.parametrize(("delta", "streamed"), [("", False), ("", True), ("x", False)])
async def test_progress_that_carries_no_text_the_task_asked_for_does_not_keep_a_node_from_being_replaced(
    delta: str, streamed: bool
) -> None:
    # Every progress frame counted as news that the node works on the task: one that dripped empty frames,
    # or frames on a task that asked for none (PROTOCOL.md 8), held each call to its deadline, never retried.
    # 40 frames 0.25 s apart: 10 s of drip. An attempt timeout of 3 s and a deadline of 20 s: a node whose
    # drip counted as news would be replaced only after 13 s (its last frame and 3 s), far past the bound.
    dripper = StreamingPeer([delta] * 40, "never", gap=0.25, hang=True)
    honest = StreamingPeer([], "ok", free=0)  # the dripper, with a free place, is chosen first
    async with client_of_many([dripper, honest], max_retries=2, node_table=NodeTable(), attempt_timeout=3) as client:
        started = time.monotonic()
        on_delta = (lambda _: None) if streamed else None
        result = await client.execute(Task(workflow={}, models=["m"]), timeout=20, on_delta=on_delta)
        took = time.monotonic() - started
    assert dripper.task_ids and result.node == honest.identity.address and result.text == "ok"
    assert took < 8, f"replaced after {took:.1f} s (attempt timeout 3 s)"


async def test_without_on_delta_a_silent_node_is_still_retried() -> None:
    a = StreamingPeer([], "never", hang=True)
    b = StreamingPeer([], "never", hang=True)
    async with client_of_many([a, b], max_retries=1) as client:
        with pytest.raises(TaskTimeoutError):
            await client.execute(Task(workflow={}, models=["m"]), timeout=3)
    assert len(a.task_ids) == 1 and len(b.task_ids) == 1


async def test_a_node_that_claims_a_deterministic_error_is_contradicted_by_a_second_node() -> None:
    """Any node can answer `Invalid prompt: ...`; one more node is asked, and the liar is marked."""
    liar = StreamingPeer([], "", error="Invalid prompt: forged")
    honest = StreamingPeer([], "fine")
    async with client_of_many([liar, honest], max_retries=2) as client:
        # Once the honest node is measured serving, a node that is not gets a small share of the choices:
        # calls go on until the liar has had one (0.9^200 to miss it at a 10% share).
        for _ in range(200):
            result = await client.execute(Task(workflow={}, models=["m"]), timeout=10)
            assert result.node == honest.identity.address and result.text == "fine"
            if liar.task_ids:
                break
    assert liar.task_ids, "the liar was never chosen: nothing was tested"
    assert client.reputation.view(liar.identity.address).errors > 0


async def test_a_cut_short_answer_another_node_fits_marks_its_node_as_a_decline_not_an_error() -> None:
    """A cut at the task's max_tokens is `Invalid prompt: ` (as short on any node of one model, greedy), but
    another model or a sampled run may fit where one did not: the node that said so is not marked an error."""
    cut = "Invalid prompt: task 'a' failed: the model's answer is not complete JSON for the schema "
    short = StreamingPeer([], "", error=cut + "(max_tokens reached: 12; raise it or bound the schema)")
    fits = StreamingPeer([], "{}")
    async with client_of_many([short, fits], max_retries=2) as client:
        for _ in range(200):  # as above: until the cutting node has had one
            result = await client.execute(Task(workflow={}, models=["m"]), timeout=10)
            assert result.node == fits.identity.address
            if short.task_ids:
                break
    assert short.task_ids, "the cutting node was never chosen: nothing was tested"
    view = client.reputation.view(short.identity.address)
    assert (view.errors, view.busy) == (0, len(short.task_ids))


async def test_a_deterministic_error_two_nodes_agree_on_ends_the_call_at_once() -> None:
    a = StreamingPeer([], "", error="Invalid prompt: the context cannot hold it")
    b = StreamingPeer([], "", error="Invalid prompt: the context cannot hold it")
    async with client_of_many([a, b], max_retries=2) as client:
        started = time.monotonic()
        with pytest.raises(TaskFailedError, match="Invalid prompt") as failed:
            await client.execute(Task(workflow={}, models=["m"]), timeout=20)
        assert not failed.value.retryable and time.monotonic() - started < 5
    assert len(a.task_ids) + len(b.task_ids) == 2  # one opinion each, then the error stands
    for peer in (a, b):
        assert client.reputation.view(peer.identity.address).errors == 0


async def test_a_call_cancelled_while_its_node_has_not_answered_leaves_nothing_behind() -> None:
    # The OpenAI adapter cancels a call whenever its HTTP caller leaves. Cancelled while the node had not yet
    # answered the stream, each call left its result future in the inbox for good and its stream open.
    peer = StreamingPeer([], "late", answer_after=30)
    async with client_of(peer) as client:
        host = client._host
        assert host is not None
        for i in range(5):
            call = asyncio.ensure_future(client.execute(Task(workflow=WORKFLOW, models=["m"]), timeout=60))
            await until(lambda n=i + 1: len(peer.task_ids) == n, "the node never got the task")
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
        assert client._inbox._pending == {}
        await until(lambda: host.open_streams == 0, "the cancelled calls' streams stayed open")
