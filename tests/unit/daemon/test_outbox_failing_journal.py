"""The outbox when SQLite refuses the journal's writes (a full disk, an I/O error): no result is lost,
none is sent twice, no stream is left waiting; real journal, real libp2p hosts on 127.0.0.1.

Writes are refused two ways, both real SQLite errors on the journal's own connection: its page limit
(SQLITE_FULL, "database or disk is full", as a full disk gives) and an authorizer that denies UPDATEs
(for a write that frees pages, which no page limit refuses)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from node.daemon.journal import Journal, TaskState
from node.daemon.outbox import ResultOutbox
from node.daemon.unjournalled import UnjournalledResults
from node.p2p.frame_stream import FrameStream
from node.p2p.handoff import GossipMessage
from node.p2p.host import P2PHost
from node.wire.identity import Identity
from node.wire.inbound import decode
from node.wire.messages import ResultBody
from node.wire.results import Output, result_body
from node.wire.topics import RESULTS_TOPIC
from tests.support.p2p_hosts import LOOPBACK, WAIT_S, wait_for_mesh, wait_for_mesh_to_empty

DEADLINE_NS = 60 * 10**9
BIG = "x" * 40_000  # a result that needs new pages of the journal's file


@dataclass
class Scene:
    node: Identity
    publisher: Identity
    host: P2PHost
    listener: P2PHost
    received: asyncio.Queue[GossipMessage]
    journal: Journal
    streams: asyncio.Queue[FrameStream]


@pytest.fixture
async def scene(tmp_path: Path) -> AsyncIterator[Scene]:
    node, publisher = Identity.generate(), Identity.generate()
    journal = Journal.open(tmp_path / "journal.sqlite3")
    streams: asyncio.Queue[FrameStream] = asyncio.Queue()
    host = P2PHost(node.secret, [LOOPBACK], on_inbound_stream=lambda stream, first: streams.put_nowait(stream))
    listener = P2PHost(publisher.secret, [LOOPBACK])
    await host.start()
    await listener.start()
    try:
        await host.subscribe(RESULTS_TOPIC)
        received = await listener.subscribe(RESULTS_TOPIC)
        await listener.connect(host.listen_addrs[0])
        await wait_for_mesh(host, RESULTS_TOPIC, 1)
        yield Scene(node, publisher, host, listener, received, journal, streams)
    finally:
        await listener.stop()
        await host.stop()
        journal.close()


def disk_full(journal: Journal) -> None:
    conn: sqlite3.Connection = journal._conn
    conn.execute(f"PRAGMA max_page_count = {conn.execute('PRAGMA page_count').fetchone()[0]}")


def disk_back(journal: Journal) -> None:
    journal._conn.execute("PRAGMA max_page_count = 1073741823")


def refuse_updates(journal: Journal) -> None:
    def authorize(action: int, *_: object) -> int:
        return sqlite3.SQLITE_DENY if action == sqlite3.SQLITE_UPDATE else sqlite3.SQLITE_OK

    journal._conn.set_authorizer(authorize)


def allow_updates(journal: Journal) -> None:
    journal._conn.set_authorizer(None)


def accept(scene: Scene, task_id: str) -> None:
    now = time.time_ns()
    scene.journal.record_accepted(task_id, scene.publisher.address, now + DEADLINE_NS, "m", b"{}", now)


def result(scene: Scene, task_id: str, text: str = BIG) -> ResultBody:
    now = time.time_ns()
    output = Output(text, scene.publisher.public_key_compressed.hex(), prompt_tokens=1, completion_tokens=1)
    return result_body(task_id, "m", output, received_at_ns=now, started_at_ns=now, ended_at_ns=now)


async def gossiped(scene: Scene) -> list[str]:
    """Task ids of the results the publisher got on gossip, waiting a little for late ones (at most 20)."""
    ids: list[str] = []
    while len(ids) < 20:
        try:
            message = await asyncio.wait_for(scene.received.get(), 0.5)
        except TimeoutError:
            return ids
        ids.append(decode(RESULTS_TOPIC, message.data).body.task_id)
    return ids


async def test_a_result_the_full_disk_refuses_is_published_and_journalled_once_there_is_room(scene: Scene) -> None:
    outbox = ResultOutbox(scene.node, scene.host, scene.journal, retry_interval_s=0.05)
    accept(scene, "t1")
    disk_full(scene.journal)
    errors = scene.journal.errors

    assert await outbox.send(result(scene, "t1"), ledger_entry='["its ledger row"]') is True  # at once, from memory
    assert await gossiped(scene) == ["t1"]
    assert scene.journal.state("t1") == TaskState.ACCEPTED  # the journal could not take it
    assert "t1" in outbox.unjournalled
    assert scene.journal.errors > errors
    assert "database or disk is full" in (scene.journal.failing() or "")

    assert await outbox.flush() == 0  # still refused: held, and not published again
    assert await gossiped(scene) == []

    disk_back(scene.journal)
    await outbox.flush()
    assert scene.journal.state("t1") == TaskState.PUBLISHED
    assert scene.journal.ledger_entries() == ['["its ledger row"]']  # kept with it: a kill now loses no row
    assert len(outbox.unjournalled) == 0
    assert await outbox.flush() == 0
    assert await gossiped(scene) == [], "the result went out twice"


async def test_a_result_kept_for_want_of_peers_on_a_full_disk_goes_out_when_a_peer_comes(scene: Scene) -> None:
    outbox = ResultOutbox(scene.node, scene.host, scene.journal, retry_interval_s=0.05)
    await scene.listener.stop()  # no peer: nothing can go out yet
    await wait_for_mesh_to_empty(scene.host, RESULTS_TOPIC)  # the node may not have seen it go yet
    accept(scene, "t1")
    disk_full(scene.journal)
    assert await outbox.send(result(scene, "t1")) is False
    assert "t1" in outbox.unjournalled and outbox.unjournalled.to_publish()[0].task_id == "t1"

    publisher = P2PHost(scene.publisher.secret, [LOOPBACK])
    await publisher.start()
    try:
        received = await publisher.subscribe(RESULTS_TOPIC)
        await publisher.connect(scene.host.listen_addrs[0])
        await wait_for_mesh(scene.host, RESULTS_TOPIC, 1)
        runner = asyncio.create_task(outbox.run())
        try:
            message = await asyncio.wait_for(received.get(), WAIT_S)
            assert decode(RESULTS_TOPIC, message.data).body.task_id == "t1"
            disk_back(scene.journal)
            for _ in range(100):
                if scene.journal.state("t1") == TaskState.PUBLISHED:
                    break
                await asyncio.sleep(0.05)
            assert scene.journal.state("t1") == TaskState.PUBLISHED
            await asyncio.sleep(0.3)
            assert received.empty(), "the result went out twice"
        finally:
            runner.cancel()
    finally:
        await publisher.stop()


async def test_a_published_result_the_journal_cannot_mark_is_never_published_again(scene: Scene) -> None:
    outbox = ResultOutbox(scene.node, scene.host, scene.journal, retry_interval_s=0.05)
    accept(scene, "t1")
    record_finished = scene.journal.record_finished

    def then_refuse(task_id: str, body: bytes, ledger_entry: str | None = None) -> None:
        record_finished(task_id, body, ledger_entry)  # the disk fails between the result's write and its mark
        refuse_updates(scene.journal)

    scene.journal.record_finished = then_refuse  # type: ignore[method-assign]
    runner = asyncio.create_task(outbox.run())
    try:
        assert await outbox.send(result(scene, "t1", "small")) is True
        assert scene.journal.state("t1") == TaskState.FINISHED and "t1" in outbox.unjournalled
        await asyncio.sleep(0.5)  # ten rounds of the retry loop with the row still FINISHED
        assert await gossiped(scene) == ["t1"], "a result the journal could not mark was published again"
        allow_updates(scene.journal)
        for _ in range(100):
            if scene.journal.state("t1") == TaskState.PUBLISHED:
                break
            await asyncio.sleep(0.05)
        assert scene.journal.state("t1") == TaskState.PUBLISHED and len(outbox.unjournalled) == 0
    finally:
        runner.cancel()


async def test_a_direct_result_the_journal_refuses_reaches_its_stream_and_frees_its_route(scene: Scene) -> None:
    outbox = ResultOutbox(scene.node, scene.host, scene.journal, retry_interval_s=0.05)
    publisher_side = await scene.listener.open_stream(scene.host.listen_addrs, b"task")
    node_side = await asyncio.wait_for(scene.streams.get(), WAIT_S)
    outbox.routes.add("t1", node_side).answered.set()
    accept(scene, "t1")
    disk_full(scene.journal)

    assert await outbox.send(result(scene, "t1")) is True
    frame = await publisher_side.receive(WAIT_S)
    assert frame is not None and decode(RESULTS_TOPIC, frame).body.task_id == "t1"
    assert "t1" not in outbox.routes
    assert await outbox.flush() == 0
    assert await gossiped(scene) == [], "a result delivered on its stream went on gossip too"

    disk_back(scene.journal)
    await outbox.flush()
    assert scene.journal.state("t1") == TaskState.PUBLISHED


def test_held_results_are_bounded() -> None:
    held = UnjournalledResults(max_held=3)
    for i in range(5):
        held.hold_published(f"t{i}")
    assert len(held) == 3 and "t0" not in held and "t1" not in held and "t4" in held
