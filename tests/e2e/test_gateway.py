"""The gateway end to end: two real nodes (SmolLM2 on llama.cpp) and a gateway on 127.0.0.1,
driven over real HTTP with httpx, as curl would."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from config.settings import ConfigError
from node.gateway.app import create_gateway_app
from node.gateway.server import Gateway
from node.gateway.settings import GatewaySettings
from node.ops.http_api import HttpServer
from node.wire.ecies import decrypt
from node.wire.identity import Identity
from tests.support.gateway_net import GatewayNet, gateway_net
from workflows import Simple

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

KEY = "test-key-0123456789abcdef"
OTHER_KEY = "other-key-0123456789abcdef"
TIGHT_KEY = "tight-key-0123456789abcdef"
MODEL = "smollm2:135m"


@dataclass
class Net(GatewayNet):
    http: httpx.AsyncClient


def simple_task(prompt: str = "Hey there!", max_tokens: int = 16, **extra: Any) -> dict[str, Any]:
    return {"workflow": Simple().workflow(prompt=prompt, max_tokens=max_tokens), "models": [MODEL], **extra}


def gateway_settings(data_dir: Path, peers: list[str], **overrides: Any) -> GatewaySettings:
    values: dict[str, Any] = {"data_dir": data_dir, "peers": peers, "port": 0, "api_keys": [KEY, OTHER_KEY]}
    values.update(overrides)
    return GatewaySettings.load(**values)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def net(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Net]:
    async with gateway_net(tmp_path_factory, gateway_settings, max_queue=16) as base:
        headers = {"Authorization": f"Bearer {KEY}"}
        async with httpx.AsyncClient(base_url=base.gateway.url, headers=headers, timeout=60) as http:
            await wait_for_nodes(http, 2)
            yield Net(base.nodes, base.gateway, base.tmp, http)


async def wait_for_nodes(http: httpx.AsyncClient, count: int) -> list[dict[str, Any]]:
    """The gateway's node list once it has seen `count` heartbeats."""
    deadline = time.monotonic() + 20
    while True:
        nodes = (await http.get("/v1/nodes")).json()["nodes"]
        if len(nodes) >= count or time.monotonic() > deadline:
            return nodes
        await asyncio.sleep(0.1)


@asynccontextmanager
async def extra_app(net: Net, **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A second HTTP API with other settings over the same gateway service (no second peer needed)."""
    settings = gateway_settings(net.tmp, net.peers, **{"api_keys": [TIGHT_KEY], **overrides})
    server = HttpServer(create_gateway_app(net.gateway.service, settings))
    await server.start("127.0.0.1", 0)
    headers = {"Authorization": f"Bearer {TIGHT_KEY}"} if settings.api_keys else {}
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", headers=headers, timeout=30) as http:
            yield http
    finally:
        await server.stop()


@asynccontextmanager
async def started(gateway: Gateway, timeout: float) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client with KEY to `gateway` (a second one, not yet started), started; stopped on exit."""
    await gateway.start()
    try:
        headers = {"Authorization": f"Bearer {KEY}"}
        async with httpx.AsyncClient(base_url=gateway.url, headers=headers, timeout=timeout) as http:
            yield http
    finally:
        await gateway.stop()


async def test_simple_task_end_to_end(net: Net) -> None:
    posted = await net.http.post("/v1/tasks", json=simple_task())
    assert posted.status_code == 202, posted.text
    assert posted.json()["status"] == "pending"
    task_id = posted.json()["id"]

    got = await net.http.get(f"/v1/tasks/{task_id}", params={"wait": 30})
    body = got.json()
    assert body["status"] == "done", body
    assert body["result"].strip()
    assert "ciphertext" not in body
    assert body["node"] in net.addresses
    assert body["model"] == MODEL
    stats = body["stats"]
    assert 0 < stats["receivedAt"] <= stats["executionStartedAt"] <= stats["executionEndedAt"] <= stats["publishedAt"]


async def test_a_batch_past_one_nodes_places_is_spread_over_both(net: Net) -> None:
    # Past the places a node's heartbeat advertises, the rest go to the other node. (Within them, a node not
    # measured serving gets at most a tenth of the choices while a measured one has room: a batch of 20 with 20
    # places a node went all to the node the first test had measured about one run in eight.)
    places = max(node["capacity"]["max"] for node in (await net.http.get("/v1/nodes")).json()["nodes"])
    count = places + 4
    tasks = [simple_task(f"Count to {i}.", max_tokens=8) for i in range(count)]
    posted = await net.http.post("/v1/tasks:batch", json={"tasks": tasks})
    assert posted.status_code == 202, posted.text
    ids = [task["id"] for task in posted.json()["tasks"]]
    assert len(set(ids)) == count

    deadline = time.monotonic() + 60
    while True:
        listed = (await net.http.get("/v1/tasks", params={"ids": ",".join(ids), "wait": 20})).json()
        statuses = [task["status"] for task in listed["tasks"]]
        if "pending" not in statuses or time.monotonic() > deadline:
            break
    assert listed["missing"] == []
    assert [task["id"] for task in listed["tasks"]] == ids
    assert statuses == ["done"] * count, [t.get("error") for t in listed["tasks"]]
    assert all(task["result"].strip() for task in listed["tasks"])
    assert {task["node"] for task in listed["tasks"]} == net.addresses  # load spread by heartbeat places


async def test_nodes_are_listed_with_models_and_capacity(net: Net) -> None:
    nodes = (await net.http.get("/v1/nodes")).json()["nodes"]
    assert {node["address"] for node in nodes} == net.addresses
    for node in nodes:
        assert node["models"] == [MODEL]
        assert node["capacity"]["max"] >= 1
        assert node["peer_id"]
        assert time.time() - node["last_heartbeat"] < 30
        assert node["reputation"]["address"] == node["address"]  # what the gateway measured of it
        assert 0 < node["reputation"]["success"] <= 1 and node["reputation"]["banned_until"] is None


async def test_auth_failures(net: Net) -> None:
    async with httpx.AsyncClient(base_url=net.gateway.url, timeout=10) as anonymous:
        missing = await anonymous.post("/v1/tasks", json=simple_task())
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"] == "Bearer"
        assert "missing API key" in missing.json()["detail"]
        wrong = await anonymous.get("/v1/nodes", headers={"Authorization": "Bearer not-a-key-0123456789"})
        assert wrong.status_code == 401
        assert wrong.json()["detail"] == "unknown API key"
        assert (await anonymous.get("/healthz")).json() == {"status": "ok", "nodes": 2}
        assert "/v1/tasks:batch" in (await anonymous.get("/openapi.json")).json()["paths"]

    # A task belongs to the key that created it.
    task_id = (await net.http.post("/v1/tasks", json=simple_task(max_tokens=4))).json()["id"]
    other = await net.http.get(f"/v1/tasks/{task_id}", headers={"Authorization": f"Bearer {OTHER_KEY}"})
    assert other.status_code == 404
    assert (await net.http.get(f"/v1/tasks/{task_id}", params={"wait": 30})).json()["status"] == "done"


async def test_invalid_requests_get_422_naming_the_field_and_nothing_is_published(net: Net) -> None:
    received = net.tasks_received()
    bad = simple_task()
    bad["workflow"]["tasks"][0]["operator"] = "teleport"
    refused = await net.http.post("/v1/tasks", json=bad)
    assert refused.status_code == 422
    assert refused.json()["detail"].startswith("workflow.tasks[0].operator: ")

    batch = await net.http.post("/v1/tasks:batch", json={"tasks": [simple_task(), bad]})
    assert batch.status_code == 422
    assert batch.json()["detail"].startswith("tasks[1].workflow.tasks[0].operator: ")

    cases = [
        ({**simple_task(), "models": []}, "models: "),
        ({**simple_task(), "public_key": "abcd"}, "public_key: "),
        ({**simple_task(), "nodes": ["not-an-address"]}, "nodes[0]: "),
        ({**simple_task(), "timeout": 10_000}, "timeout: must be at most 600 seconds"),
    ]
    for payload, field in cases:
        response = await net.http.post("/v1/tasks", json=payload)
        assert response.status_code == 422 and response.json()["detail"].startswith(field), response.text
    await asyncio.sleep(0.5)  # time for a stray publication to arrive
    assert net.tasks_received() == received


async def test_caller_key_gets_ciphertext_only_it_can_decrypt(net: Net) -> None:
    caller = Identity.generate()
    payload = simple_task("Say hello.", public_key=caller.public_key_compressed.hex())
    task_id = (await net.http.post("/v1/tasks", json=payload)).json()["id"]

    body = (await net.http.get(f"/v1/tasks/{task_id}", params={"wait": 30})).json()
    assert body["status"] == "done", body
    assert "result" not in body
    assert body["node"] in net.addresses
    text = decrypt(caller.secret, bytes.fromhex(body["ciphertext"])).decode("utf-8")
    assert text.strip()
    stored = net.gateway.service.store.get(task_id)
    assert stored is not None and stored.result is None  # the gateway never held the plaintext


async def test_rate_limit_gives_429_with_retry_after(net: Net) -> None:
    async with extra_app(net, rate_limit=6, rate_burst=3) as http:
        codes = [(await http.get("/v1/nodes")).status_code for _ in range(3)]
        limited = await http.get("/v1/nodes")
    assert codes == [200, 200, 200]
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) >= 1
    assert "rate limit" in limited.json()["detail"]


async def test_pending_limit_gives_429_and_an_unanswered_task_expires(net: Net) -> None:
    # Both nodes are picked but neither hosts the model: the task is published and never answered.
    unanswered = {**simple_task(), "models": ["gemma3:270m"], "nodes": sorted(net.addresses), "timeout": 2}
    async with extra_app(net, max_pending=1) as http:
        first = await http.post("/v1/tasks", json=unanswered)
        assert first.status_code == 202
        second = await http.post("/v1/tasks", json=unanswered)
        assert second.status_code == 429
        assert second.headers["retry-after"]
        assert "limit of 1" in second.json()["detail"]
        body = (await http.get(f"/v1/tasks/{first.json()['id']}", params={"wait": 10})).json()
        assert body["status"] == "expired"
        assert "no result within" in body["error"]
        assert (await http.post("/v1/tasks", json={**unanswered, "timeout": 0.5})).status_code == 202


async def test_too_large_body_gets_413(net: Net) -> None:
    oversized = simple_task("x" * 8000)
    async with extra_app(net, max_body_bytes=4096) as http:
        declared = await http.post("/v1/tasks", json=oversized)
        assert declared.status_code == 413
        assert "limit of 4096" in declared.json()["detail"]

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the body itself is counted
            for _ in range(10):
                yield b" " * 1000

        chunked = await http.post("/v1/tasks", content=chunks(), headers={"Content-Type": "application/json"})
        assert chunked.status_code == 413


async def test_without_keys_the_gateway_is_local_only(net: Net) -> None:
    with pytest.raises(ConfigError, match="api_keys") as caught:
        gateway_settings(net.tmp, net.peers, api_keys=[], host="0.0.0.0")
    assert "COMPUTE_NODE_GATEWAY_API_KEYS" in str(caught.value)
    assert gateway_settings(net.tmp, net.peers, api_keys=[KEY], host="0.0.0.0").host == "0.0.0.0"
    async with extra_app(net, api_keys=[]) as http:  # loopback, no keys: no auth needed
        assert (await http.get("/v1/nodes")).status_code == 200


async def test_gateway_restart_keeps_finished_results(net: Net, tmp_path: Path) -> None:
    settings = gateway_settings(tmp_path / "gw", net.peers)
    first = Gateway(settings)
    async with started(first, timeout=60) as http:
        task_id = (await http.post("/v1/tasks", json=simple_task(max_tokens=8))).json()["id"]
        before = (await http.get(f"/v1/tasks/{task_id}", params={"wait": 30})).json()
    assert before["status"] == "done"

    second = Gateway(settings)
    assert second.address == first.address  # same key from data_dir
    async with started(second, timeout=10) as http:
        after = (await http.get(f"/v1/tasks/{task_id}")).json()
    assert after == before


async def test_a_restarted_gateway_collects_a_result_published_after_the_restart(net: Net, tmp_path: Path) -> None:
    settings = gateway_settings(tmp_path / "gw", net.peers)
    long_task = simple_task("Write the numbers from 1 to 300, separated by commas.", max_tokens=256, timeout=60)
    async with started(Gateway(settings), timeout=10) as http:
        task_id = (await http.post("/v1/tasks", json=long_task)).json()["id"]
        await asyncio.sleep(0.3)  # published, still generating

    async with started(Gateway(settings), timeout=60) as http:
        body = (await http.get(f"/v1/tasks/{task_id}", params={"wait": 50})).json()
    assert body["status"] == "done", body
    assert body["result"].strip() and body["node"] in net.addresses
