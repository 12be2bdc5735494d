"""`GET /v1/nodes` shows each node's places per model (`model_capacity`) from its heartbeat's `modelCapacity`,
as the publisher keeps them: clamped, for the models it lists, our tasks counted off; absent when its
heartbeat said none. The rest of the listing is as before (the field is additive)."""

from __future__ import annotations

import random
from pathlib import Path

import httpx

from node.gateway.server import Gateway
from node.wire.identity import Identity
from node.wire.messages import HeartbeatBody
from tests.support.gateway_net import gateway_over_silent_peer
from tests.support.heartbeats import signed_heartbeat

PER_MODEL = Identity(random.Random("per-model").randbytes(32))
TOTAL_ONLY = Identity(random.Random("total-only").randbytes(32))


def hear(
    gateway: Gateway, identity: Identity, models: list[str], places: dict[str, dict[str, int]] | None = None
) -> None:
    inbound = signed_heartbeat(identity, models, free=4, model_capacity=places)
    assert isinstance(inbound.body, HeartbeatBody)
    assert gateway.service.client.nodes.update(inbound.sender, inbound.body, envelope=inbound.signed.envelope)


async def test_nodes_list_per_model_places_clamped_and_only_when_the_heartbeat_says_them(tmp_path: Path) -> None:
    hostile = {
        "a": {"free": 10**12, "max": 10**12},  # clamped to the table's 1024
        "b": {"free": 0, "max": 2},  # full (a negative number is no valid heartbeat)
        "unlisted": {"free": 3, "max": 3},  # a model the node does not list: ignored
    }
    async with gateway_over_silent_peer(tmp_path) as gateway:
        hear(gateway, PER_MODEL, ["a", "b"], hostile)
        hear(gateway, TOTAL_ONLY, ["a"])
        gateway.service.client.nodes.reserve(PER_MODEL.address, ["a"])  # a task of ours on `a`, still running
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
            listed = {node["address"]: node for node in (await http.get("/v1/nodes")).json()["nodes"]}
            schema = (await http.get("/openapi.json")).json()["components"]["schemas"]["NodeView"]
    per_model, total_only = listed[PER_MODEL.address], listed[TOTAL_ONLY.address]
    assert per_model["model_capacity"] == {"a": {"free": 1023, "max": 1024}, "b": {"free": 0, "max": 2}}
    assert per_model["capacity"] == {"free": 3, "max": 4}
    assert "model_capacity" not in total_only  # absent, not null: its heartbeat did not say them
    assert set(total_only) == {"address", "peer_id", "models", "capacity", "tps", "last_heartbeat", "reputation"}
    assert total_only["capacity"] == {"free": 4, "max": 4} and total_only["models"] == ["a"]
    assert "model_capacity" in schema["properties"] and "model_capacity" not in schema.get("required", [])
