"""A task id is not owned: a peer that sees a publisher's task on gossip can send a task of its own under
that id (the publisher's public key, its own workflow) to the picked node first. The node runs that one and
ignores the publisher's as a duplicate (PROTOCOL.md: a task id runs at most once per node), and the result,
signed by the picked node and encrypted to the publisher's key, was accepted as the publisher's answer.

Now a node names the address that signed the task in the result's `stats` (`publisher`), and a publisher
takes no result of a task it did not sign; nor does it wait out its attempt timeout for the answer that node
will never give (TaskIdTakenError at once: a call's next attempt, under a new id, goes to another node). A real
node in this process, a gossip publisher, and a relay between them that holds the publisher's task back until
it has squatted its id.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from node.p2p.host import P2PHost
from node.publisher.client import Client, Task
from node.publisher.errors import TaskIdTakenError
from node.publisher.gossip_peers import GossipPeerSettings
from node.wire.envelope import seal
from node.wire.identity import Identity
from node.wire.inbound import decode
from node.wire.topics import HEARTBEAT_TOPIC, RESULTS_TOPIC, TASK_TOPIC
from tests.support.cluster import dialable, node_settings, running_node

pytestmark = pytest.mark.slow

MODEL = "smollm2:135m"


def returns(text: str) -> dict[str, Any]:
    """A workflow whose result is `text`, without a model call."""
    return {
        "config": {"max_steps": 5, "max_time": 30, "max_tokens": 8},
        "tasks": [{"id": "a", "operator": "end", "messages": []}, {"id": "_end", "operator": "end", "messages": []}],
        "steps": [{"source": "a", "target": "_end"}],
        "return_value": {"input": {"type": "string", "key": text}},
    }


async def test_a_task_of_another_key_under_our_task_id_is_never_taken_as_our_answer(tmp_path: Path) -> None:
    async with running_node(node_settings(tmp_path / "node", heartbeat_interval=1.0, n_ctx=512, parallel=2)) as node:
        address = dialable(node)
        loop = asyncio.get_running_loop()
        held: asyncio.Queue[bytes] = asyncio.Queue()
        squatter = Identity.generate()

        def hold(topic: str, data: bytes) -> bool:  # the relay keeps the publisher's task, relays nothing yet
            loop.call_soon_threadsafe(held.put_nowait, data)
            return False

        relay = P2PHost(squatter.secret, ["/ip4/127.0.0.1/tcp/0"])
        await relay.start()
        await relay.subscribe(TASK_TOPIC, hold)
        await relay.subscribe(RESULTS_TOPIC)
        await relay.subscribe(HEARTBEAT_TOPIC)
        await relay.connect(address)

        async def squat() -> None:
            genuine = await held.get()
            body = json.loads(decode(TASK_TOPIC, genuine).signed.body)
            body["input"] = {"workflow": returns("SQUATTED"), "model": [MODEL]}  # same id, the publisher's key
            stream = await relay.open_stream([address], seal(squatter, TASK_TOPIC, json.dumps(body).encode()), 5.0)
            await stream.receive(5.0)  # accepted
            result = await stream.receive(5.0)  # the node's signed result envelope, as it would go on gossip
            assert result is not None
            await stream.close()
            await relay.publish(RESULTS_TOPIC, result)  # on gossip, where the publisher hears it
            await asyncio.sleep(0.5)
            await relay.publish(TASK_TOPIC, genuine)  # the node ignores it now: a duplicate id

        client = Client(
            peers=[relay.listen_addrs[0]],
            delivery="gossip",
            max_retries=0,
            gossip_peers=GossipPeerSettings(min_peers=1, max_peers=1),
        )
        try:
            await client.start()
            for _ in range(100):
                if client.nodes.live():
                    break
                await asyncio.sleep(0.1)
            squatting = asyncio.create_task(squat())
            # It took "SQUATTED" (signed by the picked node), then waited out the attempt timeout (4 s). The only
            # node ran the squatter's task under our id, and no retry is allowed: the call fails at once.
            with pytest.raises(TaskIdTakenError) as caught:
                await client.execute(Task(workflow=returns("GENUINE"), models=[MODEL]), timeout=8)
            assert caught.value.node == node.running.identity.address.lower().removeprefix("0x")
            await squatting
        finally:
            await client.close()
            await relay.stop()
