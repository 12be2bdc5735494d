"""Hostile tasks and peers at one live node with default settings (no publisher allow-list): odd JSON, a
workflow of thousands of tiny steps, a Sybil flood of valid tasks from many keys, heartbeats and results
sent to the node, and more idle connections from fresh peer ids than py-libp2p holds. After each an
honest publisher's task is still served. (The gossip corpus is in test_hostile.py.)"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio

from node.daemon.acceptance import COMPACT_SLACK
from node.p2p.connection_trim import ConnectionBudget
from node.p2p.frame_stream import FrameStream
from node.p2p.frames import encode_frame
from node.p2p.host import P2PError, P2PHost
from node.wire.ecies import decrypt
from node.wire.envelope import seal
from node.wire.identity import Identity
from node.wire.inbound import decode
from node.wire.messages import ResultBody
from node.wire.topics import HEARTBEAT_TOPIC, RESULTS_TOPIC, TASK_TOPIC
from tests.support.cluster import dialable
from tests.support.connection_flood import connection_flood
from tests.support.hostile_scene import (
    ATTACKER_LIMITS,
    FLOOD_PEERS,
    LIBP2P_MAX_CONNECTIONS,
    MODEL,
    RECIPIENT,
    RESULT_WAIT_S,
    Scene,
    answer,
    attacker,
    honest_task_is_served,
    hostile_scene,
    logged,
    task_envelope,
    task_id_of,
    wait_for,
)
from tests.support.live_hostile import connected_peer
from workflows import Simple

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

REPLAYS = 200  # past the seen tasks' slack (COMPACT_SLACK)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def scene(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Scene]:
    async with hostile_scene(tmp_path_factory.mktemp("node")) as shared:
        yield shared


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


# Envelope versions of odd digits: past Python's 4,300-digit int-from-text limit, or of another script.
ODD_VERSIONS = {
    "major_5000_digits": "0" * 5000 + ".3.0",
    "minor_5000_digits": "0." + "0" * 4999 + "3.0",
    "arabic_indic_digits": "\u0660.\u0663.0",
}


@pytest.mark.parametrize("name", sorted(ODD_VERSIONS))
async def test_odd_digits_in_the_envelope_version_are_rejected_on_a_stream_and_on_gossip(
    scene: Scene, name: str
) -> None:
    publisher = Identity.generate()
    envelope = json.loads(task_envelope(publisher))
    envelope["version"] = ODD_VERSIONS[name]
    data = json.dumps(envelope).encode()
    peer, _ = await connected_peer(scene.node, publisher)
    since = len(scene.logs)
    try:
        stream = await peer.open_stream(scene.addr, data)
        assert await answer(stream) == ("rejected", "version_mismatch")
        await stream.close()
        await peer.publish(TASK_TOPIC, data)
        await logged(scene, since, "the gossip copy rejected", 15, event="message rejected", reason="version_mismatch")
    finally:
        await peer.stop()
    await honest_task_is_served(scene)


async def test_a_frame_whose_checks_fail_unexpectedly_is_answered_and_its_stream_freed(
    scene: Scene, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever a check raises (a bug the frame's bytes trigger), the stream is answered and closed at once,
    not held for its lifetime (an hour) against the node's stream limits."""
    direct = scene.node.running.parts.direct

    async def broken(frame: bytes, arrived_ns: int) -> Any:
        raise RuntimeError("a bug in a check")

    monkeypatch.setattr(direct._checks, "task", broken)
    host = await attacker(scene)
    try:
        streams = [await host.open_stream(scene.addr, task_envelope(Identity.generate())) for _ in range(3)]
        assert [await answer(stream) for stream in streams] == [("rejected", "internal")] * 3
    finally:
        await host.stop()
        monkeypatch.undo()
    failed = [e for e in scene.logs if e["event"] == "direct task checks failed"]
    assert len(failed) == 1  # one traceback a window, however many frames
    scene.logs.remove(failed[0])  # meant here: the scene's end checks that nothing crashed
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
    # Long answers: no admitted task may end (and free its place) while the 16 streams open, or more than
    # 5 are admitted in all. A short one lasted ~0.1 s with llama.cpp's AMX kernels.
    long_task = {"prompt": "Write a long story about the sea, chapter by chapter.", "max_tokens": 256}
    try:
        streams = [
            await host.open_stream(scene.addr, task_envelope(Identity.generate(), **long_task)) for _ in range(16)
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


async def test_a_busy_task_replayed_on_stream_after_stream_leaves_no_state_per_replay(scene: Scene) -> None:
    """A task answered busy is forgotten (it may come back). One signed task replayed while the node is busy
    (paused here) is answered busy each time, and the node keeps no entry per replay until its deadline."""
    seen = scene.node.running.parts.intake.acceptance.seen
    envelope = task_envelope(Identity.generate())
    scene.node.pause.pause()
    host = await attacker(scene)
    try:
        for _ in range(REPLAYS):
            stream = await host.open_stream(scene.addr, envelope)
            assert await answer(stream) == ("busy", "paused")
            await stream.close()
    finally:
        scene.node.pause.resume()
        await host.stop()
    assert task_id_of(envelope) not in seen
    assert len(seen._by_deadline) <= 2 * len(seen) + COMPACT_SLACK
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
