"""Hostile variants at one live node with default settings (no publisher allow-list): direct-delivery
streams that misbehave after (or instead of) their task, many peer ids at once, tasks whose JSON is
odd, a Sybil flood of valid tasks from many keys, and a peer sending heartbeats and results to the node.
After each attack an honest publisher's task is still accepted and answered, and the node's streams,
routes and memory are back within bounds. (The simpler stream attacks, oversize and bad lengths, a
silent stream, the per-peer limit, are in test_direct_delivery.py; the gossip corpus in test_hostile.py.)
Last, more idle connections from fresh peer ids than py-libp2p holds: the node trims them.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable, MutableMapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
import structlog

from node.daemon.server import NodeServer
from node.p2p.connection_trim import ConnectionBudget
from node.p2p.frame_stream import FrameStream
from node.p2p.frames import encode_frame, encode_varint
from node.p2p.host import P2PError, P2PHost
from node.p2p.streams import StreamLimits
from node.wire.direct import decode_answer, frame_kind
from node.wire.ecies import decrypt
from node.wire.envelope import seal
from node.wire.identity import Identity
from node.wire.inbound import decode
from node.wire.messages import ResultBody
from node.wire.topics import HEARTBEAT_TOPIC, RESULTS_TOPIC, TASK_TOPIC
from tests.support.cluster import dialable, node_settings, running_node
from tests.support.connection_flood import connection_flood
from tests.support.live_hostile import connected_peer, rss_bytes
from workflows import Simple

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

MODEL = "smollm2:135m"
STREAMS_MAX = 24  # the node's total stream limit here (default 256): three attacker ids fill it
STREAMS_PER_PEER = 8
MAX_RSS_GROWTH_BYTES = 150 * 1024 * 1024
ANSWER_WAIT_S = 15.0
RESULT_WAIT_S = 60.0
RECIPIENT = Identity.generate()
LIBP2P_MAX_CONNECTIONS = 300
FLOOD_PEERS = 320  # past py-libp2p's 300 live connections and its 250 inbound slots
CRASH_EVENTS = {"validator failed", "task crashed", "direct task intake failed", "inbound stream handler failed"}
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


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def scene(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Scene]:
    settings = node_settings(
        tmp_path_factory.mktemp("node"),
        n_ctx=512,
        max_concurrent=1,
        max_queue=4,
        direct_streams_max=STREAMS_MAX,
        direct_streams_per_peer=STREAMS_PER_PEER,
        reject_log_window=0,
    )
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


async def test_silent_streams_from_many_peer_ids_do_not_lock_out_an_honest_publisher(scene: Scene) -> None:
    # Each id stays within its per-peer limit; together they fill the node's total.
    ids = [await attacker(scene) for _ in range(STREAMS_MAX // STREAMS_PER_PEER)]
    try:
        silent = [
            await host.open_stream(scene.addr, b"" if i % 2 else encode_varint(1000) + b"{", raw=True)
            for host in ids
            for i in range(STREAMS_PER_PEER)
        ]
        await wait_for(lambda: scene.node.running.host.held_streams == STREAMS_MAX, "the table full")
        # An honest task still gets in: the oldest silent stream makes room, and is told why.
        envelope = task_envelope(scene.identity)
        stream = await scene.honest.open_stream(scene.addr, envelope)
        assert await answer(stream) == ("accepted", "")
        assert await answer(silent[0]) == ("busy", "too_many_streams")
        assert (await stream.receive(RESULT_WAIT_S)) is not None
        await stream.close()
    finally:
        for host in ids:
            await host.stop()
    await honest_task_is_served(scene)


async def test_a_first_frame_dribbled_a_byte_at_a_time_is_cut_off_at_the_first_frame_timeout(scene: Scene) -> None:
    host = await attacker(scene)
    try:
        stream = await host.open_stream(scene.addr, encode_varint(5000) + b"{", raw=True)
        started = time.monotonic()
        status: tuple[str, str] | None = None
        for _ in range(60):  # one byte (an empty frame) every 0.5 s: the timeout is for the whole frame
            try:
                await stream.send(b"")
            except Exception:  # noqa: BLE001 - the node cut us off
                break
            try:
                status = await answer_soon(stream, 0.5)
            except TimeoutError:
                continue
            break
        if status is None:
            status = await answer(stream)
        assert status == ("rejected", "first_frame_timeout")
        assert time.monotonic() - started < scene.node.settings.direct_first_frame_timeout + 10
    finally:
        await host.stop()
    await honest_task_is_served(scene)


async def answer_soon(stream: FrameStream, timeout: float) -> tuple[str, str]:
    frame = await stream.receive(timeout)
    assert frame is not None
    got = decode_answer(frame)
    return got.status.value, got.reason


async def test_half_closed_after_the_task_the_result_still_comes_on_the_stream(scene: Scene) -> None:
    host = await attacker(scene)
    try:
        envelope = task_envelope(Identity.generate())
        since = len(scene.logs)
        stream = await host.open_stream(scene.addr, envelope)
        assert await answer(stream) == ("accepted", "")
        await stream.close(graceful=True)  # our FIN: we write no more
        await logged(
            scene, since, "result delivered", event="result delivered on its stream", task_id=task_id_of(envelope)
        )
    finally:
        await host.stop()
    await honest_task_is_served(scene)


@pytest.mark.parametrize("how", ["reset", "reset_streaming", "more_frames", "garbage_bytes"])
async def test_a_stream_broken_after_accepted_sends_its_result_on_gossip(scene: Scene, how: str) -> None:
    publisher = Identity.generate()
    host, results = await connected_peer(scene.node, publisher)  # in the results mesh: the result comes there
    try:
        envelope = task_envelope(publisher, max_tokens=48, **({"stream": True} if how == "reset_streaming" else {}))
        task_id = task_id_of(envelope)
        since = len(scene.logs)
        stream = await host.open_stream(scene.addr, envelope)
        assert await answer(stream) == ("accepted", "")
        if how.startswith("reset"):
            await stream.close(graceful=False)
        elif how == "more_frames":
            await stream.send(envelope)  # the same task again, on the same stream (then it is reset)
        else:
            await stream.send(b"\xff\xff\xff garbage")
        while (
            body := decode(RESULTS_TOPIC, (await asyncio.wait_for(results.get(), RESULT_WAIT_S)).data).body
        ).task_id != task_id:
            pass
        assert isinstance(body, ResultBody) and body.ciphertext is not None
        accepted = [e for e in scene.logs[since:] if e["event"] == "task accepted" and e.get("task_id") == task_id]
        assert len(accepted) == 1
    finally:
        await host.stop()
    await honest_task_is_served(scene)


async def test_a_streaming_task_whose_reader_never_reads_costs_the_node_nothing(scene: Scene) -> None:
    host = await attacker(scene)
    token = host._token  # the attacker's Trio thread: blocked below, it reads nothing at all
    assert token is not None
    try:
        envelope = task_envelope(Identity.generate(), prompt="Tell a long story.", max_tokens=200, stream=True)
        since = len(scene.logs)
        stream = await host.open_stream(scene.addr, envelope)
        assert await answer(stream) == ("accepted", "")
        frozen_until = time.monotonic() + 8.0
        token.run_sync_soon(time.sleep, 8.0)  # no read, no window update, no FIN for 8 s
        await honest_task_is_served(scene)  # meanwhile, the node serves others
        task_id = task_id_of(envelope)
        finished = ("result delivered on its stream", "result published")
        await wait_for(
            lambda: any(e["event"] in finished and e.get("task_id") == task_id for e in scene.logs[since:]),
            "the ignored stream's task finished",
            RESULT_WAIT_S,
        )
        await asyncio.sleep(max(frozen_until - time.monotonic(), 0) + 0.5)  # the attacker's thread wakes up
    finally:
        await host.stop()
    await honest_task_is_served(scene)


# Odd JSON: each is answered on its stream, never crashes the node. (The task ids here are fresh.)
ODD_BODIES: dict[str, tuple[Callable[[str], str], tuple[str, str]]] = {
    "lone_surrogate_in_prompt": (
        lambda s: s.replace('"model"', '"prompt": "\\ud800", "model"', 1),
        ("rejected", "bad_body"),
    ),
    "lone_surrogate_in_model": (lambda s: s.replace(f'"{MODEL}"', '"\\udfff"', 1), ("rejected", "bad_body")),
    "number_1e309_in_workflow": (
        lambda s: s.replace('"config": {', '"config": {"x": 1e309, ', 1),
        ("rejected", "bad_body"),
    ),
    "integer_of_5000_digits": (
        lambda s: s.replace('"config": {', '"config": {"x": ' + "9" * 5000 + ", ", 1),
        ("rejected", "bad_body"),
    ),
    "deadline_nan": (lambda s: s.replace('"deadline": ', '"deadline": NaN, "d": ', 1), ("rejected", "bad_body")),
    "models_10000": (lambda s: s.replace(f'["{MODEL}"]', json.dumps([MODEL] * 10_000), 1), ("rejected", "bad_body")),
    "nested_5000_deep": (
        lambda s: s.replace('"config": {', '"config": {"x": ' + "[" * 5000 + "]" * 5000 + ", ", 1),
        ("rejected", "bad_body"),
    ),
    "deadline_far_future": (
        lambda s: s.replace('"deadline": ', '"deadline": 9223372036854775807, "d": ', 1),
        ("ignored", "deadline_too_far"),
    ),
    "deadline_past": (lambda s: s.replace('"deadline": ', '"deadline": 1, "d": ', 1), ("ignored", "deadline_passed")),
    "deadline_huge_int": (
        lambda s: s.replace('"deadline": ', '"deadline": 18446744073709551616, "d": ', 1),
        ("rejected", "bad_body"),
    ),
    # Signed by one key, the result encrypted to another's: the signer is the publisher, the key only a recipient.
    "public_key_of_another_key": (
        lambda s: re.sub(r'"publicKey": "[0-9a-f]+"', f'"publicKey": "{RECIPIENT.public_key_compressed.hex()}"', s),
        ("accepted", ""),
    ),
    # Duplicate keys: the last one counts, the same for every reader of these bytes.
    "duplicate_task_id_key": (
        lambda s: s.replace('{"taskId": ', '{"taskId": "first", "taskId": ', 1),
        ("accepted", ""),
    ),
}


@pytest.mark.parametrize("name", sorted(ODD_BODIES))
async def test_odd_json_in_a_task_gets_a_clear_answer(scene: Scene, name: str) -> None:
    edit, expected = ODD_BODIES[name]
    publisher = Identity.generate()
    body = {
        "taskId": secrets.token_urlsafe(12),
        "deadline": time.time_ns() + 60 * 10**9,
        "input": {"workflow": Simple().workflow("Say OK.", max_tokens=4), "model": [MODEL]},
        "publicKey": publisher.public_key_compressed.hex(),
    }
    text = edit(json.dumps(body))
    assert text != json.dumps(body), "the edit changed nothing"
    host = await attacker(scene)
    try:
        stream = await host.open_stream(scene.addr, seal(publisher, TASK_TOPIC, text.encode()))
        assert await answer(stream) == expected
        if expected[0] == "accepted":
            frame = await stream.receive(RESULT_WAIT_S)
            assert frame is not None
            result = decode(RESULTS_TOPIC, frame).body
            assert isinstance(result, ResultBody) and result.ciphertext is not None
            reader = RECIPIENT if name == "public_key_of_another_key" else publisher
            assert decrypt(reader.secret, bytes.fromhex(result.ciphertext)).strip()
        await stream.close()
    finally:
        await host.stop()
    await honest_task_is_served(scene)


async def test_a_workflow_of_thousands_of_tiny_steps_is_bounded_by_max_steps(scene: Scene) -> None:
    steps: list[dict[str, Any]] = []
    edges: list[dict[str, str]] = []
    workflow: dict[str, Any] = {
        "config": {"max_steps": 50, "max_time": 20, "tools": []},
        "tasks": steps,
        "steps": edges,
        "return_value": {"input": {"type": "input", "key": "__input"}},
    }
    while len(json.dumps(workflow)) < 170 * 1024:
        i = len(steps)
        steps.append(
            {
                "id": f"t{i}",
                "name": "n",
                "description": "d",
                "messages": [{"role": "user", "content": "x"}],
                "operator": "end",
            }
        )
        edges.append({"source": f"t{i}", "target": f"t{i + 1}"})
    edges[-1]["target"] = "_end"
    publisher = Identity.generate()
    body = {
        "taskId": secrets.token_urlsafe(12),
        "deadline": time.time_ns() + 60 * 10**9,
        "input": {"workflow": workflow, "model": [MODEL], "prompt": "p"},
        "publicKey": publisher.public_key_compressed.hex(),
    }
    host = await attacker(scene)
    try:
        stream = await host.open_stream(scene.addr, seal(publisher, TASK_TOPIC, json.dumps(body).encode()))
        assert await answer(stream) == ("accepted", "")
        frame = await stream.receive(RESULT_WAIT_S)
        assert frame is not None
        result = decode(RESULTS_TOPIC, frame).body
        assert isinstance(result, ResultBody)
        assert result.error is not None and result.error.startswith("max_steps exceeded: 50 task executions done")
    finally:
        await host.stop()
    await honest_task_is_served(scene)


async def test_a_sybil_flood_of_valid_tasks_is_bounded_by_capacity_and_answered_busy(scene: Scene) -> None:
    """Many keys, one task each (within any per-key limit): admission bounds the total (1 running +
    4 waiting); every further task is answered busy at once and journalled nowhere."""
    admission = scene.node.running.parts.admission
    host = await attacker(scene)
    try:
        streams = [
            await host.open_stream(scene.addr, task_envelope(Identity.generate(), max_tokens=32)) for _ in range(16)
        ]
        answers = [await answer(stream) for stream in streams]
        accepted = [s for s, a in zip(streams, answers, strict=True) if a == ("accepted", "")]
        assert {a for a in answers if a[0] != "accepted"} <= {("busy", "no_capacity")}
        assert 1 <= len(accepted) <= 5 and answers.count(("busy", "no_capacity")) == 16 - len(accepted)
        assert admission.pending <= 5
        for stream in accepted:
            assert (await stream.receive(RESULT_WAIT_S)) is not None
    finally:
        await host.stop()
    await honest_task_is_served(scene)


async def test_heartbeats_and_results_sent_to_the_node_are_refused_or_relayed_never_acted_on(scene: Scene) -> None:
    peer, _ = await connected_peer(scene.node, Identity.generate())
    liar = Identity.generate()
    node_address = scene.node.running.identity.address
    since = len(scene.logs)
    try:
        forged_result = {
            "taskId": "forged",
            "error": "busy: forged",
            "model": MODEL,
            "stats": {
                k: time.time_ns() for k in ("receivedAt", "publishedAt", "executionStartedAt", "executionEndedAt")
            },
        }
        # A heartbeat naming the node's own address, signed by another key; a result claiming to be the node's.
        heartbeat = {
            "address": node_address,
            "peerId": scene.node.running.host.peer_id,
            "models": [MODEL],
            "capacity": {"free": 0, "max": 0},
            "pendingTasks": 0,
            "tps": {},
            "version": "0.3.0",
            "timestamp": time.time_ns(),
        }
        await peer.publish(HEARTBEAT_TOPIC, seal(liar, HEARTBEAT_TOPIC, json.dumps(heartbeat).encode()))
        await peer.publish(RESULTS_TOPIC, seal(liar, RESULTS_TOPIC, json.dumps(forged_result).encode()))
        await logged(scene, since, "heartbeat rejected", 10, event="message rejected", reason="identity_mismatch")
        # The same on a stream: not a task, answered and closed.
        for topic, body in ((HEARTBEAT_TOPIC, heartbeat), (RESULTS_TOPIC, forged_result)):
            stream = await peer.open_stream([dialable(scene.node)], seal(liar, topic, json.dumps(body).encode()))
            assert await answer(stream) == ("rejected", "topic_mismatch")
            await stream.close()
        stream = await peer.open_stream([dialable(scene.node)], encode_frame(b"{}"), raw=True)
        assert (await answer(stream))[0] == "rejected"
        await stream.close()
    finally:
        await peer.stop()
    assert not any(e.get("task_id") == "forged" for e in scene.logs[since:])
    await honest_task_is_served(scene)


async def test_idle_connections_from_many_peer_ids_are_trimmed_and_new_peers_still_connect(scene: Scene) -> None:
    """More peer ids than py-libp2p's caps (300 live, 250 inbound slots in all) connect and idle:
    the node trims the oldest idle ones, and an honest publisher still connects and is served."""
    host = scene.node.running.host
    async with connection_flood(dialable(scene.node), FLOOD_PEERS) as flood:
        await wait_for(lambda: flood.settled, "the flood's dials", 90)
        assert flood.connected >= 250, flood  # the flood really filled the node's connection slots
        fresh = P2PHost(Identity.generate().secret, ["/ip4/127.0.0.1/tcp/0"], stream_limits=ATTACKER_LIMITS)
        await fresh.start()
        try:
            # A trim comes within the grace period (10 s) and a check interval: dial until then.
            stream: FrameStream | None = None
            deadline = time.monotonic() + 40
            while stream is None and time.monotonic() < deadline:
                try:
                    stream = await fresh.open_stream(scene.addr, task_envelope(Identity.generate()), timeout=10)
                except P2PError:
                    await asyncio.sleep(1.0)
            assert stream is not None, "no new peer could connect while the flood's connections idled"
            assert await answer(stream) == ("accepted", "")
            assert (await stream.receive(RESULT_WAIT_S)) is not None
            await stream.close()
        finally:
            await fresh.stop()
        # Trimmed down to the budget once the flood's connections are past their grace (its hosts may
        # redial later, py-libp2p's auto-connector: those are trimmed again after theirs).
        counts = [len(await host.peers())]
        deadline = time.monotonic() + 30
        while counts[-1] > ConnectionBudget().high_water and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            counts.append(len(await host.peers()))
        assert counts[-1] <= ConnectionBudget().high_water, counts
        assert max(counts) <= LIBP2P_MAX_CONNECTIONS
    await honest_task_is_served(scene)
