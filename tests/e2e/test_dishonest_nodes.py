"""Dishonest nodes on a real network: measured reputation takes away what inflated heartbeats claim."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from contextlib import AsyncExitStack

import pytest

from node.publisher.client import Client, Task
from node.publisher.node_table import NodeTable
from node.publisher.reputation import Reputation
from tests.support.cluster import dialable, node_settings, running_node
from tests.support.dishonest import inflating_node
from workflows import Simple

pytestmark = pytest.mark.slow

MODEL = "smollm2:135m"


async def run_tasks(client: Client, count: int, tag: str) -> Counter[str]:
    """`count` tasks one after another; how many each node answered."""
    served: Counter[str] = Counter()
    for i in range(count):
        task = Task(workflow=Simple().workflow(f"Say {tag} {i}.", max_tokens=16), models=[MODEL])
        served[(await client.execute(task, timeout=60)).node] += 1
    return served


async def wait_for_claims(client: Client, liar: str, count: int, timeout: float = 30) -> None:
    """Until the client sees `count` nodes and the liar's inflated heartbeat."""
    deadline = time.monotonic() + timeout
    while True:
        known = client.nodes.get(liar)
        if len(client.nodes.live()) >= count and known is not None and known.free > 1000:
            return
        assert time.monotonic() < deadline, "the client did not see the inflated heartbeat"
        await asyncio.sleep(0.1)


async def test_an_inflating_node_gets_no_more_than_its_measured_share(tmp_path) -> None:
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(running_node(node_settings(tmp_path / "a")))
        # This honest node claims what its startup benchmark measured.
        await stack.enter_async_context(
            running_node(node_settings(tmp_path / "b", bootstrap=[dialable(first)], startup_benchmark=True))
        )
        liar = await stack.enter_async_context(
            inflating_node(node_settings(tmp_path / "liar", bootstrap=[dialable(first)]))
        )
        address = liar.running.identity.address

        # Before: choice by heartbeat claims alone (a node table without a reputation).
        believing = await stack.enter_async_context(Client(peers=[dialable(first)], node_table=NodeTable()))
        await wait_for_claims(believing, address, 3)
        before = await run_tasks(believing, 8, "before")
        assert before[address] >= 7, before  # free 1024 x 1e6 tok/s outweighs the honest nodes

        # After: the default Client weighs measured service; a short warm-up measures the liar.
        path = tmp_path / "publisher" / "reputation.sqlite3"
        measuring = await stack.enter_async_context(Client(peers=[dialable(first)], reputation_path=path))
        await wait_for_claims(measuring, address, 3)
        # An unseen node is tried as if typical, so a few warm-up tasks measure it (bounded: at most 40), and the
        # honest nodes too: the share compared below is among measured nodes. (Were the liar measured first and
        # alone, the others, unmeasured, would get a tenth of the choices until one answered: ~10 tasks.)
        nodes = [n.address for n in measuring.nodes.live()]
        for round_ in range(10):
            await run_tasks(measuring, 4, f"warm-up {round_}")
            if all(measuring.reputation.view(node).measured_tps is not None for node in nodes):
                break
        after = await run_tasks(measuring, 24, "after")
        view = measuring.reputation.view(address)
        assert view.measured_tps is not None and view.penalty < 0.1, view  # claimed 1e6, measured far less
        honest = [v for v in measuring.reputation.views() if v.address != address]
        # Its measured share: what its measured speed and success would earn it without the claim penalty.
        unpenalised = view.score / view.penalty
        measured_share = unpenalised / (unpenalised + sum(v.score for v in honest))
        share = after[address] / 24
        print("\n".join(v.model_dump_json() for v in measuring.reputation.views()))
        assert all(v.penalty > 0.3 for v in honest), honest  # an honest (benchmarked) claim is not taken for a lie
        print(
            f"inflating node share: before {before[address] / 8:.2f}, after {share:.2f} (measured {measured_share:.2f})"
        )
        assert share <= max(measured_share, 1 / 3), (after, view)

        # The lesson survives a restart of the publisher.
        await measuring.close()
        assert Reputation(path).view(address).penalty == pytest.approx(view.penalty, rel=0.01)
