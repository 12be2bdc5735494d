"""The gateway when SQLite refuses its writes (a full disk, an I/O error): clear errors of one type, no
purge loop lost, no outcome lost, no key held at its pending cap by rows that cannot be finished.

A real gateway over HTTP on 127.0.0.1, joined to one libp2p peer that never answers; writes are refused
by a real full disk where this process may mount one (tests/support/small_disk.py), else by SQLite's page
limit (SQLITE_FULL, the same error), or by an authorizer that denies UPDATEs on the store's connection."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from node.gateway import unsaved
from node.gateway.database import DatabaseError, purge_loop
from node.gateway.server import Gateway
from node.gateway.store import TaskRecord, TaskStore
from node.wire.identity import Identity
from tests.support.gateway_net import gateway_over_silent_peer
from tests.support.small_disk import small_disk as mounted_small_disk
from workflows import Simple


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path | None]:
    with mounted_small_disk(tmp_path) as mount_point:
        yield mount_point


def record(task_id: str, *, deadline: float, expires_at: float, padding: int = 0) -> TaskRecord:
    now = time.time()
    return TaskRecord(
        id=task_id,
        key_id="k",
        status="pending",
        models=["m" * padding or "m"],
        created_at=now,
        updated_at=now,
        deadline=deadline,
        expires_at=expires_at,
    )


def fill(store: TaskStore, disk: Path | None) -> None:
    if disk is None:
        store._db.execute(f"PRAGMA max_page_count = {store._db.execute('PRAGMA page_count').fetchone()[0]}")
        return
    free = subprocess.run(["df", "-B1", "--output=avail", str(disk)], capture_output=True, text=True, check=True)
    (disk / "filler").write_bytes(b"\0" * max(int(free.stdout.split()[-1]), 0))


def unfill(store: TaskStore, disk: Path | None) -> None:
    if disk is None:
        store._db.execute("PRAGMA max_page_count = 1073741823")
    else:
        (disk / "filler").unlink()


def test_a_full_disk_is_a_database_error_and_the_store_works_once_there_is_room(
    small_disk: Path | None, tmp_path: Path
) -> None:
    """In WAL mode a full disk shows at COMMIT, after SQLite rolled back: the error is a DatabaseError
    naming the disk, not a raw sqlite3 error, nor a "cannot rollback" that hides it."""
    store = TaskStore((small_disk or tmp_path) / "gateway.sqlite3", retention=60)
    now = time.time()
    try:
        store.insert([record("old", deadline=now - 60, expires_at=now - 30)])
        fill(store, small_disk)
        with pytest.raises(DatabaseError, match="database or disk is full"):
            for i in range(200):  # until the WAL needs a page the disk does not have
                store.insert([record(f"t{i}", deadline=now + 60, expires_at=now + 120, padding=4000)])
        if small_disk is not None:  # a delete needs room in the WAL too (SQLite's page limit does not count it)
            with pytest.raises(DatabaseError, match="database or disk is full"):
                store.purge()
        unfill(store, small_disk)
        store.insert([record("after", deadline=now + 60, expires_at=now + 120)])
        assert store.get("after") is not None
        assert store.purge() == 1 and store.get("old") is None
    finally:
        store.close()


async def test_the_purge_loop_outlives_a_store_that_refuses_writes(tmp_path: Path) -> None:
    store = TaskStore(tmp_path / "gateway.sqlite3", retention=0)
    now = time.time()
    store.insert([record("old", deadline=now - 10, expires_at=now - 5)])

    def deny_deletes(action: int, *_: object) -> int:
        return sqlite3.SQLITE_DENY if action == sqlite3.SQLITE_DELETE else sqlite3.SQLITE_OK

    store._db.set_authorizer(deny_deletes)
    purging = asyncio.create_task(purge_loop([store], interval=0.05))
    try:
        await asyncio.sleep(0.3)
        assert not purging.done() and store.get("old") is not None
        store._db.set_authorizer(None)
        for _ in range(100):
            if store.get("old") is None:
                break
            await asyncio.sleep(0.05)
        assert store.get("old") is None
    finally:
        purging.cancel()
        store.close()


@pytest_asyncio.fixture
async def gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Gateway]:
    monkeypatch.setattr(unsaved, "UNSAVED_RETRY_S", 0.1)
    async with gateway_over_silent_peer(tmp_path, max_pending=1) as gw:
        yield gw


async def test_an_outcome_the_store_refuses_is_served_from_memory_and_written_later(gateway: Gateway) -> None:
    store = gateway.service.store

    def deny_updates(action: int, *_: object) -> int:
        return sqlite3.SQLITE_DENY if action == sqlite3.SQLITE_UPDATE else sqlite3.SQLITE_OK

    task = {"workflow": Simple().workflow(prompt="Hi", max_tokens=8), "models": ["llama3.2:1b"], "timeout": 1}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        posted = await http.post("/v1/tasks", json=task)
        assert posted.status_code == 202
        task_id = posted.json()["id"]
        store._db.set_authorizer(deny_updates)  # the outcome (no node within 1 s) cannot be written
        answer = (await http.get(f"/v1/tasks/{task_id}", params={"wait": 10})).json()
        assert answer["status"] == "error" and "no live node" in answer["error"], "the long poll ends with the outcome"
        assert store.get(task_id).status == "pending"  # the row could not be finished
        # The key is at its cap of 1 only while the row's deadline is ahead: a new task goes through.
        assert (await http.post("/v1/tasks", json=task)).status_code == 202

        store._db.set_authorizer(None)
        for _ in range(100):
            if store.get(task_id).status != "pending":
                break
            await asyncio.sleep(0.05)
        assert store.get(task_id).status == "error" and "no live node" in (store.get(task_id).error or "")
        written = (await http.get(f"/v1/tasks/{task_id}")).json()
        assert (written["status"], written["error"]) == (answer["status"], answer["error"])


async def test_a_task_the_store_refuses_is_503_with_retry_after(gateway: Gateway) -> None:
    store = gateway.service.store

    def deny_inserts(action: int, *_: object) -> int:
        return sqlite3.SQLITE_DENY if action == sqlite3.SQLITE_INSERT else sqlite3.SQLITE_OK

    task = {"workflow": Simple().workflow(prompt="Hi", max_tokens=8), "models": ["llama3.2:1b"], "timeout": 1}
    store._db.set_authorizer(deny_inserts)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        for path, body in (("/v1/tasks", task), ("/v1/tasks:batch", {"tasks": [task]})):
            answer = await http.post(path, json=body)
            assert answer.status_code == 503, (path, answer.text)
            assert int(answer.headers["retry-after"]) > 0, path  # README: come back later, as /rpc says too
    store._db.set_authorizer(None)


def deny_updates(action: int, *_: object) -> int:
    return sqlite3.SQLITE_DENY if action == sqlite3.SQLITE_UPDATE else sqlite3.SQLITE_OK


async def test_a_stop_soon_after_the_store_takes_writes_again_keeps_the_outcome_served_from_memory(
    tmp_path: Path,
) -> None:
    """The retry loop writes every 5 s; a stop in between wrote nothing, and after the restart the outcome
    served as it was was gone (the row, still pending, then expired or ended in a false error)."""
    task = {"workflow": Simple().workflow(prompt="Hi", max_tokens=8), "models": ["llama3.2:1b"], "timeout": 1}
    async with gateway_over_silent_peer(tmp_path) as gateway:
        store = gateway.service.store
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
            task_id = (await http.post("/v1/tasks", json=task)).json()["id"]
            store._db.set_authorizer(deny_updates)
            served = (await http.get(f"/v1/tasks/{task_id}", params={"wait": 10})).json()
        assert served["status"] == "error" and "no live node" in served["error"], served
        assert store.get(task_id).status == "pending"
        store._db.set_authorizer(None)  # the disk has room again; the gateway stops before its next try
    async with gateway_over_silent_peer(tmp_path) as gateway:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
            after = (await http.get(f"/v1/tasks/{task_id}")).json()
    assert (after["status"], after["error"]) == (served["status"], served["error"]), after


async def test_a_network_id_the_store_refused_is_kept_and_written_so_a_restart_waits_for_the_result(
    tmp_path: Path,
) -> None:
    """The network id was dropped when its write failed: after a restart the gateway said no node had taken
    a task a node had (it cannot wait for a result without the id)."""
    picked = Identity.generate().address
    task = {
        "workflow": Simple().workflow(prompt="Hi", max_tokens=8),
        "models": ["llama3.2:1b"],
        "nodes": [picked],  # published on gossip at once, to the silent peer
        "timeout": 120,
    }
    async with gateway_over_silent_peer(tmp_path) as gateway:
        store = gateway.service.store
        store._db.set_authorizer(deny_updates)  # the row goes in; its network id cannot
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
            task_id = (await http.post("/v1/tasks", json=task)).json()["id"]
            for _ in range(100):
                if len(gateway.service._unsaved):
                    break
                await asyncio.sleep(0.05)
        assert store.get(task_id).network_id is None
        store._db.set_authorizer(None)
    async with gateway_over_silent_peer(tmp_path) as gateway:
        record = gateway.service.store.get(task_id)
        assert record is not None and record.network_id is not None and record.node is None
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
            view = (await http.get(f"/v1/tasks/{task_id}", params={"wait": 1})).json()
        assert view["status"] == "pending" and view.get("error") is None, view  # waiting for the node's result


async def test_a_network_id_the_store_refused_is_written_by_the_retry_loop(gateway: Gateway) -> None:
    store = gateway.service.store
    task = {
        "workflow": Simple().workflow(prompt="Hi", max_tokens=8),
        "models": ["llama3.2:1b"],
        "nodes": [Identity.generate().address],
        "timeout": 120,
    }
    store._db.set_authorizer(deny_updates)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        task_id = (await http.post("/v1/tasks", json=task)).json()["id"]
    for _ in range(100):
        if len(gateway.service._unsaved):
            break
        await asyncio.sleep(0.05)
    store._db.set_authorizer(None)
    for _ in range(100):
        if store.get(task_id).network_id is not None:
            break
        await asyncio.sleep(0.05)
    assert store.get(task_id).network_id is not None and not len(gateway.service._unsaved)
