"""A real gateway over HTTP on 127.0.0.1 (no API keys: the loopback mode), joined to one libp2p peer
that takes its tasks and never answers: the Host check, rate limits by client address, the pending
caps of `POST /rpc/task` (and `/v1/tasks`, answered alike) and the deadline horizon of its rows."""

from __future__ import annotations

import base64
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest_asyncio

from node.gateway.auth import RateLimiter
from node.gateway.dria_sdk.store import SdkStore
from node.gateway.server import Gateway
from node.wire.identity import Identity
from tests.support.gateway_net import gateway_over_silent_peer
from workflows import Simple

NODE = Identity.generate()


@pytest_asyncio.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    limits = {"max_pending": 2, "max_pending_total": 3, "rate_limit": 6, "rate_burst": 30}
    async with gateway_over_silent_peer(tmp_path, NODE, **limits) as gw:
        yield gw


def sdk_payload(task_id: str, deadline: datetime | str | None = None) -> dict[str, Any]:
    """What Dria's SDK posts (section 3 of DRIA_SDK.md): its deadline is now + 300 s."""
    when = deadline or datetime.now(UTC) + timedelta(seconds=300)
    data = {
        "taskId": task_id,
        "input": {"workflow": Simple().workflow(prompt="Hi", max_tokens=8), "model": ["llama3.2:1b"]},
        "pickedNodes": [NODE.address],
        "deadline": when if isinstance(when, str) else when.isoformat(),
        "publicKey": Identity.generate().public_key_uncompressed.hex()[2:],
        "privateKey": "0x" + "ab" * 32,
    }
    return {"value": {"payload": base64.b64encode(json.dumps(data).encode()).decode()}}


async def test_a_rebound_host_name_gets_421_and_loopback_names_are_served(gateway: Gateway) -> None:
    port = gateway.http.port
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        assert (await http.get("/healthz")).status_code == 200  # httpx sends Host: 127.0.0.1:<port>
        for host in (f"localhost:{port}", "localhost", f"[::1]:{port}", "127.0.0.1", "LOCALHOST"):
            assert (await http.get("/healthz", headers={"Host": host})).status_code == 200, host
        for host in ("attacker.example", f"attacker.example:{port}", "127.0.0.1.nip.io", "localhost.", "[::1]x"):
            answer = await http.get("/v1/nodes", headers={"Host": host})
            assert answer.status_code == 421, host
            assert "Host header" in answer.json()["detail"] and "api_keys" in answer.json()["detail"]
        posted = await http.post("/rpc/task", json=sdk_payload("rebound"), headers={"Host": "attacker.example"})
        assert posted.status_code == 421
    assert gateway.sdk.store.pending_count() == 0  # nothing was published for the rebound page


async def test_without_keys_rate_limits_count_by_address_not_by_token(gateway: Gateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        codes = [
            (await http.get("/v1/nodes", headers={"Authorization": f"Bearer token-{i}"})).status_code for i in range(31)
        ]
    assert codes[:30] == [200] * 30 and codes[30] == 429  # a new token each time: the same bucket


def test_the_rate_limit_table_is_bounded_and_forgets_the_least_recent() -> None:
    now = [0.0]
    limiter = RateLimiter(per_minute=60, burst=1, clock=lambda: now[0], max_buckets=100)
    assert limiter.take("kept") == 0.0
    for i in range(10_000):
        limiter.take(f"key-{i}")
        if i % 50 == 0:
            assert limiter.take("kept") > 0  # used recently: still counted, still limited
    assert len(limiter) == 100


async def test_rpc_task_pending_caps_per_token_and_in_total(gateway: Gateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        payloads = {task_id: sdk_payload(task_id) for task_id in ("a0", "a1", "a2", "b0", "c0")}

        async def post(token: str, task_id: str) -> httpx.Response:
            return await http.post("/rpc/task", json=payloads[task_id], headers={"x-api-key": token})

        first = [await post("token-a", f"a{i}") for i in range(2)]
        assert [r.status_code for r in first] == [200, 200]
        assert all("--" in r.json()["data"]["taskId"] for r in first)
        over = await post("token-a", "a2")
        assert over.status_code == 429 and over.headers["retry-after"]
        assert "limit of 2" in over.json()["detail"]
        again = await post("token-a", "a0")  # the same task again (the SDK retries) is no new task
        assert again.status_code == 200 and again.json() == first[0].json()
        assert (await post("token-b", "b0")).status_code == 200  # another token: its own cap...
        rotated = await post("token-c", "c0")  # ...but not past the gateway's total
        assert rotated.status_code == 429 and "the whole gateway" in rotated.json()["detail"]
        assert gateway.sdk.store.pending_count() == 3


async def test_v1_and_rpc_answer_a_pending_cap_alike(gateway: Gateway) -> None:
    """One TooManyPendingError handler: 429, the cap in `detail`, Retry-After, on `/v1/tasks` as on `/rpc/task`."""
    task = {"workflow": Simple().workflow(prompt="Hi", max_tokens=8), "models": ["llama3.2:1b"]}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        v1 = await http.post("/v1/tasks:batch", json={"tasks": [task] * 3})
        rpc = [await http.post("/rpc/task", json=sdk_payload(f"p{i}"), headers={"x-api-key": "t"}) for i in range(3)]
    assert [r.status_code for r in rpc] == [200, 200, 429]
    for answer in (v1, rpc[2]):
        assert answer.status_code == 429 and answer.headers["retry-after"] == "5"
        assert "exceed the limit of 2" in answer.json()["detail"]
    assert gateway.service.store.pending_count() == 0  # the batch was refused whole


async def test_the_pending_caps_count_every_apis_tasks_together(gateway: Gateway) -> None:
    # Each API counted its own rows only: with /rpc at its caps, /v1/tasks (and OpenAI's routes) took as many
    # again, so a key held about 3x max_pending and the gateway twice max_pending_total.
    task = {"workflow": Simple().workflow(prompt="Hi", max_tokens=8), "models": ["llama3.2:1b"]}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        rpc = [await http.post("/rpc/task", json=sdk_payload(f"x{i}"), headers={"x-api-key": "t"}) for i in range(2)]
        assert [r.status_code for r in rpc] == [200, 200]
        one = await http.post("/v1/tasks", json=task)
        assert one.status_code == 202, one.text
        more = await http.post("/v1/tasks", json=task)
        assert more.status_code == 429 and "the whole gateway" in more.json()["detail"], more.text
    assert gateway.sdk.store.pending_count() + gateway.service.store.pending_count() == 3


async def test_rpc_rows_cannot_outlive_the_deadline_horizon(gateway: Gateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        for deadline, why in (
            ("2262-01-01T00:00:00+00:00", "more than 3600 s ahead"),  # near int64 ns: was a permanent row
            (datetime.now(UTC) + timedelta(hours=2), "more than 3600 s ahead"),
            (datetime.now(UTC) - timedelta(seconds=5), "already passed"),
        ):
            answer = await http.post("/rpc/task", json=sdk_payload("far", deadline), headers={"x-api-key": "t"})
            assert answer.status_code == 422 and why in answer.json()["detail"], answer.text
        ok = await http.post("/rpc/task", json=sdk_payload("near"), headers={"x-api-key": "t"})
        assert ok.status_code == 200
    row = gateway.sdk.store.get(ok.json()["data"]["taskId"])
    assert row is not None
    horizon = gateway.settings.deadline_horizon
    assert row.expires_at <= time.time() + 300 + horizon + 5  # the SDK's deadline plus at most the horizon
    assert gateway.sdk.store.add_result(row.network_id, "result")
    served = gateway.sdk.store.get(row.network_id)
    assert served is not None and served.expires_at <= time.time() + 300 + horizon + 5


def test_a_database_from_before_the_deadline_column_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "gateway.sqlite3"
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE rpc_tasks (network_id TEXT PRIMARY KEY, key_id TEXT NOT NULL, task_id TEXT NOT NULL, "
        "payload_hash TEXT NOT NULL, picked TEXT NOT NULL, result TEXT, served INTEGER NOT NULL DEFAULT 0, "
        "created_at REAL NOT NULL, expires_at REAL NOT NULL, UNIQUE (key_id, task_id))"
    )
    old.execute("INSERT INTO rpc_tasks VALUES ('t--1', 'k', 't', 'h', '[]', NULL, 0, 1.0, 4e9)")
    old.commit()
    old.close()
    store = SdkStore(path, retention=60)
    try:
        row = store.get("t--1")
        assert row is not None and row.deadline == 0.0  # an old row is not counted as pending
        assert store.pending_count() == 0 and store.pending_count("k") == 0
    finally:
        store.close()
