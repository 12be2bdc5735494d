"""The result outbox with a real journal and real libp2p hosts on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from node.identity import Identity
from node.inbound import RESULTS_TOPIC, decode
from node.journal import Journal, TaskState
from node.messages import Stats
from node.outbox import ResultOutbox
from node.p2p import P2PHost
from node.results import error_body

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]


def body(task_id: str):  # type: ignore[no-untyped-def]
    now = time.time_ns()
    return error_body(task_id, "m", "a reason", Stats(received_at=now, execution_started_at=now,
                                                      execution_ended_at=now, published_at=now))


async def test_kept_without_peers_then_published_once_when_a_peer_joins(tmp_path: Path) -> None:
    node, publisher = Identity.generate(), Identity.generate()
    journal = Journal.open(tmp_path / "journal.sqlite3")
    host, listener = P2PHost(node.secret, LOOPBACK), P2PHost(publisher.secret, LOOPBACK)
    await host.start()
    await listener.start()
    try:
        await host.subscribe(RESULTS_TOPIC)
        received = await listener.subscribe(RESULTS_TOPIC)
        outbox = ResultOutbox(node, host, journal, retry_interval_s=0.1, retention_s=0, prune_interval_s=0.2)
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
