"""The ledger: a local record of every task this node accepted, kept in bounded space.

One row per finished task (publisher, model, times, token counts, outcome) in
`<data_dir>/ledger.sqlite3`. `record` is called on the event loop when a task
finishes and only appends to memory; `run` writes the rows in a worker thread every
few seconds and prunes rows older than `keep_days` and beyond `max_rows` (keys are
free, so the bound is on rows, whoever sent them). The rows a kill takes from memory come back at the next
start from the journal, which keeps each (`journal_form`) with the task's record (node/daemon/ledger_restore.py).
`totals` reads it back for
`compute-node ledger`. (/status shows the last hour from node/ops/activity.py, not from here.)
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections import deque
from pathlib import Path
from typing import Literal

import structlog
from pydantic import BaseModel

from node.wire.error_kinds import ErrorKind

log = structlog.get_logger(__name__)

Outcome = Literal["ok", "error", "invalid_prompt", "busy", "interrupted"]
ERROR_CHARS = 200  # error texts are clipped: a row's size is bounded whatever a task did
PENDING_MAX = 10_000  # rows waiting for the writer; past it the oldest are dropped (and counted)
GROUPINGS = ("day", "model", "publisher", "outcome")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id TEXT NOT NULL,
    publisher TEXT NOT NULL,
    model TEXT NOT NULL,
    received_ns INTEGER NOT NULL,
    started_ns INTEGER NOT NULL,
    ended_ns INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    error TEXT
);
CREATE INDEX IF NOT EXISTS tasks_ended ON tasks (ended_ns);
"""
_COLUMNS = (
    "id",
    "task_id",
    "publisher",
    "model",
    "received_ns",
    "started_ns",
    "ended_ns",
    "prompt_tokens",
    "completion_tokens",
    "outcome",
    "error",
)
_GROUP_SQL = {
    "day": "date(ended_ns / 1000000000, 'unixepoch')",
    "model": "model",
    "publisher": "publisher",
    "outcome": "outcome",
}


class LedgerError(Exception):
    """The ledger file could not be opened or read."""


class LedgerEntry(BaseModel):
    """One finished task, as the ledger keeps it (times in unix seconds)."""

    task_id: str
    publisher: str
    model: str
    received_at: float
    started_at: float
    ended_at: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    outcome: Outcome
    error: str | None = None

    def journal_form(self) -> str:
        """The entry as a JSON array of its fields in order, its error clipped as the ledger keeps it: the
        journal holds it with the task's record (node/daemon/ledger_restore.py), so it is kept small."""
        error = self.error[:ERROR_CHARS] if self.error is not None else None
        return json.dumps(
            [*(getattr(self, name) for name in _ENTRY_FIELDS[:-1]), error], separators=(",", ":"), ensure_ascii=False
        )

    @classmethod
    def from_journal_form(cls, text: str) -> LedgerEntry:
        """The entry of `journal_form`'s text; ValueError (pydantic's ValidationError among them) if it is none."""
        values = json.loads(text)
        if not isinstance(values, list) or len(values) != len(_ENTRY_FIELDS):
            raise ValueError("not a journalled ledger row")
        return cls.model_validate(dict(zip(_ENTRY_FIELDS, values, strict=True)))


_ENTRY_FIELDS = tuple(LedgerEntry.model_fields)  # error last


class Totals(BaseModel):
    """Tasks and tokens of one group (a day, model, publisher or outcome)."""

    key: str
    tasks: int
    ok: int
    prompt_tokens: int
    completion_tokens: int


_OUTCOMES: dict[ErrorKind, Outcome] = {
    ErrorKind.INVALID_PROMPT: "invalid_prompt",
    ErrorKind.BUSY: "busy",
    ErrorKind.INTERRUPTED: "interrupted",
    ErrorKind.FAILED: "error",
}


def outcome_of(kind: ErrorKind | None) -> Outcome:
    """The outcome of a task whose error is of `kind` (None: it succeeded)."""
    return "ok" if kind is None else _OUTCOMES[kind]


class Ledger:
    """Rows of finished tasks: appended in memory on the loop, written to SQLite in a thread."""

    def __init__(self, conn: sqlite3.Connection, keep_days: float, max_rows: int) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self._keep_ns = int(keep_days * 86400 * 1e9)
        self._max_rows = max_rows
        # Appended on the loop, drained by flush() in a worker thread: only each deque call is atomic, so
        # neither side checks its length before it pops (a bounded deque drops its oldest row by itself).
        self._pending: deque[LedgerEntry] = deque(maxlen=PENDING_MAX)
        self.dropped = 0

    @classmethod
    def open(cls, path: Path, keep_days: float, max_rows: int) -> Ledger:
        """Open (or create) the ledger at `path` and prune its old rows; LedgerError if it cannot be opened.

        A file SQLite finds damaged is moved aside (kept, its name saying so) and a new ledger started: it is an
        account of finished tasks, and a node that refused to start for it would be restarted into the same
        error for ever by systemd or Docker."""
        try:
            return cls._open(path, keep_days, max_rows)
        except LedgerError as exc:
            if getattr(exc.__cause__, "sqlite_errorcode", None) not in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
                raise
            aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}")
            try:
                for suffix in ("-wal", "-shm", ""):  # its write-ahead log first: never left beside a new file
                    if (part := Path(f"{path}{suffix}")).exists():
                        part.rename(f"{aside}{suffix}")
            except OSError as error:
                raise LedgerError(f"{exc}; and it cannot be moved aside: {error}") from error
            log.error(
                "ledger damaged: moved aside, a new one started", path=str(path), moved_to=str(aside), error=str(exc)
            )
            return cls._open(path, keep_days, max_rows)

    @classmethod
    def _open(cls, path: Path, keep_days: float, max_rows: int) -> Ledger:
        conn: sqlite3.Connection | None = None
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            path.touch(mode=0o600, exist_ok=True)  # task ids, publishers, error texts: owner-only, as the journal
            path.chmod(0o600)
            conn = sqlite3.connect(path, check_same_thread=False, timeout=1.0)
            conn.execute("PRAGMA journal_mode=WAL")
            columns = tuple(row[1] for row in conn.execute("PRAGMA table_info(tasks)"))
            if columns and columns != _COLUMNS:  # another program's table, or another layout: every write would fail
                raise sqlite3.DatabaseError(
                    f"its tasks table has the columns {', '.join(columns)}, not this version's; move the file aside "
                    "and the node starts a new one"
                )
            conn.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            if conn is not None:
                conn.close()
            raise LedgerError(f"cannot open the ledger {path}: {exc}") from exc
        ledger = cls(conn, keep_days, max_rows)
        try:
            ledger.prune(time.time_ns())
        except sqlite3.Error as exc:  # a full disk: old rows stay until a later prune; the node serves all the same
            log.warning("ledger not pruned", path=str(path), error=str(exc))
        return ledger

    def record(self, entry: LedgerEntry) -> None:
        """Note a finished task (memory only: cheap on the event loop)."""
        if len(self._pending) >= PENDING_MAX:
            self.dropped += 1  # the oldest goes as this one is appended
        self._pending.append(entry)

    async def run(self, interval: float = 2.0) -> None:
        """Write pending rows every `interval` s (in a worker thread) and prune.

        A ledger that cannot be written (full disk, locked file) loses those rows
        (counted in `dropped`, logged) and never stops the node."""
        while True:
            await asyncio.sleep(interval)
            try:
                await asyncio.to_thread(self.flush)
            except sqlite3.Error as exc:
                log.error("ledger rows not written", error=str(exc), dropped=self.dropped)

    def flush(self) -> int:
        """Write the pending rows and prune; how many were written (sqlite3.Error: they are dropped)."""
        rows = []
        while True:
            try:
                rows.append(self._pending.popleft())
            except IndexError:  # empty
                break
        if rows:
            try:
                self.write(rows)
            except sqlite3.Error:
                self.dropped += len(rows)
                raise
        return len(rows)

    def write(self, entries: list[LedgerEntry]) -> None:
        """Write `entries` at once (not through the pending rows, which hold PENDING_MAX), then prune."""
        with self._lock, self._conn:
            self._conn.executemany(
                "INSERT INTO tasks (task_id, publisher, model, received_ns, started_ns, ended_ns,"
                " prompt_tokens, completion_tokens, outcome, error) VALUES (?,?,?,?,?,?,?,?,?,?)",
                [_row(e) for e in entries],
            )
        self.prune(time.time_ns())

    def kept_since_ns(self, now_ns: int) -> int:
        """The oldest end a row may have and be kept (`ledger_days`)."""
        return now_ns - self._keep_ns

    def newest_ended_ns(self) -> int | None:
        """When the newest row's task ended; None for an empty ledger."""
        with self._lock:
            row = self._conn.execute("SELECT max(ended_ns) FROM tasks").fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def task_ids_since(self, since_ns: int) -> set[str]:
        """The task ids of the rows that ended at `since_ns` or later."""
        with self._lock:
            rows = self._conn.execute("SELECT task_id FROM tasks WHERE ended_ns >= ?", (since_ns,)).fetchall()
        return {row[0] for row in rows}

    def prune(self, now_ns: int) -> None:
        """Drop rows older than the kept days, then the oldest beyond the row cap."""
        with self._lock, self._conn:
            self._conn.execute("DELETE FROM tasks WHERE ended_ns < ?", (now_ns - self._keep_ns,))
            self._conn.execute("DELETE FROM tasks WHERE id <= (SELECT max(id) FROM tasks) - ?", (self._max_rows,))

    def close(self) -> None:
        """Write the rows not yet written and close the database."""
        try:
            self.flush()
        except sqlite3.Error as exc:
            log.error("ledger rows not written at close", error=str(exc))
        with self._lock:
            self._conn.close()


def _row(entry: LedgerEntry) -> tuple[object, ...]:
    return (
        entry.task_id,
        entry.publisher,
        entry.model,
        int(entry.received_at * 1e9),
        int(entry.started_at * 1e9),
        int(entry.ended_at * 1e9),
        entry.prompt_tokens,
        entry.completion_tokens,
        entry.outcome,
        entry.error[:ERROR_CHARS] if entry.error else None,
    )


def totals(path: Path, since_ns: int = 0) -> dict[str, list[Totals]]:
    """Tasks and tokens since `since_ns`, by day, model, publisher and outcome (read only)."""
    if not path.exists():
        raise LedgerError(f"no ledger at {path}: this node has not finished a task yet (or runs elsewhere)")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error as exc:
        raise LedgerError(f"cannot open the ledger {path}: {exc}") from exc
    try:
        out = {}
        for grouping in GROUPINGS:
            key = _GROUP_SQL[grouping]
            rows = conn.execute(
                f"SELECT {key} AS k, count(*), sum(outcome = 'ok'), sum(prompt_tokens), sum(completion_tokens)"  # noqa: S608 - fixed names
                " FROM tasks WHERE ended_ns >= ? GROUP BY k ORDER BY k",
                (since_ns,),
            ).fetchall()
            out[grouping] = [
                Totals(key=str(k), tasks=n, ok=ok or 0, prompt_tokens=p or 0, completion_tokens=c or 0)
                for k, n, ok, p, c in rows
            ]
        return out
    except sqlite3.Error as exc:
        raise LedgerError(f"cannot read the ledger {path}: {exc}") from exc
    finally:
        conn.close()
