"""A peer that speaks protocol 0.4 as a node would: it takes tasks on streams, answers, writes
progress frames and a signed result, and signs heartbeats that name its addresses; `client_of`, a
publisher Client that knows it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from node.p2p.frame_stream import FrameStream
from node.p2p.host import P2PHost
from node.publisher.client import Client
from node.wire.direct import AnswerStatus, Progress, StreamAnswer, encode_frame_body
from node.wire.envelope import seal
from node.wire.identity import Identity
from node.wire.inbound import decode
from node.wire.messages import Stats, TaskBody, encode_body
from node.wire.results import Output, result_body
from node.wire.topics import HEARTBEAT_TOPIC, RESULTS_TOPIC, TASK_TOPIC


class StreamingPeer:
    """A peer that takes tasks on streams, writes `deltas` as progress frames, then a result of `text`.

    `answer_after`: seconds before it answers; `status`: its answer (anything but accepted ends there);
    `tokens`: the completion tokens its result's stats report; `stats`: fields put in its stats as they are
    (a dishonest node's token counts); `claims`: the model its results name (its heartbeat's is `m`);
    `error`: an error result in place of `text`; `gap`: seconds between two progress frames; `hang`: after its
    progress frames it writes nothing more (a node that stalls mid-answer); `free`: the free places its heartbeat
    claims (a node table without reputation tries the freest first); `task_ids`: the tasks it took."""

    def __init__(
        self,
        deltas: list[str],
        text: str,
        answer_after: float = 0.0,
        status: AnswerStatus = AnswerStatus.ACCEPTED,
        tokens: int = 1,
        stats: dict[str, Any] | None = None,
        claims: str = "m",
        error: str | None = None,
        gap: float = 0.0,
        hang: bool = False,
        free: int = 1,
    ) -> None:
        self.identity = Identity.generate()
        self.deltas, self.text, self.tokens = deltas, text, tokens
        self.stats, self.claims, self.error = stats or {}, claims, error
        self.answer_after, self.status = answer_after, status
        self.gap, self.hang, self.free = gap, hang, free
        self.task_ids: list[str] = []
        self.host = P2PHost(self.identity.secret, ["/ip4/127.0.0.1/tcp/0"], on_inbound_stream=self._on_stream)
        self.streamed: list[bool] = []
        self._serving: set[asyncio.Task[None]] = set()

    def _on_stream(self, stream: FrameStream, first: bytes) -> None:
        task = asyncio.create_task(self._serve(stream, first))
        self._serving.add(task)
        task.add_done_callback(self._serving.discard)

    async def _serve(self, stream: FrameStream, first: bytes) -> None:
        body = decode(TASK_TOPIC, first).body
        assert isinstance(body, TaskBody)
        self.task_ids.append(body.task_id)
        self.streamed.append(bool(body.stream))
        await asyncio.sleep(self.answer_after)
        reason = "" if self.status is AnswerStatus.ACCEPTED else "no_capacity"
        await stream.send(encode_frame_body(StreamAnswer(task_id=body.task_id, status=self.status, reason=reason)))
        if self.status is not AnswerStatus.ACCEPTED:
            await stream.close()
            return
        for delta in self.deltas:
            await stream.send(encode_frame_body(Progress(task_id=body.task_id, delta=delta)))
            await asyncio.sleep(self.gap)
        if self.hang:
            await asyncio.sleep(3600)
        now = time.time_ns()
        result = result_body(
            body.task_id,
            self.claims,
            Output(self.text, body.public_key, 1, self.tokens) if self.error is None else self.error,
            received_at_ns=now,
            started_at_ns=now,
            ended_at_ns=now,
        )
        if self.stats:
            fields = result.stats.model_dump(by_alias=True) | self.stats
            result = result.model_copy(update={"stats": Stats.model_validate(fields)})
        await stream.send(seal(self.identity, RESULTS_TOPIC, encode_body(result)))
        await stream.close()

    def heartbeat(self) -> bytes:
        body = {
            "address": self.identity.address,
            "peerId": self.identity.peer_id,
            "models": ["m"],
            "capacity": {"free": self.free, "max": max(self.free, 1)},
            "pendingTasks": 0,
            "tps": {},
            "version": "0.3.0",
            "timestamp": time.time_ns(),
            "addrs": self.host.listen_addrs,
        }
        return seal(self.identity, HEARTBEAT_TOPIC, json.dumps(body).encode())


@asynccontextmanager
async def client_of(peer: StreamingPeer, answer_timeout: float = 5.0, **settings: Any) -> AsyncIterator[Client]:
    """A started Client (no retries unless `settings` say; `settings`: more of its arguments) whose node
    table holds the started peer's heartbeat."""
    async with client_of_many([peer], answer_timeout, **settings) as client:
        yield client


@asynccontextmanager
async def client_of_many(
    peers: list[StreamingPeer], answer_timeout: float = 5.0, **settings: Any
) -> AsyncIterator[Client]:
    """`client_of` for several peers, connected to each other; the Client's node table holds all their heartbeats."""
    for peer in peers:
        await peer.host.start()
        for topic in (TASK_TOPIC, RESULTS_TOPIC, HEARTBEAT_TOPIC):
            await peer.host.subscribe(topic)
    for peer in peers[1:]:
        await peer.host.connect(peers[0].host.listen_addrs[0])
    settings = {"max_retries": 0} | settings
    client = Client(peers=[peer.host.listen_addrs[0] for peer in peers], answer_timeout=answer_timeout, **settings)
    try:
        await client.start()
        for _ in range(100):
            if len(client.nodes.live()) >= len(peers):
                break
            for peer in peers:
                if (await peer.host.mesh_sizes()).get(HEARTBEAT_TOPIC):
                    await peer.host.publish(HEARTBEAT_TOPIC, peer.heartbeat())
            await asyncio.sleep(0.2)
        assert len(client.nodes.live()) >= len(peers), "the client never saw every peer's heartbeat"
        yield client
    finally:
        await client.close()
        for peer in peers:
            await peer.host.stop()
