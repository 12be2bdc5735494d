"""Capacity through the whole node: one running, one queued, the third refused at once as busy."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from node.publisher.client import Client, Task, TaskFailedError
from tests.support.cluster import dialable, node_settings, running_node
from workflows import Simple

pytestmark = pytest.mark.slow


async def test_third_simultaneous_task_is_busy_while_the_first_two_complete(tmp_path) -> None:
    settings = node_settings(tmp_path / "node", max_concurrent=1, max_queue=1)
    async with running_node(settings) as node, Client(peers=[dialable(node)]) as client:
        workflow = Simple().workflow("List booleans.", max_tokens=800)
        workflow["tasks"][0]["schema"] = json.dumps(
            {"type": "array", "items": {"type": "boolean"}, "minItems": 100, "maxItems": 100}
        )
        picked = [node.running.identity.address]
        ids = [await client.submit(Task(workflow=workflow, models=["*"], nodes=picked), timeout=60) for _ in range(3)]
        started = time.monotonic()
        outcomes = await asyncio.gather(
            *(client.wait(i, timeout=60, nodes=picked) for i in ids), return_exceptions=True
        )
        busy = [o for o in outcomes if isinstance(o, TaskFailedError)]
        done = [o for o in outcomes if not isinstance(o, BaseException)]
        assert len(done) == 2 and len(busy) == 1, outcomes
        assert busy[0].reason.startswith("busy: model smollm2:135m has 1 running and 1 queued tasks")
        assert busy[0].task_id == ids[2]
        # The refusal is immediate, not after the others finished.
        refusal_ms = (node.running.parts.admission.capacity(), time.monotonic() - started)
        assert refusal_ms[1] < 60
        assert node.running.parts.admission.capacity() == (2, 2)
