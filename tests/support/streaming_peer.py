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
    `error`: an error result in place of `text`."""

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
    ) -> None:
        self.identity = Identity.generate()
        self.deltas, self.text, self.tokens = deltas, text, tokens
        self.stats, self.claims, self.error = stats or {}, claims, error
        self.answer_after, self.status = answer_after, status
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
        self.streamed.append(bool(body.stream))
        await asyncio.sleep(self.answer_after)
        reason = "" if self.status is AnswerStatus.ACCEPTED else "no_capacity"
        await stream.send(encode_frame_body(StreamAnswer(task_id=body.task_id, status=self.status, reason=reason)))
        if self.status is not AnswerStatus.ACCEPTED:
            await stream.close()
            return
        for delta in self.deltas:
            await stream.send(encode_frame_body(Progress(task_id=body.task_id, delta=delta)))
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
            "capacity": {"free": 1, "max": 1},
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
    await peer.host.start()
    for topic in (TASK_TOPIC, RESULTS_TOPIC, HEARTBEAT_TOPIC):
        await peer.host.subscribe(topic)
    settings = {"max_retries": 0} | settings
    client = Client(peers=[peer.host.listen_addrs[0]], answer_timeout=answer_timeout, **settings)
    try:
        await client.start()
        for _ in range(100):
            if client.nodes.live():
                break
            if (await peer.host.mesh_sizes()).get(HEARTBEAT_TOPIC):
                await peer.host.publish(HEARTBEAT_TOPIC, peer.heartbeat())
            await asyncio.sleep(0.2)
        assert client.nodes.live(), "the client never saw the peer's heartbeat"
        yield client
    finally:
        await client.close()
        await peer.host.stop()
