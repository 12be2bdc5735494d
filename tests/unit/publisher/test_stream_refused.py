"""A stream the node refuses or resets on a live connection (its yamux cap of a peer's streams, or a protocol it
does not serve) is no failed dial: the task goes on gossip and the node is not taken for undialable (before, it got
every task on gossip for a minute: a gateway soak saw one such reset under load stop all token streaming to a
connected, healthy node). Real libp2p peers on 127.0.0.1."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import structlog

from node.p2p.frame_stream import FrameStream
from node.p2p.host import P2PHost
from node.p2p.streams import TOO_MANY_FROM_PEER
from node.publisher.client import Client, Task, TaskTimeoutError
from node.wire.direct import AnswerStatus, StreamAnswer, encode_frame_body
from node.wire.inbound import decode
from node.wire.messages import TaskBody
from node.wire.topics import HEARTBEAT_TOPIC, TASK_TOPIC
from tests.support.gossip_nodes import MODEL, GossipNode
from tests.support.heartbeats import heartbeat_message
from tests.support.streaming_peer import StreamingPeer, client_of


class StreamlessPeer(StreamingPeer):
    """Heartbeats name its addresses, but its host serves no direct-delivery stream (any stream is refused)."""

    def __init__(self) -> None:
        super().__init__([], "")
        self.host = P2PHost(self.identity.secret, ["/ip4/127.0.0.1/tcp/0"])


async def test_a_refused_stream_on_a_live_connection_sends_the_task_on_gossip_without_an_undialable_mark() -> None:
    peer = StreamlessPeer()
    async with client_of(peer) as client:
        with structlog.testing.capture_logs() as logs, pytest.raises(TaskTimeoutError):
            await client.execute(Task(workflow={}, models=["m"]), timeout=3)  # nobody answers its gossip
        assert client._sender is not None and not client._sender.undialable(peer.identity.address)
    events = {entry["event"]: entry for entry in logs}
    assert "node not dialable; its tasks go on gossip" not in events
    assert "stream refused" in str(events["node takes no more streams from us; sending on gossip"]["reason"])
    assert "task published" in events


class AtItsStreamLimit(GossipNode):
    """Runs tasks on gossip, and answers every stream `busy: too_many_streams_from_peer` (`answer_after` s later)."""

    def __init__(self, answer_after: float) -> None:
        super().__init__(answers=True, text="ran on gossip")
        self.answer_after = answer_after
        self.host = P2PHost(self.identity.secret, ["/ip4/127.0.0.1/tcp/0"], on_inbound_stream=self._on_stream)
        self.streams = 0
        self._refusing: set[asyncio.Task[None]] = set()

    def _on_stream(self, stream: FrameStream, first: bytes) -> None:
        self.streams += 1
        task = asyncio.create_task(self._refuse(stream))
        self._refusing.add(task)
        task.add_done_callback(self._refusing.discard)

    async def _refuse(self, stream: FrameStream) -> None:
        await asyncio.sleep(self.answer_after)
        answer = StreamAnswer(task_id="", status=AnswerStatus.BUSY, reason=TOO_MANY_FROM_PEER)
        await stream.send(encode_frame_body(answer))
        await stream.close()

    async def heartbeat(self) -> None:
        if (await self.host.mesh_sizes()).get(HEARTBEAT_TOPIC):
            message = heartbeat_message(self.identity, [MODEL], free=4, addrs=self.host.listen_addrs)
            await self.host.publish(HEARTBEAT_TOPIC, message)


@pytest.mark.parametrize("answer_after", [0.0, 0.7], ids=["on-time", "after-the-answer-timeout"])
async def test_a_node_whose_streams_from_us_are_full_runs_the_task_on_gossip(answer_after: float) -> None:
    # Late (after answer_timeout, a node slow under load), the answer was an ordinary decline: with no other node the
    # call failed with the very error the gossip fallback removes. The gossip copy carries no `stream` (PROTOCOL.md
    # 8: "sent only on this path"), and the node's next task goes on gossip without a stream first.
    node = AtItsStreamLimit(answer_after)
    await node.start()
    client = Client(peers=[node.host.listen_addrs[0]], answer_timeout=0.3, max_retries=2, attempt_timeout=5)
    try:
        await client.start()
        for _ in range(100):
            if client.nodes.live():
                break
            await node.heartbeat()
            await asyncio.sleep(0.2)
        sent: list[bytes] = []
        host = client._host
        assert host is not None
        publish = host.publish

        async def recorded(topic: str, data: bytes, **options: Any) -> None:
            if topic == TASK_TOPIC:
                sent.append(data)
            await publish(topic, data, **options)

        host.publish = recorded  # type: ignore[method-assign]
        for _ in range(2):
            result = await client.execute(Task(workflow={}, models=[MODEL]), timeout=20, on_delta=lambda _: None)
            assert result.text == "ran on gossip"
    finally:
        await client.close()
        await node.stop()
    tasks = [decode(TASK_TOPIC, data).body for data in sent]
    assert [task.stream for task in tasks if isinstance(task, TaskBody)] == [None, None]
    assert node.streams == 1  # the second task went on gossip at once
