"""Direct delivery (protocol 0.4): tasks on a stream to the chosen node, its answer at once, the result
on the same stream; gossip for nodes without addrs; exactly once whichever way a task arrives; hostile
streams refused while the node keeps serving. Real nodes, real libp2p on 127.0.0.1, the real model."""

from __future__ import annotations

import asyncio
import json
import math
import random
import secrets
import signal
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import structlog

from node.daemon.server import NodeServer
from node.p2p.frame_stream import FrameStream
from node.p2p.frames import encode_frame, encode_varint
from node.p2p.host import P2PHost
from node.p2p.streams import StreamLimits
from node.publisher.client import Client, Task
from node.publisher.node_table import NodeTable
from node.publisher.tasks import TaskResult
from node.wire.direct import decode_answer
from node.wire.envelope import seal
from node.wire.identity import Identity
from node.wire.inbound import decode
from node.wire.messages import TaskBody, TaskInput, encode_body
from node.wire.topics import MAX_FRAME_BYTES, RESULTS_TOPIC, TASK_TOPIC
from tests.support.cluster import dialable, node_settings, running_node
from tests.support.nodeproc import NodeProcess, cli_env
from workflows import Simple

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

MODEL = "smollm2:135m"


class Prefer(random.Random):
    """Chooses the node whose address is `first` while it is a candidate, so a test knows who is tried first."""

    def __init__(self) -> None:
        super().__init__()
        self.first: str | None = None

    def choices(self, population, weights=None, *, cum_weights=None, k=1):  # type: ignore[override]
        return [next((n for n in population if n.address == self.first), population[0])]

    def choice(self, seq):  # type: ignore[override]
        return self.choices(seq)[0]


class Net:
    def __init__(self, a: NodeServer, b: NodeServer, client: Client, prefer: Prefer) -> None:
        self.a, self.b, self.client, self.prefer = a, b, client, prefer


async def wait_for(condition: Any, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} not met within {timeout} s"
        await asyncio.sleep(0.1)


def small_task(prompt: str = "Say hi.") -> Task:
    return Task(workflow=Simple().workflow(prompt, max_tokens=8), models=[MODEL])


def long_workflow() -> dict[str, Any]:
    workflow = Simple().workflow("List booleans.", max_tokens=900)
    workflow["tasks"][0]["schema"] = json.dumps(
        {"type": "array", "items": {"type": "boolean"}, "minItems": 300, "maxItems": 300}
    )
    return workflow


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def net(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Net]:
    async with AsyncExitStack() as stack:
        settings = {"max_concurrent": 1, "max_queue": 0}
        a = await stack.enter_async_context(running_node(node_settings(tmp_path_factory.mktemp("a"), **settings)))
        b = await stack.enter_async_context(
            running_node(node_settings(tmp_path_factory.mktemp("b"), bootstrap=[dialable(a)], **settings))
        )
        prefer = Prefer()
        client = await stack.enter_async_context(Client(peers=[dialable(a)], node_table=NodeTable(rng=prefer)))
        await wait_for(lambda: len(client.nodes.live()) == 2, what="both nodes seen")
        yield Net(a, b, client, prefer)


def events_of(logs: list[dict[str, Any]], task_id: str) -> list[str]:
    return [entry["event"] for entry in logs if entry.get("task_id") == task_id]


@asynccontextmanager
async def a_node_process_and_a_spare(tmp_path: Path, name: str) -> AsyncIterator[tuple[NodeProcess, NodeServer]]:
    """A node run as `compute-node start` (a heartbeat every 2 s) and a spare node in this process that bootstraps
    from it; on exit the process is woken (a test may have stopped it) and killed."""
    process = NodeProcess(tmp_path / name, env=cli_env(COMPUTE_NODE_HEARTBEAT_INTERVAL="2"))
    try:
        async with running_node(node_settings(tmp_path / "spare", bootstrap=[process.addr])) as spare:
            yield process, spare
    finally:
        process.proc.send_signal(signal.SIGCONT)
        process.stop(signal.SIGKILL)


async def client_trying_first_the_other(
    stack: AsyncExitStack, spare: NodeServer, *peers: str, **options: Any
) -> tuple[Client, Prefer]:
    """A Client (peers: the spare and `peers`) that has seen both nodes and tries the one that is not `spare`
    first (its address is the Prefer's `first`)."""
    prefer = Prefer()
    client = await stack.enter_async_context(
        Client(peers=[dialable(spare), *peers], node_table=NodeTable(rng=prefer), **options)
    )
    await wait_for(lambda: len(client.nodes.live()) == 2, what="both nodes seen")
    prefer.first = next(n.address for n in client.nodes.live() if n.address != spare.running.identity.address)
    return client, prefer


async def story_started_on(node: NodeProcess, client: Client, timeout: float) -> asyncio.Future[TaskResult]:
    """A long generation executed by `client` (running), once `node` has started it."""
    running = asyncio.ensure_future(
        client.execute(Task(workflow=Simple().workflow("Tell a story.", max_tokens=400), models=[MODEL]), timeout)
    )
    await asyncio.to_thread(node.wait_for_log, "task started", 60)
    return running


def retries_in(logs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(node, reason) of each retry the Client logged."""
    return [(e["node"], e["reason"]) for e in logs if e["event"] == "retrying on another node"]


async def test_a_task_goes_on_a_stream_and_its_result_comes_back_on_it(net: Net) -> None:
    known = {node.address: node.addrs for node in net.client.nodes.live()}
    assert known == {n.running.identity.address: (dialable(n),) for n in (net.a, net.b)}  # heartbeat addrs
    net.prefer.first = net.b.running.identity.address
    with structlog.testing.capture_logs() as logs:
        result = await net.client.execute(small_task(), timeout=60)
        # The node logs the delivery once its write returned, which may be after the client has the result.
        await wait_for(lambda: "result delivered on its stream" in events_of(logs, result.task_id), 10)
    assert result.text.strip() and result.node == net.b.running.identity.address and result.model == MODEL
    events = events_of(logs, result.task_id)
    assert "task sent on a stream" in events and "result delivered on its stream" in events
    assert "task published" not in events and "result published" not in events  # no gossip either way
    accepted = [e for e in logs if e["event"] == "task accepted" and e.get("task_id") == result.task_id]
    assert [e["direct"] for e in accepted] == [True]


async def test_a_busy_node_answers_at_once_and_the_task_goes_to_another(net: Net) -> None:
    busy, spare = net.a.running.identity.address, net.b.running.identity.address
    long_id = await net.client.submit(Task(workflow=long_workflow(), models=["*"], nodes=[busy]), timeout=90)
    await wait_for(lambda: net.a.running.parts.admission.pending == 1, what="A busy")
    net.prefer.first = busy
    with structlog.testing.capture_logs() as logs:
        result = await net.client.execute(small_task("Hello."), timeout=60)
    assert result.node == spare
    retries = [e for e in logs if e["event"] == "retrying on another node"]
    assert [(e["node"], e["reason"]) for e in retries] == [(busy, "busy: no_capacity")]
    # Refused on its stream: never journalled as accepted, no error result on gossip.
    assert not [e for e in logs if e["event"] == "task accepted" and e.get("task_id") == retries[0]["task_id"]]
    assert not [e for e in logs if e["event"] == "result published" and e.get("task_id") == retries[0]["task_id"]]
    await net.client.wait(long_id, timeout=90, nodes=[busy])


async def test_the_same_task_by_stream_and_by_gossip_runs_once(net: Net) -> None:
    client, node = net.client, net.b
    assert client._host is not None
    body = TaskBody(
        task_id=secrets.token_urlsafe(12),
        deadline=time.time_ns() + 60 * 10**9,
        input=TaskInput(workflow=Simple().workflow("Say yes.", max_tokens=8), model=[MODEL]),
        picked_nodes=[node.running.identity.address],
        public_key=client.identity.public_key_compressed.hex(),
    )
    envelope = seal(client.identity, TASK_TOPIC, encode_body(body))
    waiting = asyncio.ensure_future(client.wait(body.task_id, 60, nodes=[node.running.identity.address]))
    with structlog.testing.capture_logs() as logs:
        await client._host.publish(TASK_TOPIC, envelope)
        stream = await client._host.open_stream([dialable(node)], envelope)
        answer = decode_answer(await stream.receive(10) or b"")
        if answer.status == "accepted":  # the stream came first: the result is on it
            result = decode(RESULTS_TOPIC, await stream.receive(60) or b"").body
            waiting.cancel()
        else:  # gossip came first: the stream's copy is a duplicate
            assert (answer.status, answer.reason) == ("ignored", "duplicate")
            result = await waiting
        await stream.close()
        await asyncio.sleep(1.0)  # a second run would have started by now
    assert result.task_id == body.task_id
    assert events_of(logs, body.task_id).count("task started") == 1


async def test_hostile_streams_are_refused_and_the_node_keeps_serving(net: Net) -> None:
    node = net.b  # default stream settings: 16 per peer, 10 s to the first frame
    attacker = P2PHost(
        Identity.generate().secret, ["/ip4/127.0.0.1/tcp/0"], stream_limits=StreamLimits(max_streams_per_peer=64)
    )
    await attacker.start()
    try:
        addr = [dialable(node)]

        async def answer_to(data: bytes, raw: bool = True, timeout: float = 15) -> tuple[str, str]:
            stream = await attacker.open_stream(addr, data, raw=raw)
            frame = await stream.receive(timeout)
            await stream.close()
            assert frame is not None, "no refusal frame"
            answer = decode_answer(frame)
            return answer.status.value, answer.reason

        assert await answer_to(encode_varint(MAX_FRAME_BYTES + 1)) == ("rejected", "frame_too_large")
        assert await answer_to(encode_varint(1 << 62) + b"x" * 100) == ("rejected", "frame_too_large")
        assert await answer_to(b"\xff" * 11) == ("rejected", "bad_length")
        assert await answer_to(encode_frame(b"\x00garbage{")) == ("rejected", "not_json")
        status, _ = await answer_to(b'{"payload":"x"}', raw=False)
        assert status == "rejected"
        results_envelope = seal(Identity.generate(), RESULTS_TOPIC, b"{}")
        assert await answer_to(results_envelope, raw=False) == ("rejected", "topic_mismatch")
        assert await answer_to(encode_frame(b"{}") + encode_frame(b"{}")) == ("rejected", "one_frame_only")

        # Silent streams (a peer that never writes, or stops mid-frame) up to the per-peer limit...
        silent: list[FrameStream] = [await attacker.open_stream(addr, b"", raw=True) for _ in range(15)]
        silent.append(await attacker.open_stream(addr, encode_varint(100) + b"x" * 10, raw=True))
        await asyncio.sleep(0.5)
        # ...then one more is refused at once,
        assert await answer_to(b"", timeout=5) == ("busy", "too_many_streams_from_peer")
        # ...and each silent one is cut off after the first-frame timeout.
        for stream in (silent[0], silent[-1]):
            frame = await stream.receive(20)
            assert frame is not None and decode_answer(frame).reason == "first_frame_timeout"
        await wait_for(lambda: node.running.host.held_streams == 0, 20, "streams freed")
    finally:
        await attacker.stop()
    net.prefer.first = node.running.identity.address
    result = await net.client.execute(small_task("Still there?"), timeout=60)
    assert result.node == node.running.identity.address and result.text.strip()


async def test_nodes_without_addrs_get_tasks_on_gossip_and_an_undialable_one_is_replaced_at_once(tmp_path) -> None:
    async with AsyncExitStack() as stack:
        plain = await stack.enter_async_context(running_node(node_settings(tmp_path / "plain", direct=False)))
        unreachable = await stack.enter_async_context(
            running_node(
                node_settings(tmp_path / "far", bootstrap=[dialable(plain)], announce=["/ip4/127.0.0.1/tcp/9"])
            )
        )
        prefer = Prefer()
        client = await stack.enter_async_context(Client(peers=[dialable(plain)], node_table=NodeTable(rng=prefer)))
        await wait_for(lambda: len(client.nodes.live()) == 2, what="both nodes seen")
        addrs = {n.address: n.addrs for n in client.nodes.live()}
        assert addrs[plain.running.identity.address] == ()
        assert addrs[unreachable.running.identity.address] == (
            f"/ip4/127.0.0.1/tcp/9/p2p/{unreachable.running.host.peer_id}",
        )
        far = unreachable.running.identity.address
        # (preferred node, node expected to answer, whether a dial of `far` is refused on the way)
        for preferred, answers, refused in (
            (plain, plain, False),
            # The first dial of the unreachable node fails: the task goes to the other node at once
            # (a killed node looks the same until its heartbeat ages out), not to a 10 s timeout...
            (unreachable, plain, True),
            # ...and for a minute the unreachable node gets its tasks on gossip, without a dial (once its next
            # heartbeat came: until then it is weighed last, as it may be dead).
            (unreachable, unreachable, False),
        ):
            prefer.first = preferred.running.identity.address
            with structlog.testing.capture_logs() as logs:
                result = await client.execute(small_task(), timeout=60)
            assert result.node == answers.running.identity.address
            events = events_of(logs, result.task_id)
            assert "task published" in events and "task sent on a stream" not in events
            dial_failures = [e.get("node") for e in logs if e["event"] == "node not dialable; its tasks go on gossip"]
            assert dial_failures == ([far] if refused else [])
            if refused:
                assert client.nodes.gone(unreachable.running.host.peer_id)
                await wait_for(
                    lambda: not client.nodes.gone(unreachable.running.host.peer_id), what="its next heartbeat"
                )
        assert client._sender is not None and client._sender.undialable(far)


async def test_a_draining_node_says_it_is_leaving_and_is_chosen_no_more(tmp_path) -> None:
    async with AsyncExitStack() as stack:
        stays = await stack.enter_async_context(running_node(node_settings(tmp_path / "stays", heartbeat_interval=30)))
        leaves = NodeServer(node_settings(tmp_path / "leaves", bootstrap=[dialable(stays)], heartbeat_interval=30))
        await asyncio.wait_for(leaves.startup(), 60)
        shutdown: asyncio.Future[None] | None = None
        try:
            client = await stack.enter_async_context(Client(peers=[dialable(stays)]))
            await wait_for(lambda: len(client.nodes.live()) == 2, what="both nodes seen")
            running = await client.submit(
                Task(workflow=long_workflow(), models=["*"], nodes=[leaves.running.identity.address]), timeout=60
            )
            await wait_for(lambda: leaves.running.parts.admission.pending == 1, what="busy")
            shutdown = asyncio.ensure_future(leaves.shutdown())  # drains for up to 5 s
            await wait_for(lambda: any(n.leaving for n in client.nodes.live()), timeout=5, what="leaving heartbeat")
            assert not shutdown.done()  # seen while the node is still draining, not when it is gone
            assert {client.nodes.choose(["*"]).address for _ in range(30)} == {stays.running.identity.address}
            result = await client.execute(small_task(), timeout=60)
            assert result.node == stays.running.identity.address
            assert running
        finally:
            await asyncio.wait_for(shutdown if shutdown is not None else leaves.shutdown(), 60)


async def test_a_node_killed_mid_task_is_replaced_at_once_not_after_a_timeout(tmp_path) -> None:
    async with a_node_process_and_a_spare(tmp_path, "doomed") as (doomed, spare), AsyncExitStack() as stack:
        client, prefer = await client_trying_first_the_other(stack, spare, attempt_timeout=math.inf)
        with structlog.testing.capture_logs() as logs:
            running = await story_started_on(doomed, client, 120)
            doomed.stop(signal.SIGKILL)
            result = await running
        assert result.node == spare.running.identity.address and result.text.strip()
        retries = retries_in(logs)
        # At once, not after a timeout (attempt_timeout is off): the stream broke, after the node's
        # answer or (killed just then) before it reached us.
        assert len(retries) == 1 and retries[0][0] == prefer.first
        assert retries[0][1] in ("stream closed without a result", "stream closed without an answer")


async def test_a_node_killed_mid_task_on_gossip_is_replaced_at_once_when_the_publisher_was_connected_to_it(
    tmp_path,
) -> None:
    # No stream to break: the close of the publisher's connection to the node tells, not its heartbeat
    # (live for a minute) nor the attempt timeout (half the task's timeout: 30 s here).
    async with a_node_process_and_a_spare(tmp_path, "doomed") as (doomed, spare), AsyncExitStack() as stack:
        client, prefer = await client_trying_first_the_other(stack, spare, doomed.addr, delivery="gossip")
        with structlog.testing.capture_logs() as logs:
            running = await story_started_on(doomed, client, 60)
            doomed.stop(signal.SIGKILL)
            # The retry is timed (0.3 s beside 4 CPU hogs on 2 cores), not the spare's result after it: its 400-token
            # story takes what the machine's load says (15 s beside the hogs, against a bound of 20 s). 15 s for
            # the retry is well under the 30 s attempt timeout that it must beat.
            await wait_for(lambda: bool(retries_in(logs)), 15, "a retry after the kill")
            result = await running
        assert result.node == spare.running.identity.address and result.text.strip()
        assert retries_in(logs) == [(prefer.first, "its node disconnected without a result")]


async def test_a_node_killed_before_a_task_is_sent_gets_none_of_the_next_tasks(tmp_path) -> None:
    # Killed while idle: its heartbeat stays live for a minute, and a task sent to it on gossip would wait out
    # the attempt timeout (half the task's timeout: 30 s here). On gossip, the publisher connected to it saw
    # its connection close; on direct delivery, its dial failed once (its next tasks would go on gossip).
    async with a_node_process_and_a_spare(tmp_path, "doomed") as (doomed, spare), AsyncExitStack() as stack:
        gossip, on_gossip = await client_trying_first_the_other(stack, spare, doomed.addr, delivery="gossip")
        direct, on_streams = await client_trying_first_the_other(stack, spare)
        doomed_address = on_gossip.first
        assert doomed.peer_id in await gossip._host.peers()  # type: ignore[union-attr]
        doomed.stop(signal.SIGKILL)
        deadline = time.monotonic() + 5
        while doomed.peer_id in await gossip._host.peers():  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the connection to the killed node did not close"
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # its close reached the Client, which probed it (refused at once)
        with structlog.testing.capture_logs() as logs:
            for call, client in enumerate((gossip, gossip, direct, direct)):
                started = time.monotonic()
                result = await client.execute(small_task(), 60)
                took = time.monotonic() - started
                assert took < 10, f"call {call} took {took:.1f} s: it waited out an attempt timeout"
                assert result.node == spare.running.identity.address
        for client in (gossip, direct):  # its last heartbeat is live all along
            assert doomed_address in {n.address for n in client.nodes.live()}
        # Only the first direct call tried the node, and its dial failed.
        retries = retries_in(logs)
        assert [node for node, _ in retries] == [doomed_address]
        assert retries[0][1].startswith("not dialable")


async def test_a_node_frozen_after_accepting_is_retried_elsewhere_after_attempt_timeout(tmp_path) -> None:
    async with a_node_process_and_a_spare(tmp_path, "frozen") as (frozen, spare), AsyncExitStack() as stack:
        client, prefer = await client_trying_first_the_other(stack, spare, attempt_timeout=5)
        with structlog.testing.capture_logs() as logs:
            running = await story_started_on(frozen, client, 90)
            frozen.proc.send_signal(signal.SIGSTOP)  # TCP stays up: only silence tells
            result = await running
        assert result.node == spare.running.identity.address and result.text.strip()
        retries = retries_in(logs)
        # The spare may be slow enough to get its own "no result yet" (nowhere left to go, it is waited for).
        assert retries[0] == (prefer.first, "no result yet")
        assert all(reason == "no result yet" for _, reason in retries)
