"""State of the Dria SDK's API in the gateway's database: tasks published and results queued.

One row per network task id (`<taskId>--<suffix>`): which key posted it, a hash
of the posted payload (so a repeated POST publishes nothing), the node it
picked, and, once the first result signed by that node arrives, the raw result
envelope. `GET /rpc/results` pops from a key's queue: each result is served once.
A task without a result before its deadline is pending: it counts against the
pending caps. Rows are deleted `retention` seconds after their deadline or
their result (the gateway passes at most its deadline horizon, and takes no
deadline further ahead than that; `database.py`'s purge loop deletes them). The task's
private key is never part of a row. The table keeps its first name, `rpc_tasks`, in files already written.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from pydantic import BaseModel

from node.gateway.database import Table

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rpc_tasks (
    network_id    TEXT PRIMARY KEY,
    key_id        TEXT NOT NULL,
    task_id       TEXT NOT NULL,
    payload_hash  TEXT NOT NULL,
    picked        TEXT NOT NULL,
    result        TEXT,
    served        INTEGER NOT NULL DEFAULT 0,
    created_at    REAL NOT NULL,
    expires_at    REAL NOT NULL,
    deadline      REAL NOT NULL DEFAULT 0,
    UNIQUE (key_id, task_id)
);
CREATE INDEX IF NOT EXISTS rpc_tasks_queue ON rpc_tasks (key_id, served, result);
CREATE INDEX IF NOT EXISTS rpc_tasks_by_expiry ON rpc_tasks (expires_at);
"""
# Added after the first release: a database from then lacks the column (its rows count as not pending).
_DEADLINE_COLUMN = "ALTER TABLE rpc_tasks ADD COLUMN deadline REAL NOT NULL DEFAULT 0"
_PENDING_INDEX = "CREATE INDEX IF NOT EXISTS rpc_tasks_pending ON rpc_tasks (result, deadline)"


class SdkTask(BaseModel):
    """One task posted through `POST /rpc/task`."""

    network_id: str
    key_id: str
    task_id: str  # the id the SDK chose
    payload_hash: str
    picked: list[str]  # lowercase addresses without 0x
    result: str | None = None  # the item served by /rpc/results (the node's envelope, re-shaped)
    served: bool = False
    created_at: float
    expires_at: float
    deadline: float = 0.0  # Unix seconds; pending until then while it has no result


class SdkStore(Table):
    """The `rpc_tasks` table of the gateway's database."""

    name = "rpc_tasks"
    schema = _SCHEMA
    row_bytes = "256 + LENGTH(network_id) + LENGTH(task_id) + LENGTH(picked) + COALESCE(LENGTH(result), 0)"
    finished = "result IS NOT NULL"
    trim_order = "served DESC, expires_at"  # results the SDK fetched already go first

    def __init__(self, path: Path, retention: float, max_bytes: int | None = None) -> None:
        super().__init__(path, retention, max_bytes)
        columns = {row["name"] for row in self._db.execute("PRAGMA table_info(rpc_tasks)")}
        with self.transaction():
            if "deadline" not in columns:
                self._db.execute(_DEADLINE_COLUMN)
            self._db.execute(_PENDING_INDEX)

    def find(self, key_id: str, task_id: str) -> SdkTask | None:
        """The task this key already posted under the SDK's `task_id`, if any."""
        row = self._db.execute("SELECT * FROM rpc_tasks WHERE key_id = ? AND task_id = ?", (key_id, task_id)).fetchone()
        return None if row is None else _task(row)

    def get(self, network_id: str) -> SdkTask | None:
        """The task of `network_id`; None if unknown."""
        row = self._db.execute("SELECT * FROM rpc_tasks WHERE network_id = ?", (network_id,)).fetchone()
        return None if row is None else _task(row)

    def insert(self, task: SdkTask) -> bool:
        """Add a task; False (and nothing changed) if this key already posted that task id."""
        with self.transaction():
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO rpc_tasks "
                "(network_id, key_id, task_id, payload_hash, picked, created_at, expires_at, deadline) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    task.network_id,
                    task.key_id,
                    task.task_id,
                    task.payload_hash,
                    json.dumps(task.picked),
                    task.created_at,
                    task.expires_at,
                    task.deadline,
                ),
            )
        return cursor.rowcount == 1

    def pending_count(self, key_id: str | None = None, now: float | None = None) -> int:
        """Tasks of `key_id` (or of every key) without a result whose deadline has not passed."""
        now = time.time() if now is None else now
        if key_id is None:
            row = self._db.execute(
                "SELECT COUNT(*) FROM rpc_tasks WHERE result IS NULL AND deadline > ?", (now,)
            ).fetchone()
        else:
            row = self._db.execute(
                "SELECT COUNT(*) FROM rpc_tasks WHERE key_id = ? AND result IS NULL AND deadline > ?", (key_id, now)
            ).fetchone()
        return int(row[0])

    def delete(self, network_id: str) -> None:
        """Forget the task of `network_id`."""
        with self.transaction():
            self._db.execute("DELETE FROM rpc_tasks WHERE network_id = ?", (network_id,))

    def add_result(self, network_id: str, item: str) -> bool:
        """Queue the first result of a task; False if it already has one (or is unknown)."""
        with self.transaction():
            cursor = self._db.execute(
                "UPDATE rpc_tasks SET result = ?, expires_at = MAX(expires_at, ?) WHERE network_id = ? AND result IS NULL",
                (item, time.time() + self.retention, network_id),
            )
        return cursor.rowcount == 1

    def pop_results(self, key_id: str, limit: int, max_bytes: int | None = None) -> list[str]:
        """Up to `limit` queued results of this key, and past the first no more than `max_bytes` of them,
        marked served (they are not served again; the rest wait for the next poll)."""
        with self.transaction():
            rows = self._db.execute(
                "SELECT network_id, result FROM rpc_tasks WHERE key_id = ? AND served = 0 AND result IS NOT NULL "
                "ORDER BY rowid LIMIT ?",
                (key_id, limit),
            ).fetchall()
            if max_bytes is not None:
                taken: list[sqlite3.Row] = []
                size = 0
                for row in rows:
                    size += len(row["result"])
                    if taken and size > max_bytes:
                        break
                    taken.append(row)
                rows = taken
            self._db.executemany(
                "UPDATE rpc_tasks SET served = 1 WHERE network_id = ?", [(r["network_id"],) for r in rows]
            )
        return [row["result"] for row in rows]


def _task(row: sqlite3.Row) -> SdkTask:
    data = dict(row)
    data["picked"] = json.loads(data["picked"])
    data["served"] = bool(data["served"])
    return SdkTask.model_validate(data)
