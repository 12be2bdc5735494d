"""Hostile direct-delivery streams at one live node with default settings (no publisher allow-list):
silent streams from many peer ids, a dribbled first frame, half-close, a stream broken after `accepted`,
a streaming task whose reader never reads. After each an honest publisher's task is still served and the
node's streams, routes and memory are back within bounds. (Oversize frames, bad lengths and the per-peer
limit are in test_direct_delivery.py.)"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from benchmarks.direct_decode import largest_frame
from node.p2p.frame_stream import FrameStream
from node.p2p.frames import encode_frame, encode_varint
from node.wire.direct import decode_answer, frame_kind
from node.wire.identity import Identity
from node.wire.inbound import decode
from node.wire.messages import ResultBody
from node.wire.topics import MAX_FRAME_BYTES, MAX_MESSAGE_BYTES, RESULTS_TOPIC, TASK_TOPIC
from tests.support.hostile_scene import (
    RESULT_WAIT_S,
    STREAMS_MAX,
    STREAMS_PER_PEER,
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

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def scene(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Scene]:
    async with hostile_scene(tmp_path_factory.mktemp("node")) as shared:
        yield shared


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


async def test_the_largest_first_frames_from_many_peer_ids_are_each_answered_and_the_node_keeps_serving(
    scene: Scene,
) -> None:
    # Frames at the 256 KiB limit, valid but for a model the node does not host: each is checked whole
    # (off the event loop), answered `ignored`, and costs the node nothing after its answer.
    frame = largest_frame(Identity.generate(), model="nope:1b")
    assert len(frame) > MAX_MESSAGE_BYTES - 1024
    ids = [await attacker(scene) for _ in range(STREAMS_MAX // STREAMS_PER_PEER)]
    try:
        streams = [await host.open_stream(scene.addr, frame) for host in ids for _ in range(STREAMS_PER_PEER)]
        answers = await asyncio.gather(*(answer(stream) for stream in streams))
        assert {status for status, _ in answers} == {"ignored"}, answers[:3]
        for stream in streams:
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


async def test_a_gossip_publishers_envelope_sent_first_on_another_peers_stream_still_answers_the_publisher(
    scene: Scene,
) -> None:
    # Anyone may send a node an envelope it saw on gossip. The result went only to the stream it came on,
    # and the publisher's own copy, a duplicate by then, was ignored: the publisher never got its result.
    publisher = Identity.generate()
    host, results = await connected_peer(scene.node, publisher)
    other = await attacker(scene)
    try:
        envelope = task_envelope(publisher)
        task_id = task_id_of(envelope)
        stream = await other.open_stream(scene.addr, envelope)
        assert await answer(stream) == ("accepted", "")
        await host.publish(TASK_TOPIC, envelope)  # the publisher's copy, now a duplicate for the node
        frame = await stream.receive(RESULT_WAIT_S)
        assert frame is not None and frame_kind(frame) == "envelope"  # the forwarder still gets it
        await stream.close()
        while (
            body := decode(RESULTS_TOPIC, (await asyncio.wait_for(results.get(), RESULT_WAIT_S)).data).body
        ).task_id != task_id:
            pass
        assert isinstance(body, ResultBody) and body.ciphertext is not None
    finally:
        await other.stop()
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
    token = host._trio.token  # the attacker's Trio thread: blocked below, it reads nothing at all
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


# Streams a peer can open as fast as it likes, each refused or answered without a task run: every one was
# an info line (a gossip rejection is logged once a window per reason), so one peer could fill the disk.
FLOOD_FRAMES = {
    "not_an_envelope": (encode_frame(b"{}"), "direct task rejected"),
    "oversize_length": (encode_varint(MAX_FRAME_BYTES + 1), "stream answered before its task was read"),
    "two_frames": (encode_frame(b"{}") * 2, "stream answered before its task was read"),
}
FLOOD_STREAMS = 40


async def test_a_flood_of_refused_streams_is_logged_once_a_window_per_reason(tmp_path: Path) -> None:
    async with hostile_scene(tmp_path / "node", reject_log_window=60.0) as scene:
        host = await attacker(scene)
        since = len(scene.logs)
        try:
            for data, _ in FLOOD_FRAMES.values():
                for _ in range(FLOOD_STREAMS):
                    stream = await host.open_stream(scene.addr, data, raw=True)
                    assert (await answer(stream))[0] == "rejected"
                    await stream.close()
            scene.node.pause.pause()  # busy: valid tasks for this node, answered busy
            for _ in range(FLOOD_STREAMS):
                stream = await host.open_stream(scene.addr, task_envelope(Identity.generate()))
                assert await answer(stream) == ("busy", "paused")
                await stream.close()
        finally:
            scene.node.pause.resume()
            await host.stop()
        events = [e["event"] for e in scene.logs[since:]]
        for event in {event for _, event in FLOOD_FRAMES.values()} | {"task busy"}:
            assert events.count(event) <= len(FLOOD_FRAMES), (event, events.count(event))
        await honest_task_is_served(scene)
