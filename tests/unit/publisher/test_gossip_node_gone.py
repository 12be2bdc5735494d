"""A task sent on gossip to a node whose connection to the publisher closed (the node was killed): retried at
once, as a lost stream is, within the retry budget, counted once, and the first node's result still taken if it
comes. The AttemptLoop's decision against stand-in hooks (no network), then the TaskSender's bookkeeping."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import structlog

from node.publisher.attempt import Attempt
from node.publisher.attempts import NODE_GONE, AttemptHooks, AttemptLoop
from node.publisher.errors import TaskTimeoutError
from node.publisher.inbox import ResultInbox
from node.publisher.node_table import KnownNode, NodeTable
from node.publisher.reputation import Reputation
from node.publisher.sender import TaskSender
from node.publisher.tasks import Task, TaskResult
from node.wire.identity import Identity
from node.wire.messages import Stats
from tests.support.gossip_nodes import MODEL, GossipNode, Prefer, started_client
from tests.support.heartbeats import signed_heartbeat


def result_of(attempt: Attempt, text: str) -> TaskResult:
    stats = Stats(received_at=1, published_at=1, execution_started_at=1, execution_ended_at=2)
    return TaskResult(task_id=attempt.task_id, text=text, node=attempt.node, model=MODEL, stats=stats)


class Net:
    """Nodes `first` and `second` (chosen in that order); every task sent is an Attempt on gossip."""

    def __init__(self) -> None:
        self.first, self.second = Identity.generate(), Identity.generate()
        self.nodes = NodeTable(rng=Prefer([self.first.address, self.second.address]))
        for identity in (self.first, self.second):
            inbound = signed_heartbeat(identity, [MODEL])
            assert self.nodes.update(inbound.sender, inbound.body)  # type: ignore[arg-type]
        self.reputation = Reputation(None)
        self.sent: list[Attempt] = []
        self.ended: list[str] = []
        self.new_attempt = asyncio.Event()

    async def choose(self, models: list[str], tried: set[str], *_: Any) -> KnownNode:
        node = self.nodes.choose(models, exclude=tried)
        assert node is not None
        return node

    async def send(self, task: Task, node: KnownNode, remaining: float, on_delta: Any) -> Attempt:
        future: asyncio.Future[TaskResult] = asyncio.get_running_loop().create_future()
        attempt = Attempt(f"t{len(self.sent)}", node.address, future, peer_id=node.peer_id)
        self.sent.append(attempt)
        self.new_attempt.set()
        return attempt

    async def verify(self, result: TaskResult) -> TaskResult:
        return result

    async def end(self, attempt: Attempt) -> None:
        self.ended.append(attempt.task_id)

    def loop(self, timeout: float = 60.0, max_retries: int = 2, attempt_timeout: float | None = None) -> AttemptLoop:
        hooks = AttemptHooks(self.nodes, self.reputation, self.choose, self.send, self.verify, self.end)
        task = Task(workflow={}, models=[MODEL])
        return AttemptLoop(hooks, task, timeout, max_retries, attempt_timeout)

    async def attempts(self, count: int, within: float = 5.0) -> list[Attempt]:
        """The attempts sent, once there are `count` of them."""
        async with asyncio.timeout(within):
            while len(self.sent) < count:
                self.new_attempt.clear()
                await self.new_attempt.wait()
        return self.sent


async def test_a_gossip_task_whose_node_went_is_retried_at_once_on_another_node() -> None:
    net = Net()
    with structlog.testing.capture_logs() as logs:
        running = asyncio.ensure_future(net.loop(timeout=60).run())  # the attempt timeout is 30 s
        (first,) = await net.attempts(1)
        first.node_gone.set()
        started = asyncio.get_running_loop().time()
        _, second = await net.attempts(2)
        took = asyncio.get_running_loop().time() - started
        second.result.set_result(result_of(second, "from the second node"))
        result = await running
    assert took < 1.0, f"retried only after {took:.1f} s"
    assert (first.node, second.node) == (net.first.address, net.second.address)
    assert result.text == "from the second node"
    retries = [(e["task_id"], e["reason"]) for e in logs if e["event"] == "retrying on another node"]
    assert retries == [(first.task_id, NODE_GONE)]
    assert net.reputation.view(net.first.address).errors == pytest.approx(1)
    assert sorted(net.ended) == ["t0", "t1"]


async def test_the_first_nodes_result_is_still_taken_if_it_comes_after_the_retry() -> None:
    # Cut off a moment (a brief reconnect): its result, on gossip, is accepted once, as any other.
    net = Net()
    running = asyncio.ensure_future(net.loop(timeout=60).run())
    (first,) = await net.attempts(1)
    first.node_gone.set()
    await net.attempts(2)
    first.result.set_result(result_of(first, "from the first node after all"))
    result = await running
    assert result.text == "from the first node after all" and result.node == net.first.address
    assert len(net.sent) == 2  # no third try


async def test_without_retries_left_the_node_going_sends_nothing_and_its_result_is_still_awaited() -> None:
    net = Net()
    running = asyncio.ensure_future(net.loop(timeout=60, max_retries=0).run())
    (first,) = await net.attempts(1)
    first.node_gone.set()
    await asyncio.sleep(0.6)  # past a poll for a node to retry on
    assert len(net.sent) == 1
    first.result.set_result(result_of(first, "it came back"))
    assert (await running).text == "it came back"


async def test_a_node_retried_for_its_silence_is_not_retried_again_when_it_goes() -> None:
    net = Net()
    with structlog.testing.capture_logs() as logs:
        running = asyncio.ensure_future(net.loop(timeout=60, max_retries=1, attempt_timeout=0.3).run())
        first, second = await net.attempts(2)  # the first was silent for 0.3 s
        first.node_gone.set()
        await asyncio.sleep(0.1)
        assert len(net.sent) == 2  # its retry went already: no other node is asked for it
        second.result.set_result(result_of(second, "ok"))
        assert (await running).text == "ok"
    reasons = [e["reason"] for e in logs if e["event"] == "retrying on another node" and e["task_id"] == "t0"]
    assert reasons == ["no result yet"]
    measured = net.reputation.view(net.first.address)
    assert (measured.timeouts, measured.errors) == (pytest.approx(1), 0)  # marked once, for its silence


async def test_a_node_that_goes_twice_counts_once() -> None:
    net = Net()
    running = asyncio.ensure_future(net.loop(timeout=2, max_retries=2).run())
    (first,) = await net.attempts(1)
    first.node_gone.set()
    await net.attempts(2)
    first.node_gone.clear()
    first.node_gone.set()  # it came back and went again
    await asyncio.sleep(0.3)
    assert len(net.sent) == 2
    with pytest.raises(TaskTimeoutError):
        await running
    assert net.reputation.view(net.first.address).errors == pytest.approx(1)


# --- PeerWatch.gone: which attempts a closed connection loses ---------------------------------------


class StubHost:
    def __init__(self, alive: bool = False) -> None:
        self.published: list[bytes] = []
        self.alive = alive  # what a probe of a peer whose connection closed finds (TaskSender._probe)
        self.probed: list[str] = []

    async def publish(self, topic: str, data: bytes, **_: Any) -> None:
        self.published.append(data)

    async def reachable(self, peer_id: str, addrs: list[str], timeout: float = 2.0) -> bool:
        self.probed.append(peer_id)
        return self.alive


async def probes_done(sender: TaskSender) -> None:
    await asyncio.gather(*sender.watch._probes.values())


def known(identity: Identity) -> KnownNode:
    return KnownNode(identity.address, identity.peer_id, [MODEL], 1, 1, {}, 0.0)


async def test_only_the_live_gossip_tasks_of_the_peer_that_went_are_lost() -> None:
    me, gone, stays = Identity.generate(), Identity.generate(), Identity.generate()
    sender = TaskSender(StubHost(), me, ResultInbox(me.secret), lambda _: None, "gossip", 5.0)  # type: ignore[arg-type]
    task = Task(workflow={}, models=[MODEL])
    to_gone = [await sender.send(task, known(gone), 30, None) for _ in range(3)]
    to_stays = await sender.send(task, known(stays), 30, None)
    await sender.end(to_gone[1])  # ended: no longer watched
    to_gone[2].result.set_result(result_of(to_gone[2], "done"))  # answered: nothing to lose
    sender.watch.gone(gone.peer_id)
    await probes_done(sender)
    assert [a.node_gone.is_set() for a in to_gone] == [True, False, False]
    assert not to_stays.node_gone.is_set()
    sender.watch.gone("16Uiu2-never-connected")  # a peer without tasks: nothing happens, no probe
    await probes_done(sender)
    assert sender._host.probed == [gone.peer_id]  # type: ignore[attr-defined]
    for attempt in (*to_gone, to_stays):
        await sender.end(attempt)
    assert sender.watch._attempts == {}  # nothing held for ended attempts


async def test_every_attempt_is_ended_even_when_a_second_cancel_comes_during_the_ends() -> None:
    """A second cancellation while the loop awaits one attempt's end (a stream's close) skipped the end of every
    later attempt: each stayed watched, reserved and expected for the Client's life."""
    net = Net()
    ended: list[str] = []

    async def slow_end(attempt: Attempt) -> None:
        if attempt.task_id == "t0":
            await asyncio.sleep(0.5)
        ended.append(attempt.task_id)

    hooks = AttemptHooks(net.nodes, net.reputation, net.choose, net.send, net.verify, slow_end)
    running = asyncio.ensure_future(AttemptLoop(hooks, Task(workflow={}, models=[MODEL]), 60, 2, 0.2).run())
    await net.attempts(2)  # t0 silent for 0.2 s: t1 sent
    running.cancel()  # the caller went away
    await asyncio.sleep(0.05)
    running.cancel()  # and another cancel (a shutdown, an outer timeout) while t0's end awaits
    with pytest.raises(asyncio.CancelledError):
        await running
    await asyncio.sleep(0.6)
    assert sorted(ended) == ["t0", "t1"]


async def test_a_node_that_takes_a_new_connection_keeps_its_gossip_tasks() -> None:
    """A closed connection is no proof of death (a node past its peer budget trims idle ones): a node that takes
    the probe's connection keeps its tasks, and they are watched again (a later close is heard)."""
    me, node = Identity.generate(), Identity.generate()
    host = StubHost(alive=True)
    sender = TaskSender(host, me, ResultInbox(me.secret), lambda _: None, "gossip", 5.0)  # type: ignore[arg-type]
    attempt = await sender.send(Task(workflow={}, models=[MODEL]), known(node), 30, None)
    sender.watch.gone(node.peer_id)
    await probes_done(sender)
    assert not attempt.node_gone.is_set()
    host.alive = False  # now it is gone for good
    sender.watch._paced.clear()  # PROBE_EVERY_S later
    sender.watch.gone(node.peer_id)
    await probes_done(sender)
    assert attempt.node_gone.is_set()
    await sender.end(attempt)
    assert sender.watch._attempts == {} and sender.watch._addrs == {}


async def test_a_node_that_hangs_up_on_each_new_connection_is_probed_once_per_interval() -> None:
    """Anyone can run a node that closes each connection once it opens: each close was a dial of it at once."""
    me, node = Identity.generate(), Identity.generate()
    host = StubHost(alive=True)
    sender = TaskSender(host, me, ResultInbox(me.secret), lambda _: None, "gossip", 5.0)  # type: ignore[arg-type]
    attempt = await sender.send(Task(workflow={}, models=[MODEL]), known(node), 30, None)
    for _ in range(50):
        sender.watch.gone(node.peer_id)
        await probes_done(sender)
    assert host.probed == [node.peer_id]
    assert not attempt.node_gone.is_set()  # still watched: it waits out its attempt timeout
    assert node.peer_id in sender.watch._attempts
    await sender.end(attempt)
    assert sender.watch._attempts == {} and sender.watch._addrs == {}


# --- a Client on real libp2p hosts: the node's connection closing is what starts the retry ------------------


async def test_a_client_retries_a_gossip_task_at_once_when_its_node_disconnects() -> None:
    goes, stays = GossipNode(answers=False), GossipNode(answers=True)
    for node in (goes, stays):
        await node.start()
    await stays.host.connect(goes.host.listen_addrs[0])
    client = await started_client(goes, stays, max_retries=1)
    try:
        with structlog.testing.capture_logs() as logs:
            running = asyncio.ensure_future(client.execute(Task(workflow={}, models=[MODEL]), timeout=60))
            await asyncio.wait_for(goes.took.wait(), 10)
            started = time.monotonic()
            await goes.stop()  # its connections close, as a killed node's do
            result = await asyncio.wait_for(running, 60)
            took = time.monotonic() - started
    finally:
        await client.close()
        await stays.stop()
        await goes.stop()
    assert result.node == stays.identity.address and result.text == "from the node that stayed"
    # Not after the attempt timeout (half of 60 s): at once, once the connection closed.
    assert took < 10, f"the task reached another node {took:.1f} s after its node went"
    retries = [(e["node"], e["reason"]) for e in logs if e["event"] == "retrying on another node"]
    assert retries == [(goes.identity.address, NODE_GONE)]
