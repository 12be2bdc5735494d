"""Crash-safe task journal: which tasks this node accepted, ran and published.

One SQLite file in the data directory, in WAL mode with ``synchronous=NORMAL``:
a commit is a write to the WAL without fsync, so a call takes microseconds and
runs on the event loop thread. A process crash loses nothing; a power loss may
lose the last few transactions, which at worst re-runs or re-publishes a task.

A task moves ACCEPTED -> FINISHED -> PUBLISHED. After a restart the
daemon re-publishes ``unpublished()`` results and deals with ``interrupted()``
tasks; ``known_ids()`` lets intake dedupe tasks that gossip delivers again.
Whether an interrupted task had started does not change what recovery does, so
its start is not a write of its own (one commit less per task on the event loop);
RUNNING is the state earlier versions wrote then, read as ACCEPTED is.

Bounded by what the node owes, never by how many keys send tasks (keys are free):

- live rows (ACCEPTED, RUNNING) hold the signed task only for a task admission
  let run, so at most its capacity plus queue per model; a task answered busy
  is journalled without its body, so that its error result is still published;
- waiting rows (FINISHED) hold the result only: the task body goes when the task
  finishes. Past ``max_waiting_bytes`` of waiting results (the node had no peers
  to publish to) the oldest waiting result is dropped: logged, never retried;
- records (PUBLISHED, DROPPED) hold no body at all: the task id, its deadline and
  a few fixed-size fields, to dedupe a re-delivered task until its deadline, and its
  ledger row (its error clipped; node/daemon/ledger_restore.py writes it at a start when
  the ledger lost it). Past ``max_records`` the records with the earliest deadlines are
  forgotten first.

So no task is ever turned away for room in the journal; only SQLite failures (disk
full, a locked file, a number SQLite cannot store) fail a write, as a JournalError.
Each is counted (`errors`), and `failing()` names the latest for a while after it:
the node reports itself unhealthy and offers no free places meanwhile.
"""

from __future__ import annotations

import sqlite3
import time
from contextlib import AbstractContextManager
from pathlib import Path

import structlog

from node.daemon.journal_file import (
    COLUMNS,
    LIVE,
    RECORDS,
    JournalEntry,
    JournalError,
    JournalUsage,
    TaskState,
    compact,
    entry_of,
    open_journal_file,
    sqlite_errors,
)
from node.wire.inbound import LogWindow

log = structlog.get_logger(__name__)

ROW_OVERHEAD_BYTES = 256  # what a row costs beyond its task body and result, counted against the caps
DEFAULT_MAX_WAITING_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_RECORDS = 100_000
DROP_LOG_WINDOW_S = 10.0
FAILING_FOR_S = 30.0  # how long after an SQLite error the journal counts as failing
_DROP_BATCH = 16


class Journal:
    """Task journal on one SQLite file; use from one thread (the event loop's)."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: Path,
        max_waiting_bytes: int = DEFAULT_MAX_WAITING_BYTES,
        max_records: int = DEFAULT_MAX_RECORDS,
    ) -> None:
        self._conn = conn
        self.path = path
        self.max_waiting_bytes = max_waiting_bytes
        self.max_records = max_records
        self.waiting_bytes = 0
        self.records = 0
        self._drop_log = LogWindow(DROP_LOG_WINDOW_S)  # a node without peers drops one result per new one
        self.errors = 0  # SQLite failures since the journal opened
        self._last_error: tuple[float, str] | None = None  # (monotonic time, text) of the latest
        compact(conn, path)
        self._count()

    @classmethod
    def open(
        cls,
        path: Path,
        max_waiting_bytes: int = DEFAULT_MAX_WAITING_BYTES,
        max_records: int = DEFAULT_MAX_RECORDS,
    ) -> Journal:
        """Open (or create) the journal at ``path``, creating its parent directory.

        ``max_waiting_bytes``: results waiting to be published (plus a fixed overhead
        per row) past which the oldest is dropped; ``max_records``: dedupe records
        (published or dropped tasks, no bodies) past which the earliest deadlines go.
        """
        conn = open_journal_file(Path(path))
        try:
            return cls(conn, Path(path), max_waiting_bytes, max_records)
        except JournalError:
            conn.close()
            raise

    def _guard(self, action: str, task_id: str | None = None) -> AbstractContextManager[None]:
        return sqlite_errors(self.path, action, task_id, self._on_error)

    def _on_error(self, error: str) -> None:
        self.errors += 1
        self._last_error = (time.monotonic(), error)

    def failing(self, within_s: float = FAILING_FOR_S) -> str | None:
        """The latest SQLite error if it came less than `within_s` seconds ago (a full disk, an I/O error)."""
        if self._last_error is None or time.monotonic() - self._last_error[0] >= within_s:
            return None
        return self._last_error[1]

    def _count(self) -> None:
        usage = self.usage()
        self.waiting_bytes = usage.waiting_bytes
        self.records = usage.records

    def usage(self) -> JournalUsage:
        """Rows and bytes by kind (one query over the table: for tests, status and start-up)."""
        with self._guard("count its rows"):
            rows = self._conn.execute(
                "SELECT state, COUNT(*), SUM(LENGTH(task_message) + COALESCE(LENGTH(result_body), 0)) "
                "FROM tasks GROUP BY state"
            ).fetchall()
        count = {TaskState(state): (int(n), int(size or 0) + int(n) * ROW_OVERHEAD_BYTES) for state, n, size in rows}

        def total(states: tuple[TaskState, ...]) -> tuple[int, int]:
            return sum(count.get(s, (0, 0))[0] for s in states), sum(count.get(s, (0, 0))[1] for s in states)

        live = total(LIVE)
        waiting = total((TaskState.FINISHED,))
        records = total(RECORDS)
        return JournalUsage(live[0], live[1], waiting[0], waiting[1], records[0], records[1])

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

        ``task_message`` is the signed task for a task admission lets run, empty for
        one it answers busy: only its id and its error result are kept. JournalError
        when SQLite fails; then nothing was written.
        """
        with self._guard("journal", task_id):
            cur = self._conn.execute(
                f"INSERT OR IGNORE INTO tasks ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, NULL, ?, ?)",
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
        return cur.rowcount == 1

    def known_ids(self, now_ns: int) -> list[tuple[str, int]]:
        """(task id, deadline) of every entry whose deadline has not passed (to dedupe after a restart)."""
        with self._guard("list task ids"):
            rows = self._conn.execute(
                "SELECT task_id, deadline_ns FROM tasks WHERE deadline_ns >= ?", (now_ns,)
            ).fetchall()
        return [(task_id, int(deadline)) for task_id, deadline in rows]

    def get(self, task_id: str) -> JournalEntry | None:
        """The entry for ``task_id``, or None."""
        with self._guard("read", task_id):
            row = self._conn.execute(f"SELECT {COLUMNS} FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        return None if row is None else entry_of(row)

    def state(self, task_id: str) -> TaskState | None:
        """Where ``task_id`` is (None: not in the journal); reads no body."""
        with self._guard("read", task_id):
            row = self._conn.execute("SELECT state FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        return None if row is None else TaskState(row[0])

    def record_finished(self, task_id: str, result_body: bytes, ledger_entry: str | None = None) -> None:
        """Store the encoded result/error body (unsealed), drop the task body, move to FINISHED.

        The result is never refused for room: the task was accepted, so its result is
        owed. Past ``max_waiting_bytes`` of waiting results the oldest others are dropped.
        `ledger_entry`: the task's ledger row (JSON), kept past its publication in the same write.
        """
        self._transition(task_id, TaskState.FINISHED, LIVE, result_body, drop_task=True, ledger_entry=ledger_entry)
        self.waiting_bytes += len(result_body) + ROW_OVERHEAD_BYTES
        if self.waiting_bytes > self.max_waiting_bytes:
            try:
                self._drop_oldest_waiting(keep=task_id)
            except JournalError as exc:  # this result is journalled: the next one over the cap drops again
                log.error("waiting results not dropped", error=str(exc))

    def mark_published(self, task_id: str, result_bytes: int | None = None) -> None:
        """FINISHED -> PUBLISHED (a no-op if already PUBLISHED); only the dedupe record stays.

        `result_bytes`: the size of the result the caller journalled with `record_finished` and has
        not changed since, which spares reading it back (one statement instead of two).
        """
        if result_bytes is not None:
            with self._guard("move to published", task_id):
                cur = self._conn.execute(
                    "UPDATE tasks SET state = ?, updated_at_ns = ?, task_message = x'', result_body = NULL "
                    "WHERE task_id = ? AND state = ? AND LENGTH(result_body) = ?",
                    (TaskState.PUBLISHED.value, time.time_ns(), task_id, TaskState.FINISHED.value, result_bytes),
                )
            if cur.rowcount == 1:
                self._count_record(result_bytes)
                return
        self._to_record(task_id, TaskState.PUBLISHED, (TaskState.FINISHED, TaskState.PUBLISHED))

    def replace_result(self, task_id: str, result_body: bytes) -> None:
        """Swap the stored result of a FINISHED task (for one that cannot be sent as it is)."""
        before = self._state_and_result_bytes(task_id)
        self._transition(task_id, TaskState.FINISHED, (TaskState.FINISHED,), result_body)
        if before is not None:
            self.waiting_bytes += len(result_body) - before[1]

    def mark_dropped(self, task_id: str) -> None:
        """FINISHED -> DROPPED: the result cannot be published; never retried, even after a restart."""
        self._to_record(task_id, TaskState.DROPPED, (TaskState.FINISHED, TaskState.DROPPED))

    def unpublished(self) -> list[JournalEntry]:
        """FINISHED entries whose result is not yet published, oldest first."""
        return self._select_states((TaskState.FINISHED,))

    def interrupted(self) -> list[JournalEntry]:
        """ACCEPTED or RUNNING entries, oldest first (left there by a crash)."""
        return self._select_states(LIVE)

    def ledger_entries(self, since_ns: int = 0) -> list[str]:
        """The ledger rows (JSON) of the tasks the journal holds that finished at `since_ns` or later (their
        record was last changed then or after), oldest first."""
        with self._guard("list ledger rows"):
            rows = self._conn.execute(
                "SELECT ledger_entry FROM tasks WHERE ledger_entry IS NOT NULL AND updated_at_ns >= ?"
                " ORDER BY received_at_ns, rowid",
                (since_ns,),
            ).fetchall()
        return [row[0] for row in rows]

    def backlog(self) -> int:
        """How many FINISHED results are waiting to be published."""
        with self._guard("count the backlog"):
            row = self._conn.execute(
                "SELECT COUNT(*) FROM tasks WHERE state = ?", (TaskState.FINISHED.value,)
            ).fetchone()
        return int(row[0])

    def prune(self, before_ns: int) -> int:
        """Delete entries whose deadline is older than ``before_ns``; return how many.

        Records are kept until their deadline passes so that intake still dedupes
        a re-delivered task; after it, intake rejects the task as expired anyway. The
        outbox passes its result grace: a result later than that is of no use.
        """
        with self._guard("prune"):
            cur = self._conn.execute("DELETE FROM tasks WHERE deadline_ns < ?", (before_ns,))
        if cur.rowcount:
            self._count()
        return cur.rowcount

    def close(self) -> None:
        """Checkpoint the WAL and close the file."""
        try:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            log.warning("journal checkpoint failed", path=str(self.path), error=str(exc))
        self._conn.close()

    def _to_record(self, task_id: str, to: TaskState, allowed_from: tuple[TaskState, ...]) -> None:
        """Move a FINISHED task to a body-less record, counting it; forget the oldest records past the cap."""
        before = self._state_and_result_bytes(task_id)
        self._transition(task_id, to, allowed_from, drop_task=True, drop_result=True)
        if before is not None and before[0] == TaskState.FINISHED:
            self._count_record(before[1])

    def _count_record(self, result_bytes: int) -> None:
        """A FINISHED row holding `result_bytes` became a record: count it, and forget the oldest past the cap."""
        self.waiting_bytes -= result_bytes + ROW_OVERHEAD_BYTES
        self.records += 1
        if self.records > self.max_records:
            self._forget_oldest_records()

    def _state_and_result_bytes(self, task_id: str) -> tuple[TaskState, int] | None:
        with self._guard("read", task_id):
            row = self._conn.execute(
                "SELECT state, COALESCE(LENGTH(result_body), 0) FROM tasks WHERE task_id = ?", (task_id,)
            ).fetchone()
        return None if row is None else (TaskState(row[0]), int(row[1]))

    def _drop_oldest_waiting(self, keep: str) -> None:
        """Drop waiting results, oldest first (never ``keep``), until they fit ``max_waiting_bytes``."""
        over = self.waiting_bytes - self.max_waiting_bytes
        dropped: list[str] = []
        while over > 0:  # a few oldest at a time (the state index keeps them in order): never the whole table
            with self._guard("list waiting results"):
                rows = self._conn.execute(
                    "SELECT task_id, COALESCE(LENGTH(result_body), 0) FROM tasks WHERE state = ? AND task_id != ? "
                    "ORDER BY received_at_ns, rowid LIMIT ? OFFSET ?",
                    (TaskState.FINISHED.value, keep, _DROP_BATCH, len(dropped)),
                ).fetchall()
            if not rows:
                break
            for task_id, size in rows:
                if over <= 0:
                    break
                dropped.append(task_id)
                over -= size + ROW_OVERHEAD_BYTES
        for task_id in dropped:
            self.mark_dropped(task_id)
        if dropped and (not_logged := self._drop_log.may_log("dropped")) is not None:
            log.warning(
                "waiting results dropped: more than the journal keeps for a node without peers",
                count=len(dropped),
                oldest=dropped[0],
                max_waiting_bytes=self.max_waiting_bytes,
                not_logged_since=not_logged,
            )

    def _forget_oldest_records(self) -> None:
        # A hundredth of the cap at once, so that a full table is trimmed once per many tasks, not on each.
        excess = self.records - self.max_records + max(1, self.max_records // 100)
        marks = ", ".join("?" for _ in RECORDS)
        with self._guard("forget old records"):
            cur = self._conn.execute(
                f"DELETE FROM tasks WHERE rowid IN (SELECT rowid FROM tasks WHERE state IN ({marks}) "
                f"ORDER BY deadline_ns LIMIT ?)",
                (*(s.value for s in RECORDS), excess),
            )
        self.records -= cur.rowcount

    def _transition(
        self,
        task_id: str,
        to: TaskState,
        allowed_from: tuple[TaskState, ...],
        result_body: bytes | None = None,
        *,
        drop_task: bool = False,
        drop_result: bool = False,
        ledger_entry: str | None = None,
    ) -> None:
        marks = ", ".join("?" for _ in allowed_from)
        assignments = ["state = ?", "updated_at_ns = ?"]
        values: list[object] = [to.value, time.time_ns()]
        if result_body is not None:
            assignments.append("result_body = ?")
            values.append(result_body)
        if drop_task:
            assignments.append("task_message = x''")
        if drop_result:
            assignments.append("result_body = NULL")
        if ledger_entry is not None:
            assignments.append("ledger_entry = ?")
            values.append(ledger_entry)
        with self._guard(f"move to {to.value}", task_id):
            cur = self._conn.execute(
                f"UPDATE tasks SET {', '.join(assignments)} WHERE task_id = ? AND state IN ({marks})",
                (*values, task_id, *(s.value for s in allowed_from)),
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
                f"SELECT {COLUMNS} FROM tasks WHERE state IN ({marks}) ORDER BY received_at_ns, rowid",
                tuple(s.value for s in states),
            ).fetchall()
        return [entry_of(row) for row in rows]
