"""Crash-safe task journal: which tasks this node accepted, ran and published.

One SQLite file in the data directory, in WAL mode with ``synchronous=NORMAL``:
a commit is a write to the WAL without fsync, so a call takes microseconds and
runs on the event loop thread. A process crash loses nothing; a power loss may
lose the last few transactions, which at worst re-runs or re-publishes a task.

A task moves ACCEPTED -> RUNNING -> FINISHED -> PUBLISHED. After a restart the
daemon re-publishes ``unpublished()`` results and deals with ``interrupted()``
tasks; ``seen()`` dedupes tasks that gossip delivers again.

Bounded: full task bodies are kept only for tasks the node runs (a refused task
is journalled without its body, so that its error result is still published),
within a byte quota in total and per publisher. Every SQLite failure (disk full,
a locked file, a number SQLite cannot store) surfaces as a JournalError.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

SCHEMA_VERSION = 1
# Calls run on the event loop: wait this long, not sqlite3's default 5 s, for a lock
# another process holds, then fail the call with a JournalError.
BUSY_TIMEOUT_S = 0.2
ROW_OVERHEAD_BYTES = 256  # what a row costs beyond its task body and result, counted against the quota
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
DEFAULT_MAX_PUBLISHER_BYTES = 32 * 1024 * 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    task_id        TEXT PRIMARY KEY,
    publisher      TEXT NOT NULL,
    deadline_ns    INTEGER NOT NULL,
    model          TEXT NOT NULL,
    state          TEXT NOT NULL,
    task_message   BLOB NOT NULL,
    result_body    BLOB,
    received_at_ns INTEGER NOT NULL,
    updated_at_ns  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_by_state ON tasks (state, received_at_ns);
CREATE INDEX IF NOT EXISTS tasks_by_deadline ON tasks (deadline_ns);
"""

_COLUMNS = "task_id, publisher, deadline_ns, model, state, task_message, result_body, received_at_ns, updated_at_ns"


class TaskState(StrEnum):
    """Where a task is in its life on this node."""

    ACCEPTED = "accepted"
    RUNNING = "running"
    FINISHED = "finished"
    PUBLISHED = "published"
    DROPPED = "dropped"  # the result could not be published at all; never retried


@dataclass(frozen=True)
class JournalEntry:
    """One journaled task, as stored."""

    task_id: str
    publisher: str
    deadline_ns: int
    model: str
    state: TaskState
    task_message: bytes
    result_body: bytes | None
    received_at_ns: int
    updated_at_ns: int


class JournalError(Exception):
    """The journal cannot be opened or written, or a task cannot make the asked transition."""


class JournalQuotaError(JournalError):
    """Journalling the task would pass the journal's byte quota (in total or for its publisher)."""


class Journal:
    """Task journal on one SQLite file; use from one thread (the event loop's)."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: Path,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_publisher_bytes: int = DEFAULT_MAX_PUBLISHER_BYTES,
    ) -> None:
        self._conn = conn
        self.path = path
        self.max_bytes = max_bytes
        self.max_publisher_bytes = max_publisher_bytes
        self._bytes_by_publisher: dict[str, int] = {}
        self.bytes_used = 0
        self._count_bytes()

    @classmethod
    def open(
        cls,
        path: Path,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_publisher_bytes: int = DEFAULT_MAX_PUBLISHER_BYTES,
    ) -> Journal:
        """Open (or create) the journal at ``path``, creating its parent directory.

        ``max_bytes`` / ``max_publisher_bytes``: quota of task bodies (plus a fixed
        overhead per row) in total and per publisher; past it a task is refused.
        """
        path = Path(path)
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            # Tasks hold publishers' workflows: readable by the operator only. SQLite
            # gives its -wal and -shm files the database file's permissions.
            path.touch(mode=0o600, exist_ok=True)
            # isolation_level=None: autocommit; every statement is its own transaction.
            conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_S)
        except (OSError, sqlite3.Error) as exc:
            raise JournalError(f"cannot open journal {path}: {exc}") from exc
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise JournalError(f"cannot open journal {path}: WAL mode refused (got {mode!r})")
            conn.execute("PRAGMA synchronous=NORMAL")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise JournalError(
                    f"cannot open journal {path}: schema version {version}, this node knows {SCHEMA_VERSION}"
                )
            conn.executescript(_SCHEMA)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            conn.close()
            raise JournalError(f"cannot open journal {path}: {exc}") from exc
        except JournalError:
            conn.close()
            raise
        log.debug("journal opened", path=str(path))
        try:
            return cls(conn, path, max_bytes, max_publisher_bytes)
        except JournalError:
            conn.close()
            raise

    @contextmanager
    def _guard(self, action: str, task_id: str | None = None) -> Iterator[None]:
        """Turn whatever SQLite raises (full disk, locked file, integer overflow) into JournalError."""
        try:
            yield
        except (sqlite3.Error, OverflowError, ValueError) as exc:
            what = f"{action} task {task_id}" if task_id else action
            raise JournalError(f"journal {self.path}: cannot {what}: {type(exc).__name__}: {exc}") from exc

    def _count_bytes(self) -> None:
        with self._guard("count its bytes"):
            rows = self._conn.execute(
                "SELECT publisher, SUM(LENGTH(task_message)) + SUM(COALESCE(LENGTH(result_body), 0)) + COUNT(*) * ? "
                "FROM tasks GROUP BY publisher",
                (ROW_OVERHEAD_BYTES,),
            ).fetchall()
        self._bytes_by_publisher = {publisher: int(used) for publisher, used in rows}
        self.bytes_used = sum(self._bytes_by_publisher.values())

    def publisher_bytes(self, publisher: str) -> int:
        """Bytes this publisher's tasks take in the journal (as the quota counts them)."""
        return self._bytes_by_publisher.get(publisher, 0)

    def record_accepted(
        self,
        task_id: str,
        publisher: str,
        deadline_ns: int,
        model: str,
        task_message: bytes,
        received_at_ns: int,
    ) -> bool:
        """Journal a newly accepted task; False if ``task_id`` was already there.

        ``task_message`` is empty for a task the node refuses (busy): only its id
        and its error result are kept. JournalQuotaError past the quota, JournalError
        when SQLite fails; either way nothing was written.
        """
        cost = len(task_message) + ROW_OVERHEAD_BYTES
        if self.bytes_used + cost > self.max_bytes:
            raise JournalQuotaError(
                f"journal {self.path} is full: {self.bytes_used} of {self.max_bytes} bytes used, "
                f"task {task_id} needs {cost}"
            )
        if self.publisher_bytes(publisher) + cost > self.max_publisher_bytes:
            raise JournalQuotaError(
                f"publisher {publisher} has {self.publisher_bytes(publisher)} of its "
                f"{self.max_publisher_bytes} journal bytes in use, task {task_id} needs {cost}"
            )
        with self._guard("journal", task_id):
            cur = self._conn.execute(
                f"INSERT OR IGNORE INTO tasks ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, NULL, ?, ?)",
                (
                    task_id,
                    publisher,
                    deadline_ns,
                    model,
                    TaskState.ACCEPTED.value,
                    task_message,
                    received_at_ns,
                    time.time_ns(),
                ),
            )
        if cur.rowcount != 1:
            return False
        self.bytes_used += cost
        self._bytes_by_publisher[publisher] = self.publisher_bytes(publisher) + cost
        return True

    def known_ids(self, now_ns: int) -> list[tuple[str, int]]:
        """(task id, deadline) of every entry whose deadline has not passed (to dedupe after a restart)."""
        with self._guard("list task ids"):
            rows = self._conn.execute(
                "SELECT task_id, deadline_ns FROM tasks WHERE deadline_ns >= ?", (now_ns,)
            ).fetchall()
        return [(task_id, int(deadline)) for task_id, deadline in rows]

    def seen(self, task_id: str) -> bool:
        """Whether ``task_id`` is in the journal (in any state)."""
        with self._guard("look up", task_id):
            row = self._conn.execute("SELECT 1 FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        return row is not None

    def get(self, task_id: str) -> JournalEntry | None:
        """The entry for ``task_id``, or None."""
        with self._guard("read", task_id):
            row = self._conn.execute(f"SELECT {_COLUMNS} FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        return None if row is None else _entry(row)

    def mark_running(self, task_id: str) -> None:
        """ACCEPTED (or RUNNING again, after a restart) -> RUNNING."""
        self._transition(task_id, TaskState.RUNNING, (TaskState.ACCEPTED, TaskState.RUNNING))

    def record_finished(self, task_id: str, result_body: bytes) -> None:
        """Store the encoded result/error body (unsealed) and move to FINISHED.

        The result counts against the quota of the task's publisher but is never refused
        for it: the task was accepted, so its result is owed.
        """
        self._transition(task_id, TaskState.FINISHED, (TaskState.ACCEPTED, TaskState.RUNNING), result_body)
        with self._guard("read", task_id):
            row = self._conn.execute("SELECT publisher FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        if row is not None:
            self.bytes_used += len(result_body)
            self._bytes_by_publisher[row[0]] = self.publisher_bytes(row[0]) + len(result_body)

    def mark_published(self, task_id: str) -> None:
        """FINISHED -> PUBLISHED (a no-op if already PUBLISHED)."""
        self._transition(task_id, TaskState.PUBLISHED, (TaskState.FINISHED, TaskState.PUBLISHED))

    def replace_result(self, task_id: str, result_body: bytes) -> None:
        """Swap the stored result of a FINISHED task (for one that cannot be sent as it is)."""
        self._transition(task_id, TaskState.FINISHED, (TaskState.FINISHED,), result_body)
        self._count_bytes()

    def mark_dropped(self, task_id: str) -> None:
        """FINISHED -> DROPPED: the result cannot be published; never retried, even after a restart."""
        self._transition(task_id, TaskState.DROPPED, (TaskState.FINISHED, TaskState.DROPPED))

    def unpublished(self) -> list[JournalEntry]:
        """FINISHED entries whose result is not yet published, oldest first."""
        return self._select_states((TaskState.FINISHED,))

    def interrupted(self) -> list[JournalEntry]:
        """ACCEPTED or RUNNING entries, oldest first (left there by a crash)."""
        return self._select_states((TaskState.ACCEPTED, TaskState.RUNNING))

    def backlog(self) -> int:
        """How many FINISHED results are waiting to be published."""
        with self._guard("count the backlog"):
            row = self._conn.execute(
                "SELECT COUNT(*) FROM tasks WHERE state = ?", (TaskState.FINISHED.value,)
            ).fetchone()
        return int(row[0])

    def prune(self, before_ns: int) -> int:
        """Delete entries whose deadline is older than ``before_ns``; return how many.

        PUBLISHED entries are kept until their deadline passes so that ``seen()``
        still dedupes a re-delivered task; after it, intake rejects the task as
        expired anyway. Stale unfinished entries past their deadline go too.
        """
        with self._guard("prune"):
            cur = self._conn.execute("DELETE FROM tasks WHERE deadline_ns < ?", (before_ns,))
        if cur.rowcount:
            self._count_bytes()
        return cur.rowcount

    def close(self) -> None:
        """Checkpoint the WAL and close the file."""
        try:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            log.warning("journal checkpoint failed", path=str(self.path), error=str(exc))
        self._conn.close()

    def _transition(
        self,
        task_id: str,
        to: TaskState,
        allowed_from: tuple[TaskState, ...],
        result_body: bytes | None = None,
    ) -> None:
        marks = ", ".join("?" for _ in allowed_from)
        now = time.time_ns()
        with self._guard(f"move to {to.value}", task_id):
            if result_body is None:
                cur = self._conn.execute(
                    f"UPDATE tasks SET state = ?, updated_at_ns = ? WHERE task_id = ? AND state IN ({marks})",
                    (to.value, now, task_id, *(s.value for s in allowed_from)),
                )
            else:
                cur = self._conn.execute(
                    f"UPDATE tasks SET state = ?, result_body = ?, updated_at_ns = ? "
                    f"WHERE task_id = ? AND state IN ({marks})",
                    (to.value, result_body, now, task_id, *(s.value for s in allowed_from)),
                )
            if cur.rowcount == 1:
                return
            row = self._conn.execute("SELECT state FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        if row is None:
            raise JournalError(f"task {task_id} is not in the journal {self.path}")
        raise JournalError(f"task {task_id} cannot go from {row[0]} to {to.value}")

    def _select_states(self, states: tuple[TaskState, ...]) -> list[JournalEntry]:
        marks = ", ".join("?" for _ in states)
        with self._guard("list tasks"):
            rows = self._conn.execute(
                f"SELECT {_COLUMNS} FROM tasks WHERE state IN ({marks}) ORDER BY received_at_ns, rowid",
                tuple(s.value for s in states),
            ).fetchall()
        return [_entry(row) for row in rows]


def _entry(row: tuple) -> JournalEntry:
    return JournalEntry(
        task_id=row[0],
        publisher=row[1],
        deadline_ns=row[2],
        model=row[3],
        state=TaskState(row[4]),
        task_message=bytes(row[5]),
        result_body=None if row[6] is None else bytes(row[6]),
        received_at_ns=row[7],
        updated_at_ns=row[8],
    )
