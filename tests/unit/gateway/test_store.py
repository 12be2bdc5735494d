"""The gateway's database on a real SQLite file: overdue tasks expire on reopening, old ones are purged,
and one purge loop empties both APIs' tables of expired rows."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from node.gateway.database import purge_loop
from node.gateway.dria_sdk.store import SdkStore, SdkTask
from node.gateway.store import TaskRecord, TaskStore

MODEL = "smollm2:135m"


async def test_store_expires_overdue_tasks_and_deletes_old_ones(tmp_path: Path) -> None:
    path = tmp_path / "tasks.sqlite3"
    now = time.time()
    store = TaskStore(path, retention=100)
    common: dict[str, Any] = {
        "key_id": "k",
        "status": "pending",
        "models": [MODEL],
        "created_at": now - 50,
        "updated_at": now - 50,
    }
    store.insert(
        [
            TaskRecord(id="overdue", deadline=now - 1, expires_at=now + 99, **common),
            TaskRecord(id="running", deadline=now + 60, expires_at=now + 160, **common),
        ]
    )
    store.close()

    reopened = TaskStore(path, retention=100)
    overdue, running = reopened.get("overdue"), reopened.get("running")
    assert overdue is not None and overdue.status == "expired" and overdue.error
    assert running is not None and running.status == "pending"
    assert reopened.pending_count("k") == 1
    assert reopened.purge(now=now + 150) == 1  # the expired one, 100 s after it expired
    assert reopened.get("overdue") is None and reopened.get("running") is not None
    reopened.close()


async def test_one_purge_loop_deletes_expired_rows_of_both_tables(tmp_path: Path) -> None:
    path = tmp_path / "gateway.sqlite3"
    now = time.time()
    tasks, sdk = TaskStore(path, retention=100), SdkStore(path, retention=100)
    common: dict[str, Any] = {"key_id": "k", "status": "done", "models": [MODEL], "created_at": now, "updated_at": now}
    tasks.insert(
        [
            TaskRecord(id="old", deadline=now - 200, expires_at=now - 1, **common),
            TaskRecord(id="kept", deadline=now + 60, expires_at=now + 160, **common),
        ]
    )
    for name, expires_at in (("old", now - 1), ("kept", now + 160)):
        sdk.insert(
            SdkTask(
                network_id=f"{name}--1", key_id="k", task_id=name, payload_hash="h", picked=[], created_at=now,
                expires_at=expires_at,
            )
        )  # fmt: skip
    purging = asyncio.create_task(purge_loop([tasks, sdk], interval=3600))
    try:
        async with asyncio.timeout(30):
            while tasks.get("old") is not None or sdk.get("old--1") is not None:
                await asyncio.sleep(0.01)
    finally:
        purging.cancel()
        await asyncio.gather(purging, return_exceptions=True)
    assert tasks.get("kept") is not None and sdk.get("kept--1") is not None
    tasks.close()
    sdk.close()


def test_a_table_over_its_size_deletes_the_finished_tasks_that_expire_first(tmp_path: Path) -> None:
    # A key holder posting big-result tasks filled the disk for a whole retention (24 h) before.
    path = tmp_path / "gateway.sqlite3"
    now = time.time()
    tasks = TaskStore(path, retention=86_400, max_bytes=600_000)
    common: dict[str, Any] = {"key_id": "k", "models": [MODEL], "created_at": now, "updated_at": now, "deadline": now}
    tasks.insert(
        [
            TaskRecord(id=f"done{i}", status="done", result="r" * 100_000, expires_at=now + i, **common)
            for i in range(10)
        ]
        + [TaskRecord(id="waiting", status="pending", expires_at=now + 1, **common)]
    )
    assert tasks.stored_bytes() > 1_000_000
    assert tasks.purge(now=now) == 5
    assert tasks.stored_bytes() <= 600_000
    assert [tasks.get(f"done{i}") is None for i in range(10)] == [True] * 5 + [False] * 5  # the oldest went
    assert tasks.get("waiting") is not None  # a task someone waits for is never cut

    sdk = SdkStore(path, retention=3600, max_bytes=300_000)
    for i in range(6):
        task = SdkTask(
            network_id=f"n{i}", key_id="k", task_id=f"t{i}", payload_hash="h", picked=[], created_at=now,
            expires_at=now + 100 + i,
        )  # fmt: skip
        assert sdk.insert(task) and sdk.add_result(f"n{i}", "x" * 100_000)
    assert len(sdk.pop_results("k", 1)) == 1  # one served: it goes first, then the unserved that expire first
    assert sdk.purge(now=now) == 4 and sdk.stored_bytes() <= 300_000
    assert len(sdk.pop_results("k", 10)) == 2
    tasks.close()
    sdk.close()
