"""The journal's SQLite file: its schema, opening it (WAL, schema version), its rows as JournalEntry.

What the rows mean and how they are bounded is journal.py's.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger(__name__)

SCHEMA_VERSION = 1
# Calls run on the event loop: wait this long, not sqlite3's default 5 s, for a lock
# another process holds, then fail the call with a JournalError.
BUSY_TIMEOUT_S = 0.2

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    task_id        TEXT PRIMARY KEY,
    publisher      TEXT NOT NULL,
    deadline_ns    INTEGER NOT NULL,
    model          TEXT NOT NULL,
    state          TEXT NOT NULL,
    task_message   BLOB NOT NULL,
    result_body    BLOB,
    received_at_ns INTEGER NOT NULL,
    updated_at_ns  INTEGER NOT NULL,
    ledger_entry   TEXT
);
CREATE INDEX IF NOT EXISTS tasks_by_state ON tasks (state, received_at_ns);
CREATE INDEX IF NOT EXISTS tasks_by_deadline ON tasks (deadline_ns);
"""

# Added after the first release (no new schema version: an older node names its columns and ignores it).
_LEDGER_ENTRY_COLUMN = "ALTER TABLE tasks ADD COLUMN ledger_entry TEXT"

COLUMNS = "task_id, publisher, deadline_ns, model, state, task_message, result_body, received_at_ns, updated_at_ns"


class TaskState(StrEnum):
    """Where a task is in its life on this node."""

    ACCEPTED = "accepted"
    RUNNING = "running"
    FINISHED = "finished"
    PUBLISHED = "published"
    DROPPED = "dropped"  # the result could not be published at all; never retried


LIVE = (TaskState.ACCEPTED, TaskState.RUNNING)
RECORDS = (TaskState.PUBLISHED, TaskState.DROPPED)


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


@dataclass(frozen=True)
class JournalUsage:
    """What the journal holds, by kind of row; bytes are bodies and results plus ROW_OVERHEAD_BYTES a row."""

    live_rows: int
    live_bytes: int
    waiting_rows: int
    waiting_bytes: int
    records: int
    record_bytes: int

    @property
    def bytes(self) -> int:
        """All the bytes the journal holds."""
        return self.live_bytes + self.waiting_bytes + self.record_bytes


class JournalError(Exception):
    """The journal cannot be opened or written, or a task cannot make the asked transition."""


def open_journal_file(path: Path) -> sqlite3.Connection:
    """Open (or create) the journal's file at ``path`` (and its directory): WAL, this schema version."""
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
        conn.executescript(SCHEMA)
        if "ledger_entry" not in {row[1] for row in conn.execute("PRAGMA table_info(tasks)")}:
            conn.execute(_LEDGER_ENTRY_COLUMN)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    except sqlite3.Error as exc:
        conn.close()
        raise JournalError(f"cannot open journal {path}: {exc}{damage_hint(exc)}") from exc
    except JournalError:
        conn.close()
        raise
    log.debug("journal opened", path=str(path))
    return conn


def damage_hint(exc: BaseException) -> str:
    """What to do about a journal SQLite finds damaged (else systemd or Docker restarts the node into the same
    error for ever); "" for any other error."""
    if getattr(exc, "sqlite_errorcode", None) in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return "; move the file aside to start with an empty journal (results it held unpublished are lost)"
    return ""


@contextmanager
def sqlite_errors(
    path: Path, action: str, task_id: str | None = None, on_error: Callable[[str], None] | None = None
) -> Iterator[None]:
    """Turn whatever SQLite raises (full disk, locked file, integer overflow) into JournalError;
    `on_error` hears of it first, with the error's text."""
    try:
        yield
    except (sqlite3.Error, OverflowError, ValueError) as exc:
        what = f"{action} task {task_id}" if task_id else action
        error = f"journal {path}: cannot {what}: {type(exc).__name__}: {exc}{damage_hint(exc)}"
        if on_error is not None:
            on_error(error)
        raise JournalError(error) from exc


def compact(conn: sqlite3.Connection, path: Path) -> None:
    """Drop what earlier versions kept: bodies of finished tasks and results of published ones."""
    marks = ", ".join("?" for _ in RECORDS)
    with sqlite_errors(path, "compact"):
        conn.execute(
            f"UPDATE tasks SET task_message = x'', result_body = NULL "
            f"WHERE state IN ({marks}) AND (LENGTH(task_message) > 0 OR result_body IS NOT NULL)",
            tuple(s.value for s in RECORDS),
        )
        conn.execute(
            "UPDATE tasks SET task_message = x'' WHERE state = ? AND LENGTH(task_message) > 0",
            (TaskState.FINISHED.value,),
        )


def entry_of(row: tuple[Any, ...]) -> JournalEntry:
    """The journal entry of a row of the tasks table."""
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
