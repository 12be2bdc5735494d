"""The result outbox with a real journal and real libp2p hosts on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest
import structlog
import structlog.testing

from node.daemon.journal import Journal, TaskState
from node.daemon.outbox import ResultOutbox
from node.p2p.frame_stream import FrameStream
from node.p2p.host import P2PHost
from node.wire.identity import Identity
from node.wire.inbound import decode
from node.wire.messages import ResultBody, encode_body
from node.wire.results import Output, result_body
from node.wire.topics import RESULTS_TOPIC

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]


def body(task_id: str):  # type: ignore[no-untyped-def]
    now = time.time_ns()
    return result_body(task_id, "m", "a reason", received_at_ns=now, started_at_ns=now, ended_at_ns=now)


async def test_kept_without_peers_then_published_once_when_a_peer_joins(tmp_path: Path) -> None:
    node, publisher = Identity.generate(), Identity.generate()
    journal = Journal.open(tmp_path / "journal.sqlite3")
    host, listener = P2PHost(node.secret, LOOPBACK), P2PHost(publisher.secret, LOOPBACK)
    await host.start()
    await listener.start()
    try:
        await host.subscribe(RESULTS_TOPIC)
        received = await listener.subscribe(RESULTS_TOPIC)
        outbox = ResultOutbox(node, host, journal, grace_s=0, retry_interval_s=0.1, prune_interval_s=0.2)
        deadline = time.time_ns() + 60 * 10**9
        journal.record_accepted("t1", publisher.address, deadline, "m", b"{}", time.time_ns())
        assert await outbox.send(body("t1")) is False  # nobody to send to: kept
        assert journal.backlog() == 1

        runner = asyncio.create_task(outbox.run())
        await listener.connect(host.listen_addrs[0])
        message = await asyncio.wait_for(received.get(), timeout=10)
        inbound = decode(RESULTS_TOPIC, message.data)
        assert inbound.sender == node.address and inbound.body.task_id == "t1"
        assert journal.get("t1").state == TaskState.PUBLISHED and journal.backlog() == 0

        # Sent once: a flush after publication sends nothing more.
        assert await outbox.flush() == 0
        await asyncio.sleep(0.3)
        assert received.empty()

        # An entry past its deadline (plus a retention of 0) is pruned by the running loop; t1 is not yet.
        journal.record_accepted("old", publisher.address, time.time_ns() - 10**9, "m", b"{}", time.time_ns())
        for _ in range(50):
            if journal.get("old") is None:
                break
            await asyncio.sleep(0.1)
        assert journal.get("old") is None and journal.get("t1") is not None
        runner.cancel()
    finally:
        await listener.stop()
        await host.stop()
        journal.close()


async def connected(
    tmp_path: Path, **host_options: Any
) -> tuple[Identity, Identity, P2PHost, P2PHost, asyncio.Queue, Journal]:  # type: ignore[type-arg]
    node, publisher = Identity.generate(), Identity.generate()
    journal = Journal.open(tmp_path / "journal.sqlite3")
    host, listener = P2PHost(node.secret, LOOPBACK, **host_options), P2PHost(publisher.secret, LOOPBACK)
    await host.start()
    await listener.start()
    await host.subscribe(RESULTS_TOPIC)
    received = await listener.subscribe(RESULTS_TOPIC)
    await listener.connect(host.listen_addrs[0])
    for _ in range(100):
        if (await host.mesh_sizes()).get(RESULTS_TOPIC):
            break
        await asyncio.sleep(0.1)
    return node, publisher, host, listener, received, journal


def success(task_id: str, publisher: Identity, plaintext: str):  # type: ignore[no-untyped-def]
    now = time.time_ns()
    output = Output(plaintext, publisher.public_key_compressed.hex(), prompt_tokens=1, completion_tokens=1)
    return result_body(task_id, "m", output, received_at_ns=now, started_at_ns=now, ended_at_ns=now)


async def test_oversize_result_becomes_a_result_too_large_error(tmp_path: Path) -> None:
    node, publisher, host, listener, received, journal = await connected(tmp_path)
    try:
        outbox = ResultOutbox(node, host, journal)
        deadline = time.time_ns() + 60 * 10**9
        secret_text = "SECRET-" * 20_000  # 140 kB of plaintext: its ciphertext hex and base64 pass 256 KiB
        journal.record_accepted("big", publisher.address, deadline, "m", b"{}", time.time_ns())
        assert await outbox.send(success("big", publisher, secret_text)) is True
        inbound = decode(RESULTS_TOPIC, (await asyncio.wait_for(received.get(), timeout=10)).data)
        assert isinstance(inbound.body, ResultBody) and inbound.body.task_id == "big"
        assert inbound.body.ciphertext is None and inbound.body.error is not None
        assert inbound.body.error.startswith("result too large: ") and "SECRET" not in inbound.body.error
        assert journal.get("big").state == TaskState.PUBLISHED

        # A small one right after still goes out as it is.
        journal.record_accepted("small", publisher.address, deadline, "m", b"{}", time.time_ns())
        assert await outbox.send(success("small", publisher, "fine")) is True
        inbound = decode(RESULTS_TOPIC, (await asyncio.wait_for(received.get(), timeout=10)).data)
        assert inbound.body.task_id == "small" and inbound.body.ciphertext is not None
    finally:
        await listener.stop()
        await host.stop()
        journal.close()


async def test_oversize_result_kept_in_the_journal_is_fitted_when_flushed(tmp_path: Path) -> None:
    node, publisher, host, listener, received, journal = await connected(tmp_path)
    try:
        deadline = time.time_ns() + 60 * 10**9
        journal.record_accepted("kept", publisher.address, deadline, "m", b"{}", time.time_ns())
        # As an older node (without the size check) left it: too large to seal.
        journal.record_finished("kept", encode_body(success("kept", publisher, "x" * 140_000)))
        outbox = ResultOutbox(node, host, journal)
        assert await outbox.flush() == 1
        inbound = decode(RESULTS_TOPIC, (await asyncio.wait_for(received.get(), timeout=10)).data)
        assert inbound.body.error is not None and inbound.body.error.startswith("result too large")
        assert journal.backlog() == 0
    finally:
        await listener.stop()
        await host.stop()
        journal.close()


async def test_a_result_that_fails_to_publish_is_dropped_once_and_the_loop_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node, publisher, host, listener, received, journal = await connected(tmp_path)
    try:
        deadline = time.time_ns() + 60 * 10**9
        for task_id in ("bad", "good"):
            journal.record_accepted(task_id, publisher.address, deadline, "m", b"{}", time.time_ns())
            journal.record_finished(task_id, encode_body(body(task_id)))
        journal.record_accepted("garbled", publisher.address, deadline, "m", b"{}", time.time_ns())
        journal.record_finished("garbled", b"not a result body")
        real_publish = host.publish

        async def publish(topic: str, data: bytes, *, require_mesh: bool = False) -> None:
            if b"bad" in base64.b64decode(json.loads(data)["payload"]):
                raise RuntimeError("a bug in one result's path")
            await real_publish(topic, data, require_mesh=require_mesh)

        monkeypatch.setattr(host, "publish", publish)
        outbox = ResultOutbox(node, host, journal, retry_interval_s=0.05)
        runner = asyncio.create_task(outbox.run())
        inbound = decode(RESULTS_TOPIC, (await asyncio.wait_for(received.get(), timeout=10)).data)
        assert inbound.body.task_id == "good"
        for _ in range(50):
            if journal.backlog() == 0:
                break
            await asyncio.sleep(0.05)
        assert journal.get("bad").state == TaskState.DROPPED
        assert journal.get("garbled").state == TaskState.DROPPED
        assert journal.get("good").state == TaskState.PUBLISHED
        assert not runner.done()
        # After a restart nothing is retried: a fresh outbox on the same journal has nothing to send.
        assert await ResultOutbox(node, host, journal).flush() == 0
        runner.cancel()
    finally:
        await listener.stop()
        await host.stop()
        journal.close()


async def test_a_result_on_its_way_to_its_stream_is_not_also_published_on_gossip(tmp_path: Path) -> None:
    """The retry loop runs while the result waits to be written to its stream (here: the answer
    frame is slow to go out, as on a loaded node); it must leave that result alone, or the
    publisher gets it twice (stream and gossip) and every node of the network pays for the copy."""
    inbound_streams: asyncio.Queue[FrameStream] = asyncio.Queue()
    node, publisher, host, listener, received, journal = await connected(
        tmp_path, on_inbound_stream=lambda stream, first: inbound_streams.put_nowait(stream)
    )
    runner: asyncio.Task[None] | None = None
    try:
        publisher_side = await listener.open_stream(host.listen_addrs, b"task")
        node_side = await asyncio.wait_for(inbound_streams.get(), 10)
        outbox = ResultOutbox(node, host, journal, retry_interval_s=0.05)
        route = outbox.routes.add("t1", node_side)
        journal.record_accepted("t1", publisher.address, time.time_ns() + 60 * 10**9, "m", b"{}", time.time_ns())
        runner = asyncio.create_task(outbox.run())
        sending = asyncio.create_task(outbox.send(body("t1")))
        await asyncio.sleep(1.0)  # twenty rounds of the retry loop while the answer is held up
        route.answered.set()
        assert await asyncio.wait_for(sending, 10) is True
        frame = await publisher_side.receive(10)
        assert frame is not None and decode(RESULTS_TOPIC, frame).body.task_id == "t1"
        assert journal.get("t1").state == TaskState.PUBLISHED
        await asyncio.sleep(0.5)
        assert received.empty(), "the result went on gossip as well as on its stream"
    finally:
        if runner is not None:
            runner.cancel()
        await listener.stop()
        await host.stop()
        journal.close()


async def test_a_result_is_stamped_when_sent_and_waits_for_no_flush_nor_other_result(tmp_path: Path) -> None:
    """`send` stamps and encodes a result once and publishes it at once, even while a flush runs or other results
    are on their way; a flush leaves a result that `send` holds alone, so it goes out once."""
    node, publisher, host, listener, received, journal = await connected(tmp_path)
    try:
        outbox = ResultOutbox(node, host, journal)
        deadline = time.time_ns() + 60 * 10**9
        journal.record_accepted("now", publisher.address, deadline, "m", b"{}", time.time_ns())
        before = time.time_ns()
        assert await outbox.send(success("now", publisher, "at once")) is True
        inbound = decode(RESULTS_TOPIC, (await asyncio.wait_for(received.get(), timeout=10)).data)
        assert isinstance(inbound.body, ResultBody) and inbound.body.task_id == "now"
        assert before <= inbound.body.stats.published_at <= time.time_ns()

        journal.record_accepted("beside", publisher.address, deadline, "m", b"{}", time.time_ns())
        async with outbox._flush_lock:  # a flush is running (it may wait for its peers for long)
            assert await asyncio.wait_for(outbox.send(success("beside", publisher, "not held")), 10) is True
        inbound = decode(RESULTS_TOPIC, (await asyncio.wait_for(received.get(), timeout=10)).data)
        assert isinstance(inbound.body, ResultBody) and inbound.body.task_id == "beside"

        # Results of concurrent tasks go out side by side; a flush meanwhile finds each in hand and sends none.
        ids = [f"side{i}" for i in range(8)]
        for task_id in ids:
            journal.record_accepted(task_id, publisher.address, deadline, "m", b"{}", time.time_ns())
        sending = [asyncio.create_task(outbox.send(success(task_id, publisher, task_id))) for task_id in ids]
        await asyncio.sleep(0)  # each has journalled its result and is publishing it
        assert journal.backlog() == len(ids) and await outbox.flush() == 0
        assert await asyncio.gather(*sending) == [True] * len(ids)
        got = [decode(RESULTS_TOPIC, (await asyncio.wait_for(received.get(), 10)).data).body.task_id for _ in ids]
        assert sorted(got) == sorted(ids) and journal.backlog() == 0
        await asyncio.sleep(0.3)
        assert received.empty(), "a result went out twice"

        # Dropped for room while on its way (a node long without peers): it went out; the send says so.
        journal.record_accepted("late", publisher.address, deadline, "m", b"{}", time.time_ns())
        with structlog.testing.capture_logs() as logs:
            sending_late = asyncio.create_task(outbox.send(success("late", publisher, "dropped meanwhile")))
            await asyncio.sleep(0)
            journal.mark_dropped("late")
            assert await sending_late is True
        assert [e["event"] for e in logs if e["log_level"] == "error"] == [
            "result published but not marked in the journal"
        ]
        assert journal.get("late").state == TaskState.DROPPED
        inbound = decode(RESULTS_TOPIC, (await asyncio.wait_for(received.get(), timeout=10)).data)
        assert isinstance(inbound.body, ResultBody) and inbound.body.task_id == "late"
    finally:
        await listener.stop()
        await host.stop()
        journal.close()
