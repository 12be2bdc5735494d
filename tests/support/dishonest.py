"""Dishonest nodes for tests: real nodes that lie in their heartbeats."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from config.settings import Settings
from node.daemon.server import NodeServer
from node.publisher.heartbeat_claims import MAX_CAPACITY, MAX_TPS
from node.wire.messages import Capacity, HeartbeatBody
from tests.support.cluster import running_node


@asynccontextmanager
async def inflating_node(
    settings: Settings, free: int = MAX_CAPACITY, tps: float = MAX_TPS
) -> AsyncIterator[NodeServer]:
    """A real node whose every heartbeat claims `free` places and `tps` tokens/s for each model
    (the most a publisher's clamps let through); it serves tasks as an honest node would."""
    async with running_node(settings) as server:
        heartbeat = server.running.parts.heartbeat
        honest_body = heartbeat.body

        def inflated() -> HeartbeatBody:
            body = honest_body()
            return body.model_copy(
                update={"capacity": Capacity(free=free, max=free), "tps": dict.fromkeys(body.models, tps)}
            )

        setattr(heartbeat, "body", inflated)  # noqa: B010 (the instance's method, for this node only)
        await heartbeat.publish_once()
        yield server
