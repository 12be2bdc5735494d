"""`/v1/tasks` requests the nodes would only fail, and bodies that are not a task: refused at once, saying why.
A real gateway over HTTP on 127.0.0.1, joined to one libp2p peer that never answers."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx

from node.gateway.server import Gateway
from node.gateway.settings import GatewaySettings
from node.p2p.host import P2PHost
from node.wire.identity import Identity
from node.wire.topics import TASK_TOPIC
from tests.support.gateway_net import gateway_over_silent_peer
from workflows import Simple


def task(**changes: Any) -> dict[str, Any]:
    return {"workflow": Simple().workflow(prompt="hi", max_tokens=8), "models": ["m"], "timeout": 5} | changes


async def test_a_return_value_no_run_can_fill_is_422_naming_it(tmp_path: Path) -> None:
    typo = Simple().workflow(prompt="hi", max_tokens=8)
    typo["return_value"]["input"]["key"] = "typo"
    the_input = Simple().workflow(prompt="hi", max_tokens=8)
    the_input["return_value"]["input"] = {"type": "input", "key": ""}
    empty_stack = Simple().workflow(prompt="hi", max_tokens=8)
    empty_stack["return_value"]["input"] = {"type": "get_all", "key": "nothing"}
    async with gateway_over_silent_peer(tmp_path) as gateway:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
            refused = await http.post("/v1/tasks", json=task(workflow=typo))
            assert refused.status_code == 422, refused.text  # was 202, then every node ran it and failed it
            assert refused.json()["detail"].startswith("workflow.return_value.input: read 'typo' can never hold")
            refused = await http.post("/v1/tasks", json=task(workflow=the_input))
            assert refused.status_code == 422 and "the task has no prompt" in refused.json()["detail"]
            for fine in (task(workflow=the_input, prompt="p"), task(workflow=empty_stack)):  # an empty list is one
                assert (await http.post("/v1/tasks", json=fine)).status_code == 202


async def test_a_body_that_is_no_json_object_says_so(tmp_path: Path) -> None:
    async with gateway_over_silent_peer(tmp_path) as gateway:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
            broken = await http.post(
                "/v1/tasks", content=b'{"models": ["m"],', headers={"Content-Type": "application/json"}
            )
            assert broken.status_code == 422 and broken.json()["detail"].startswith("body: not valid JSON"), broken.text
            form = await http.post(  # curl -d without -H: JSON sent as a form
                "/v1/tasks",
                content=json.dumps(task()).encode(),
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
            assert form.status_code == 422 and "Content-Type: application/json" in form.json()["detail"], form.text


async def test_a_task_no_node_took_before_a_restart_ends_saying_so_not_expired(tmp_path: Path) -> None:
    peer = P2PHost(Identity.generate().secret, ["/ip4/127.0.0.1/tcp/0"])  # reads tasks, never heartbeats
    await peer.start()
    await peer.subscribe(TASK_TOPIC)
    settings = GatewaySettings.load(data_dir=tmp_path, peers=[str(peer.listen_addrs[0])], port=0)
    try:
        gateway = Gateway(settings)
        await gateway.start()
        try:
            async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
                task_id = (await http.post("/v1/tasks", json=task(timeout=120))).json()["id"]
                await asyncio.sleep(0.5)  # no node serves "m": it waits for one, unpublished
        finally:
            await gateway.stop()
        gateway = Gateway(settings)
        await gateway.start()
        try:
            async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
                view = (await http.get(f"/v1/tasks/{task_id}", params={"wait": 5})).json()
            assert gateway.service.store.get(task_id).deadline - time.time() > 60
            assert view["status"] == "error", view  # was "expired", 'no result before the deadline', 2 min early
            assert "restarted without a record of a node taking the task" in view["error"], view
        finally:
            await gateway.stop()
    finally:
        await peer.stop()


async def test_a_task_posted_while_the_gateway_joins_is_not_taken_for_one_left_by_a_restart(tmp_path: Path) -> None:
    """HTTP listens before the gateway has joined the network; a task it takes meanwhile is this run's own, not
    one an earlier run left pending (those end 'restarted without a record of a node taking the task' once it has joined)."""
    peer = P2PHost(Identity.generate().secret, ["/ip4/127.0.0.1/tcp/0"])  # joins the task topic when told
    await peer.start()
    gateway = Gateway(GatewaySettings.load(data_dir=tmp_path, peers=[str(peer.listen_addrs[0])], port=0))
    starting = asyncio.create_task(gateway.start())
    try:
        for _ in range(200):  # the listener is up first; the join waits for a peer on the task topic
            if gateway.http.port is not None:
                break
            await asyncio.sleep(0.05)
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
            task_id = (await http.post("/v1/tasks", json=task(timeout=120))).json()["id"]
            assert not starting.done()
            await peer.subscribe(TASK_TOPIC)
            await asyncio.wait_for(starting, 30)
            view = (await http.get(f"/v1/tasks/{task_id}", params={"wait": 1})).json()
        assert view["status"] == "pending" and view.get("error") is None, view  # was: error, '... restarted ...'
    finally:
        await asyncio.gather(starting, return_exceptions=True)
        await gateway.stop()
        await peer.stop()
