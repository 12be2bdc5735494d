"""Task state of `/v1/tasks` in the gateway's database: results survive a restart until they expire.

One row per gateway task. A finished task (done, error, expired) is deleted
`retention` seconds after it finished; a pending one `retention` seconds after
its deadline. Opening the store marks pending tasks whose deadline has passed
as `expired` (their result can no longer arrive). The file, its transactions and
the purge of expired rows are `database.py`'s.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from node.gateway.database import Table
from node.gateway.schemas import TaskStatus

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id          TEXT PRIMARY KEY,
    key_id      TEXT NOT NULL,
    status      TEXT NOT NULL,
    models      TEXT NOT NULL,
    picked      TEXT,
    public_key  TEXT,
    network_id  TEXT,
    node        TEXT,
    model       TEXT,
    result      TEXT,
    ciphertext  TEXT,
    error       TEXT,
    stats       TEXT,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL,
    deadline    REAL NOT NULL,
    expires_at  REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_by_key_status ON tasks (key_id, status);
CREATE INDEX IF NOT EXISTS tasks_by_expiry ON tasks (expires_at);
"""
_JSON_COLUMNS = ("models", "picked", "stats")


class TaskRecord(BaseModel):
    """One gateway task as stored."""

    id: str
    key_id: str  # which API key owns it (a hash, never the key)
    status: TaskStatus
    models: list[str]
    picked: list[str] | None = None  # nodes the caller named
    public_key: str | None = None  # the caller's key: the result is kept as ciphertext
    network_id: str | None = None  # the task id the network sees (changes on a retry)
    node: str | None = None  # the node the current network task was sent to, then the result's signer
    model: str | None = None
    result: str | None = None
    ciphertext: str | None = None
    error: str | None = None
    stats: dict[str, Any] | None = None
    created_at: float
    updated_at: float
    deadline: float  # Unix seconds
    expires_at: float  # deleted after this


class TaskStore(Table):
    """The `tasks` table of the gateway's database."""

    name = "tasks"
    schema = _SCHEMA
    row_bytes = (
        "256 + LENGTH(id) + LENGTH(models) + COALESCE(LENGTH(result), 0) + COALESCE(LENGTH(ciphertext), 0)"
        " + COALESCE(LENGTH(error), 0) + COALESCE(LENGTH(stats), 0) + COALESCE(LENGTH(public_key), 0)"
    )
    finished = "status != 'pending'"

    def __init__(self, path: Path, retention: float, max_bytes: int | None = None) -> None:
        super().__init__(path, retention, max_bytes)
        self.expire_overdue()

    def insert(self, records: list[TaskRecord]) -> None:
        """Add new tasks, all or none."""
        columns = list(TaskRecord.model_fields)
        sql = f"INSERT INTO tasks ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})"
        rows = [[_to_column(name, getattr(record, name)) for name in columns] for record in records]
        with self.transaction():
            self._db.executemany(sql, rows)

    def get(self, task_id: str) -> TaskRecord | None:
        """The task of `task_id`; None if unknown."""
        row = self._db.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone()
        return None if row is None else _record(row)

    def get_many(self, task_ids: list[str]) -> dict[str, TaskRecord]:
        """The known tasks of `task_ids`, by id."""
        if not task_ids:
            return {}
        marks = ", ".join("?" for _ in task_ids)
        rows = self._db.execute(f"SELECT * FROM tasks WHERE id IN ({marks})", task_ids).fetchall()
        return {row["id"]: _record(row) for row in rows}

    def pending(self) -> list[TaskRecord]:
        """Every task not yet finished."""
        rows = self._db.execute("SELECT * FROM tasks WHERE status = 'pending'").fetchall()
        return [_record(row) for row in rows]

    def pending_count(self, key_id: str | None = None, now: float | None = None) -> int:
        """Unfinished tasks of `key_id`, or of every key, whose deadline has not passed (a row whose
        outcome could not be written, on a full disk, stops counting then)."""
        now = time.time() if now is None else now
        if key_id is None:
            row = self._db.execute(
                "SELECT COUNT(*) FROM tasks WHERE status = 'pending' AND deadline > ?", (now,)
            ).fetchone()
        else:
            row = self._db.execute(
                "SELECT COUNT(*) FROM tasks WHERE key_id = ? AND status = 'pending' AND deadline > ?", (key_id, now)
            ).fetchone()
        return int(row[0])

    def published(self, task_id: str, network_id: str, node: str | None) -> None:
        """Record the network task id (and picked node) a gateway task was just published as."""
        self._update(task_id, network_id=network_id, node=node)

    def finish(self, task_id: str, status: TaskStatus, **fields: Any) -> None:
        """Record the outcome: `result`/`ciphertext`, `error`, `node`, `model`, `stats`."""
        now = time.time()
        self._update(task_id, status=status, expires_at=now + self.retention, now=now, **fields)

    def expire_overdue(self, now: float | None = None) -> int:
        """Mark pending tasks past their deadline as expired; how many there were."""
        now = time.time() if now is None else now
        with self.transaction():
            cursor = self._db.execute(
                "UPDATE tasks SET status = 'expired', error = ?, updated_at = ?, expires_at = ? "
                "WHERE status = 'pending' AND deadline < ?",
                ("no result before the deadline", now, now + self.retention, now),
            )
        return cursor.rowcount

    def _update(self, task_id: str, now: float | None = None, **fields: Any) -> None:
        fields["updated_at"] = time.time() if now is None else now
        assignments = ", ".join(f"{name} = ?" for name in fields)
        values = [_to_column(name, value) for name, value in fields.items()]
        with self.transaction():
            self._db.execute(f"UPDATE tasks SET {assignments} WHERE id = ?", [*values, task_id])


def _to_column(name: str, value: Any) -> Any:
    if name in _JSON_COLUMNS and value is not None:
        return json.dumps(value)
    return value


def _record(row: sqlite3.Row) -> TaskRecord:
    data = dict(row)
    for name in _JSON_COLUMNS:
        if data[name] is not None:
            data[name] = json.loads(data[name])
    return TaskRecord.model_validate(data)
