"""One live node with default settings (no publisher allow-list) shared by a hostile-variant test module,
and what those tests ask of it: an attacker host, odd task envelopes, answers, and the check that an
honest publisher is still served after each attack (tests/e2e/test_hostile_streams.py, test_hostile_tasks.py)."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable, MutableMapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from node.daemon.server import NodeServer
from node.p2p.frame_stream import FrameStream
from node.p2p.host import P2PHost
from node.p2p.streams import StreamLimits
from node.wire.direct import decode_answer, frame_kind
from node.wire.envelope import seal
from node.wire.identity import Identity
from node.wire.inbound import decode
from node.wire.messages import ResultBody
from node.wire.topics import RESULTS_TOPIC, TASK_TOPIC
from tests.support.cluster import dialable, node_settings, running_node
from tests.support.live_hostile import rss_bytes
from workflows import Simple

MODEL = "smollm2:135m"
STREAMS_MAX = 24  # the node's total stream limit here (default 256): three attacker ids fill it
STREAMS_PER_PEER = 8
MAX_RSS_GROWTH_BYTES = 150 * 1024 * 1024
ANSWER_WAIT_S = 15.0
RESULT_WAIT_S = 60.0
RECIPIENT = Identity.generate()
LIBP2P_MAX_CONNECTIONS = 300
FLOOD_PEERS = 320  # past py-libp2p's 300 live connections and its 250 inbound slots
CRASH_EVENTS = {
    "validator failed",
    "task crashed",
    "direct task checks failed",
    "direct task intake failed",
    "inbound stream handler failed",
}
ATTACKER_LIMITS = StreamLimits(max_streams=4096, max_streams_per_peer=1024)


@dataclass
class Scene:
    node: NodeServer
    honest: P2PHost
    identity: Identity
    logs: list[MutableMapping[str, Any]]
    rss_start: int

    @property
    def addr(self) -> list[str]:
        return [dialable(self.node)]


@asynccontextmanager
async def hostile_scene(data_dir: Path, **overrides: Any) -> AsyncIterator[Scene]:
    """A node in `data_dir` (`overrides`: settings) and an honest publisher's host; at the end, no crash
    may have been logged."""
    fields: dict[str, Any] = {
        "n_ctx": 512,
        "max_concurrent": 1,
        "max_queue": 4,
        "direct_streams_max": STREAMS_MAX,
        "direct_streams_per_peer": STREAMS_PER_PEER,
        "reject_log_window": 0,
    }
    settings = node_settings(data_dir, **(fields | overrides))
    with structlog.testing.capture_logs() as logs:
        async with AsyncExitStack() as stack:
            node = await stack.enter_async_context(running_node(settings))
            identity = Identity.generate()
            honest = P2PHost(identity.secret, ["/ip4/127.0.0.1/tcp/0"], stream_limits=ATTACKER_LIMITS)
            await honest.start()
            stack.push_async_callback(honest.stop)
            yield Scene(node, honest, identity, logs, rss_bytes())
    crashes = [e for e in logs if e.get("log_level") in ("error", "critical") or e["event"] in CRASH_EVENTS]
    assert crashes == [], crashes[:5]


def task_envelope(identity: Identity, *, prompt: str = "Say OK.", max_tokens: int = 8, **fields: Any) -> bytes:
    body: dict[str, Any] = {
        "taskId": secrets.token_urlsafe(12),
        "deadline": time.time_ns() + 90 * 10**9,
        "input": {"workflow": Simple().workflow(prompt, max_tokens=max_tokens), "model": [MODEL]},
        "publicKey": identity.public_key_compressed.hex(),
    }
    body.update(fields)
    return seal(identity, TASK_TOPIC, json.dumps(body).encode())


def task_id_of(envelope: bytes) -> str:
    body = decode(TASK_TOPIC, envelope).body
    return str(body.task_id)  # type: ignore[union-attr]


async def answer(stream: FrameStream) -> tuple[str, str]:
    frame = await stream.receive(ANSWER_WAIT_S)
    assert frame is not None, "the stream ended without an answer"
    got = decode_answer(frame)
    return got.status.value, got.reason


async def attacker(scene: Scene) -> P2PHost:
    host = P2PHost(Identity.generate().secret, ["/ip4/127.0.0.1/tcp/0"], stream_limits=ATTACKER_LIMITS)
    await host.start()
    return host


async def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} not within {timeout} s"
        await asyncio.sleep(0.1)


async def logged(scene: Scene, since: int, what: str, timeout: float = RESULT_WAIT_S, **match: Any) -> None:
    def seen() -> bool:
        return any(all(e.get(k) == v for k, v in match.items()) for e in scene.logs[since:])

    await wait_for(seen, what, timeout)


async def honest_task_is_served(scene: Scene) -> None:
    """An honest publisher's task on a stream: accepted at once, its result on the same stream; then
    nothing of the attack is left: streams, routes and answering tasks back to none."""
    envelope = task_envelope(scene.identity)
    stream = await scene.honest.open_stream(scene.addr, envelope)
    try:
        assert await answer(stream) == ("accepted", "")
        frame = await stream.receive(RESULT_WAIT_S)
        assert frame is not None and frame_kind(frame) == "envelope"
        result = decode(RESULTS_TOPIC, frame).body
        assert isinstance(result, ResultBody) and result.ciphertext is not None
        assert result.task_id == task_id_of(envelope)
    finally:
        await stream.close()
    running = scene.node.running
    await wait_for(lambda: running.host.held_streams == 0 and running.host.open_streams == 0, "streams freed")
    assert len(running.parts.direct._routes) == 0
    assert rss_bytes() - scene.rss_start < MAX_RSS_GROWTH_BYTES
