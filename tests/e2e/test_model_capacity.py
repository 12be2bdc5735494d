"""A node serving two models says each model's free places in its heartbeats (`modelCapacity`), and they
follow the load: a running task of one model takes that model's place only, and a publisher's table
shows it from the node's next heartbeat."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import pytest

from node.publisher.client import Client, Task
from tests.support.cluster import dialable, node_settings, running_node
from tests.support.model_file import SMOLLM2
from workflows import Simple

pytestmark = pytest.mark.slow

MODEL, OTHER = "smollm2:135m", "smollm2-other"


def long_workflow(items: int = 300) -> dict:
    """A generation the schema forces to be long, so it runs for seconds."""
    workflow = Simple().workflow(prompt="List booleans.", max_tokens=min(8 * items, 980))
    workflow["tasks"][0]["schema"] = json.dumps(
        {"type": "array", "items": {"type": "boolean"}, "minItems": items, "maxItems": items}
    )
    return workflow


async def until(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


async def test_per_model_free_places_follow_the_load_of_each_model(tmp_path) -> None:
    settings = node_settings(
        tmp_path / "node",
        models=[MODEL, OTHER],
        registry={OTHER: {"path": str(SMOLLM2)}},
        max_concurrent=1,
        max_queue=0,
    )
    async with running_node(settings) as node, Client(peers=[dialable(node)]) as client:
        address = node.running.identity.address
        heartbeat = node.running.parts.heartbeat

        def per_model() -> dict[str, tuple[int, int]]:
            places = heartbeat.body().model_capacity or {}
            return {model: (c.free, c.max) for model, c in places.items()}

        def seen() -> tuple[dict[str, int], int] | None:
            """What the client's table holds from the node's last heartbeat (None: nothing yet, or a task of
            ours is still counted off it, so it is not the heartbeat's own figure)."""
            known = client.nodes.get(address)
            return None if known is None or known.reserved else (known.model_free, known.free)

        assert sorted(heartbeat.body().models) == sorted([MODEL, OTHER])
        assert per_model() == {MODEL: (1, 1), OTHER: (1, 1)}
        await until(lambda: seen() == ({MODEL: 1, OTHER: 1}, 2), "the client never saw both models free")

        running = asyncio.create_task(client.execute(Task(workflow=long_workflow(), models=[MODEL]), timeout=120))
        await until(lambda: per_model() == {MODEL: (0, 1), OTHER: (1, 1)}, f"places: {per_model()}")
        body = heartbeat.body()
        assert (body.capacity.free, body.capacity.max) == (1, 2)  # the total, as before
        # The node's next heartbeat reaches the client: its model is full, the other one is not.
        await until(lambda: seen() == ({MODEL: 0, OTHER: 1}, 1), f"the client saw {seen()}")
        known = client.nodes.get(address)
        assert known is not None and (known.free_for([MODEL]), known.free_for([OTHER])) == (0, 1)
        # The other model's place is there to take meanwhile.
        other = await client.execute(Task(workflow=Simple().workflow("Say hi.", max_tokens=8), models=[OTHER]), 60)
        assert other.model == OTHER and not running.done()
        result = await running
        assert result.model == MODEL
        # The result reaches the client as the node's task ends: its place comes back a moment later.
        await until(lambda: per_model() == {MODEL: (1, 1), OTHER: (1, 1)}, f"places after the task: {per_model()}")
        await until(lambda: seen() == ({MODEL: 1, OTHER: 1}, 2), f"the client saw {seen()} after the task")
