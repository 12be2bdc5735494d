"""The gateway's listings under a Sybil flood: 2,000 real signed heartbeats from new keys, each claiming
64 models. What one request builds is bounded (nodes, peers, models, reputation rows), and the node this
gateway measured serving is always listed."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from node.gateway.dria_sdk.service import MAX_LISTING_BYTES
from node.gateway.server import Gateway
from node.gateway.service import MAX_LISTED_MODELS, MAX_LISTED_NODES
from node.wire.identity import Identity
from node.wire.messages import HeartbeatBody
from tests.support.gateway_net import gateway_over_silent_peer
from tests.support.heartbeats import signed_heartbeat

FAKES = 2_000
HONEST = Identity(random.Random("honest").randbytes(32))


def hear(gateway: Gateway, identity: Identity, models: list[str]) -> None:
    inbound = signed_heartbeat(identity, models)
    assert isinstance(inbound.body, HeartbeatBody)
    nodes = gateway.service.client.nodes
    assert nodes.update(inbound.sender, inbound.body, envelope=inbound.signed.envelope)


@pytest.fixture
async def flooded(tmp_path: Path) -> AsyncIterator[tuple[Gateway, httpx.AsyncClient]]:
    async with gateway_over_silent_peer(tmp_path) as gateway:
        hear(gateway, HONEST, ["honest-model"])
        gateway.service.client.reputation.record_result(HONEST.address, 1.0, 30, 0.8, 40.0)
        for i in range(FAKES):  # the table's 16 MiB hold ~1,800 of them: the oldest go (not the measured one)
            hear(gateway, Identity(random.Random(i).randbytes(32)), [f"junk-{i}-{k}" for k in range(64)])
        async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as http:
            yield gateway, http


async def test_nodes_peers_and_models_listed_are_bounded_and_keep_the_measured_node(
    flooded: tuple[Gateway, httpx.AsyncClient],
) -> None:
    gateway, http = flooded
    live = len(gateway.service.client.nodes.live())
    assert live > MAX_LISTED_NODES
    nodes = (await http.get("/v1/nodes")).json()
    assert len(nodes["nodes"]) == MAX_LISTED_NODES and nodes["total"] == live
    assert HONEST.address in {n["address"] for n in nodes["nodes"]}
    peers = (await http.get("/rpc/get_alive_peers")).json()["data"]["results"]
    # 64 model names a heartbeat: a megabyte's worth is ~540 of them, fewer than MAX_LISTED_NODES
    assert 0 < len(peers) < MAX_LISTED_NODES and MAX_LISTING_BYTES - 4096 < sum(map(len, peers)) <= MAX_LISTING_BYTES
    assert HONEST.peer_id in {json.loads(peer)["peer_id"] for peer in peers}  # measured serving: listed first
    models = [card["id"] for card in (await http.get("/v1/models")).json()["data"]]
    assert len(models) == MAX_LISTED_MODELS and "honest-model" in models
    assert (await http.get("/healthz")).json()["nodes"] == live


async def test_the_reputation_listing_is_bounded_and_keeps_the_node_that_answered(
    flooded: tuple[Gateway, httpx.AsyncClient],
) -> None:
    gateway, http = flooded
    reputation = gateway.service.client.reputation
    for i in range(FAKES):  # each key was tried once and declined: a row each, later than the honest answer
        reputation.record_declined(Identity(random.Random(i).randbytes(32)).address)
    listed = (await http.get("/v1/reputation")).json()
    assert listed["total"] == FAKES + 1 == len(reputation)
    assert len(listed["nodes"]) == MAX_LISTED_NODES
    assert listed["nodes"][0]["address"] == HONEST.address  # the best score, and listed first of all
