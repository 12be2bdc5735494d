"""The gateway's task store on a real SQLite file: overdue tasks expire on reopening, old ones are purged."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

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
