"""Task state of the gateway in SQLite (WAL): results survive a restart until they expire.

One row per gateway task. A finished task (done, error, expired) is deleted
`retention` seconds after it finished; a pending one `retention` seconds after
its deadline. Opening the store marks pending tasks whose deadline has passed
as `expired` (their result can no longer arrive). Calls are short and
synchronous; the gateway makes them from its event loop.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

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


class TaskStoreError(Exception):
    """The task database cannot be opened or written."""


def open_database(path: Path, schema: str) -> sqlite3.Connection:
    """The gateway's SQLite file (WAL, autocommit) with `schema` applied; TaskStoreError if it cannot be."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(schema)
    except (OSError, sqlite3.Error) as exc:
        raise TaskStoreError(f"cannot open the task database {path}: {exc}") from exc
    return db


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


class TaskStore:
    """The `tasks` table of one SQLite file."""

    def __init__(self, path: Path, retention: float) -> None:
        self.path = path
        self.retention = retention
        self._db = open_database(path, _SCHEMA)
        self.expire_overdue()

    def close(self) -> None:
        self._db.close()

    def insert(self, records: list[TaskRecord]) -> None:
        """Add new tasks, all or none."""
        columns = list(TaskRecord.model_fields)
        sql = f"INSERT INTO tasks ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})"
        rows = [[_to_column(name, getattr(record, name)) for name in columns] for record in records]
        with self._transaction():
            self._db.executemany(sql, rows)

    def get(self, task_id: str) -> TaskRecord | None:
        row = self._db.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone()
        return None if row is None else _record(row)

    def get_many(self, task_ids: list[str]) -> dict[str, TaskRecord]:
        if not task_ids:
            return {}
        marks = ", ".join("?" for _ in task_ids)
        rows = self._db.execute(f"SELECT * FROM tasks WHERE id IN ({marks})", task_ids).fetchall()
        return {row["id"]: _record(row) for row in rows}

    def pending(self) -> list[TaskRecord]:
        rows = self._db.execute("SELECT * FROM tasks WHERE status = 'pending'").fetchall()
        return [_record(row) for row in rows]

    def pending_count(self, key_id: str | None = None) -> int:
        """Unfinished tasks of `key_id`, or of every key."""
        if key_id is None:
            row = self._db.execute("SELECT COUNT(*) FROM tasks WHERE status = 'pending'").fetchone()
        else:
            row = self._db.execute(
                "SELECT COUNT(*) FROM tasks WHERE key_id = ? AND status = 'pending'", (key_id,)
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
        with self._transaction():
            cursor = self._db.execute(
                "UPDATE tasks SET status = 'expired', error = ?, updated_at = ?, expires_at = ? "
                "WHERE status = 'pending' AND deadline < ?",
                ("no result before the deadline", now, now + self.retention, now),
            )
        return cursor.rowcount

    def purge(self, now: float | None = None) -> int:
        """Delete tasks kept longer than the retention; how many were deleted."""
        now = time.time() if now is None else now
        with self._transaction():
            cursor = self._db.execute("DELETE FROM tasks WHERE expires_at < ?", (now,))
        return cursor.rowcount

    def _update(self, task_id: str, now: float | None = None, **fields: Any) -> None:
        fields["updated_at"] = time.time() if now is None else now
        assignments = ", ".join(f"{name} = ?" for name in fields)
        values = [_to_column(name, value) for name, value in fields.items()]
        with self._transaction():
            self._db.execute(f"UPDATE tasks SET {assignments} WHERE id = ?", [*values, task_id])

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db, self.path)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error); sqlite errors become TaskStoreError."""

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self._db = db
        self._path = path

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if kind is None:
            self._db.execute("COMMIT")
            return
        self._db.execute("ROLLBACK")
        if isinstance(exc, sqlite3.Error):
            raise TaskStoreError(f"cannot write the task database {self._path}: {exc}") from exc


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
