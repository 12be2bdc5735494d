"""A peer that saw our task id on gossip sends its own task under it to the picked node first: the node runs that
one and ignores ours (it runs a task id once), then publishes the other's result, naming its signer
(`stats.publisher`). The publisher does not wait out its attempt timeout for an answer that cannot come: once
every picked node ran another key's task under the id, the task fails with TaskIdTakenError, and a call sends
it to the next node at once under a new id, marking the node as after a decline. A node that accepted our task
on its stream and then says so lies (an honest one answers a duplicate `ignored` there): an error like any."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any, cast

import pytest

from node.publisher.attempt import Attempt
from node.publisher.attempts import AttemptHooks, AttemptLoop
from node.publisher.errors import TaskFailedError, TaskIdTakenError
from node.publisher.inbox import ResultInbox
from node.publisher.node_table import KnownNode, NodeTable
from node.publisher.reputation import Reputation
from node.publisher.tasks import Task, TaskResult
from node.wire.identity import Identity
from node.wire.messages import HeartbeatBody, ResultBody
from node.wire.results import Output, result_body
from tests.support.gossip_nodes import MODEL, Prefer
from tests.support.heartbeats import signed_heartbeat

US, SQUATTER = Identity.generate(), Identity.generate()


def answer(task_id: str, signer: Identity, text: str) -> ResultBody:
    """A node's result for `task_id`, encrypted to our key, of a task `signer` signed."""
    now = time.time_ns()
    output = Output(text=text, public_key=US.public_key_compressed.hex(), prompt_tokens=1, completion_tokens=1)
    return result_body(task_id, MODEL, output, received_at_ns=now, started_at_ns=now, ended_at_ns=now,
                       publisher=signer.address)  # fmt: skip


# --- the inbox --------------------------------------------------------------------------------------------


async def test_the_only_picked_node_running_another_keys_task_fails_ours_at_once() -> None:
    node = Identity.generate()
    inbox = ResultInbox(US.secret)
    future = inbox.expect("t1", [node.address])
    inbox.accept(answer("t1", SQUATTER, "SQUATTED"), node.address)
    with pytest.raises(TaskIdTakenError) as caught:
        future.result()
    assert caught.value.node == node.address and "another publisher's task" in caught.value.reason
    assert caught.value.retryable


async def test_another_picked_node_may_still_run_ours() -> None:
    first, second = Identity.generate(), Identity.generate()
    inbox = ResultInbox(US.secret)
    future = inbox.expect("t1", [first.address, second.address])
    inbox.accept(answer("t1", SQUATTER, "SQUATTED"), first.address)
    await asyncio.sleep(0)
    assert not future.done()
    inbox.accept(answer("t1", US, "from the first, which ran the id once already"), first.address)
    assert not future.done()  # it cannot have run ours: the result is not taken from it
    inbox.accept(answer("t1", US, "GENUINE"), second.address)
    assert future.result().text == "GENUINE"


async def test_a_task_that_picked_no_node_waits_for_any_other_node() -> None:
    inbox = ResultInbox(US.secret)
    future = inbox.expect("t1", None)
    for _ in range(3):  # nodes unknown to it: any number may have been squatted, another may run ours
        inbox.accept(answer("t1", SQUATTER, "SQUATTED"), Identity.generate().address)
    assert not future.done()
    inbox.accept(answer("t1", US, "GENUINE"), Identity.generate().address)
    assert future.result().text == "GENUINE"


async def test_a_result_that_names_no_signer_is_taken_as_before() -> None:
    node = Identity.generate()
    inbox = ResultInbox(US.secret)
    future = inbox.expect("t1", [node.address])
    now = time.time_ns()
    output = Output(text="from an older node", public_key=US.public_key_compressed.hex(), prompt_tokens=1,
                    completion_tokens=1)  # fmt: skip
    inbox.accept(result_body("t1", MODEL, output, received_at_ns=now, started_at_ns=now, ended_at_ns=now), node.address)
    assert future.result().text == "from an older node"


# --- a call: the next node at once, nothing marked ---------------------------------------------------------


class SquattedNet:
    """Nodes `squatted` (chosen first; its task id is taken before ours arrives) and `honest` (answers)."""

    def __init__(self, nodes: int = 2, accepted_on_a_stream: bool = False) -> None:
        self.accepted_on_a_stream = accepted_on_a_stream  # the squatted node answered our stream `accepted`
        self.squatted, self.honest = Identity.generate(), Identity.generate()
        serving = [self.squatted, self.honest][:nodes]
        self.nodes = NodeTable(rng=Prefer([i.address for i in serving]))
        for identity in serving:
            inbound = signed_heartbeat(identity, [MODEL])
            assert isinstance(inbound.body, HeartbeatBody)
            assert self.nodes.update(inbound.sender, inbound.body)
        self.reputation = Reputation(None)
        self.inbox = ResultInbox(US.secret)
        self.sent: list[tuple[str, str]] = []  # (task id, node)

    async def choose(
        self, models: list[str], tried: set[str], deadline: float, timeout: float, last: Any, *_: Any
    ) -> KnownNode:
        node = self.nodes.choose(models, exclude=tried)
        if node is None:  # as Client._choose: every node that could run it was tried
            assert last is not None
            raise last
        return node

    async def send(self, task: Task, node: KnownNode, remaining: float, on_delta: Any) -> Attempt:
        task_id = f"t{len(self.sent)}"
        self.sent.append((task_id, node.address))
        future = self.inbox.expect(task_id, [node.address])
        who = SQUATTER if node.address == self.squatted.address else US
        loop = asyncio.get_running_loop()  # its result comes a moment after the send, on gossip
        loop.call_later(0.01, self.inbox.accept, answer(task_id, who, "ANSWER"), node.address)
        if self.accepted_on_a_stream:  # what AttemptLoop reads of a DirectDelivery
            stream = SimpleNamespace(
                answered=True, declined=None, lost=asyncio.Event(), last_progress=None, progress_text=""
            )
            return Attempt(task_id, node.address, future, direct=cast(Any, stream))
        return Attempt(task_id, node.address, future)

    async def verify(self, result: TaskResult) -> TaskResult:
        return result

    async def end(self, attempt: Attempt) -> None:
        self.inbox.forget(attempt.task_id)

    async def run(self, timeout: float = 30.0, retries: int = 0) -> TaskResult:
        hooks = AttemptHooks(self.nodes, self.reputation, self.choose, self.send, self.verify, self.end)
        # No retries: a node that ran another key's task under our id did not run ours, so the next is no retry.
        return await AttemptLoop(hooks, Task(workflow={}, models=[MODEL]), timeout, retries, None).run()


async def test_a_call_goes_to_the_next_node_at_once_under_a_new_id_as_after_a_decline() -> None:
    net = SquattedNet()
    result = await asyncio.wait_for(net.run(), 5)  # the attempt timeout would be 15 s
    assert result.text == "ANSWER" and result.node == net.honest.address
    assert net.sent == [("t0", net.squatted.address), ("t1", net.honest.address)]
    view = net.reputation.view(net.squatted.address)
    assert (view.errors, view.timeouts, view.busy) == (0, 0, 1)  # a decline's mark, as a stream's `ignored`


async def test_a_node_that_accepted_our_task_on_its_stream_and_then_says_so_is_marked_with_an_error() -> None:
    # It would shed any task unmarked (a reviewer's find): an honest node declines a duplicate on the stream.
    net = SquattedNet(accepted_on_a_stream=True)
    with pytest.raises(TaskFailedError) as caught:  # an error result like any other: a retry, and none is left
        await asyncio.wait_for(net.run(), 5)
    assert not isinstance(caught.value, TaskIdTakenError)  # which would tell the caller to retry at once
    assert "it accepted the task, then said it ran another publisher's task" in caught.value.reason
    assert net.sent == [("t0", net.squatted.address)]
    view = net.reputation.view(net.squatted.address)
    assert (view.errors, view.busy) == (1, 0)
    retried = SquattedNet(accepted_on_a_stream=True)
    assert (await asyncio.wait_for(retried.run(retries=1), 5)).node == retried.honest.address


async def test_with_no_other_node_the_call_fails_with_the_taken_id_not_a_timeout() -> None:
    net = SquattedNet(nodes=1)
    with pytest.raises(TaskIdTakenError) as caught:  # was TaskTimeoutError, after the attempt timeout
        await asyncio.wait_for(net.run(), 5)
    assert caught.value.node == net.squatted.address
