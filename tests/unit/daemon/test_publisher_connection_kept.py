"""A node past its peer budget trims idle inbound connections (node/p2p/connection_trim.py), but not the publisher's
while its task is on the node: that connection may be the publisher's only route into gossip, and trimmed, the
publisher takes its node for gone. Real hosts: the task goes publisher -> relay -> node on gossip, through the
daemon's gate, intake and admission, and the node holds the task's signer (`kept_peers`) until the task ends."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path

from node.daemon.acceptance import Acceptance, SeenTasks
from node.daemon.admission import AcceptedTask, Admission
from node.daemon.intake import TaskIntake
from node.daemon.journal import Journal
from node.ops.metrics import NodeMetrics
from node.p2p.connection_trim import ConnectionBudget
from node.p2p.errors import P2PError
from node.p2p.host import P2PHost
from node.wire.envelope import seal
from node.wire.identity import Identity
from node.wire.inbound import GossipGate
from node.wire.topics import TASK_TOPIC
from tests.support.p2p_hosts import LOOPBACK

MODEL = "m"
# A node over its high water with one peer more than the relay it dialled; a new connection kept 1 s.
BUDGET = ConnectionBudget(high_water=1, low_water=0, grace_s=1.0, check_interval_s=0.2)


class HeldRunner:
    """Runs each task until `release` (a generation)."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def run(self, accepted: AcceptedTask) -> None:
        self.started.set()
        await self.release.wait()

    async def abandon(self, accepted: AcceptedTask, reason: str) -> None:
        raise AssertionError(f"the task was abandoned: {reason}")


async def test_the_publisher_of_a_running_task_keeps_its_connection_to_a_node_past_its_budget(tmp_path: Path) -> None:
    node_key, publisher_key = Identity.generate(), Identity.generate()
    relay = P2PHost(Identity.generate().secret, [LOOPBACK])
    node = P2PHost(node_key.secret, [LOOPBACK])
    node._service._options = node._service._options.model_copy(update={"connection_budget": BUDGET})
    publisher = P2PHost(publisher_key.secret, [LOOPBACK], gossip_with_stream_peers=False)  # as Client makes it
    runner = HeldRunner()
    admission = Admission(runner.run, runner.abandon, {MODEL: 1}, 0, kept_peers=node.kept_peers)
    journal = Journal.open(tmp_path / "journal.sqlite3")
    acceptance = Acceptance(node_key.address, [MODEL], seen=SeenTasks(100))
    intake = TaskIntake(acceptance, admission, journal, runner, NodeMetrics(), 10.0)  # type: ignore[arg-type]
    reading: asyncio.Task[None] | None = None
    try:
        for host in (relay, node, publisher):
            await host.start()
        await relay.subscribe(TASK_TOPIC)
        reading = asyncio.create_task(intake.run(await node.subscribe(TASK_TOPIC, GossipGate().check)))
        await publisher.relay(TASK_TOPIC)
        await node.connect(relay.listen_addrs[0])  # outbound at the node: never trimmed
        await publisher.connect(relay.listen_addrs[0])
        assert await node.wait_for_mesh(TASK_TOPIC, 10) and await publisher.wait_for_mesh(TASK_TOPIC, 10)

        body = {
            "taskId": "kept",
            "deadline": time.time_ns() + 60 * 10**9,
            "input": {"workflow": {}, "model": [MODEL]},
            "publicKey": publisher_key.public_key_compressed.hex(),
        }
        await publisher.publish(TASK_TOPIC, seal(publisher_key, TASK_TOPIC, json.dumps(body).encode()))
        await asyncio.wait_for(runner.started.wait(), 10)  # it came through the relay
        assert node.kept_peers.current == {publisher_key.public_key_compressed}

        # The publisher dials the node (a stream dial that opened no stream, as in "stream not open in time;
        # sending on gossip"): an idle inbound connection there, outside the node's mesh.
        with contextlib.suppress(P2PError):  # this node serves no streams: the connection stays, idle
            await publisher.open_stream(node.listen_addrs, b"{}", timeout=2.0)
        assert publisher.peer_id in await node.peers()
        await asyncio.sleep(BUDGET.grace_s + 10 * BUDGET.check_interval_s)  # past its grace, many trim rounds
        assert node.trimmed_peers == 0, "the publisher of a running task was trimmed"
        assert publisher.peer_id in await node.peers()

        runner.release.set()  # its result is handed out: the publisher is an idle peer like any other
        for _ in range(50):
            if node.trimmed_peers:
                break
            await asyncio.sleep(0.1)
        assert node.kept_peers.current == frozenset()
        assert node.trimmed_peers == 1 and publisher.peer_id not in await node.peers()
    finally:
        runner.release.set()
        if reading is not None:
            reading.cancel()
        await admission.drain(5.0)
        await asyncio.gather(*(host.stop() for host in (publisher, node, relay)), return_exceptions=True)
        journal.close()
