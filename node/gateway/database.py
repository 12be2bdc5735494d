"""The gateway's SQLite file (WAL): each API's table opened, written in short transactions, and purged.

`/v1`'s tasks (`store.py`) and the Dria SDK's (`dria_sdk/store.py`) are tables of one file,
each a `Table`; every row carries `expires_at`, and `purge_loop` deletes the rows past it
in every table every `PURGE_INTERVAL` seconds. Calls are short and synchronous; the gateway
makes them from its event loop.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import structlog

log = structlog.get_logger(__name__)

TRIM_BATCH = 500  # rows deleted per statement (SQLite's bound parameters)

PURGE_INTERVAL = 60.0  # seconds between two purges of every table


class DatabaseError(Exception):
    """The gateway's database cannot be opened or written."""


def open_database(path: Path, schema: str) -> sqlite3.Connection:
    """The SQLite file at `path` (WAL, autocommit) with `schema` applied; DatabaseError if it cannot be."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Its rows hold clients' results in plaintext: owner-only whatever the umask or the directory's mode
        # (SQLite gives its -wal and -shm files the database file's mode).
        path.touch(mode=0o600, exist_ok=True)
        path.chmod(0o600)
        db = sqlite3.connect(path, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(schema)
    except (OSError, sqlite3.Error) as exc:
        raise DatabaseError(f"cannot open the task database {path}: {exc}") from exc
    return db


class Transaction:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error); whatever SQLite raises becomes DatabaseError.

    A full disk or an I/O error in WAL mode shows at COMMIT (or at BEGIN), and SQLite may have
    rolled back already: then there is nothing to roll back, and the error to report is the first one.
    """

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self._db = db
        self._path = path

    def __enter__(self) -> None:
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise DatabaseError(f"cannot write the task database {self._path}: {exc}") from exc

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if kind is None:
            try:
                self._db.execute("COMMIT")
                return
            except sqlite3.Error as commit_error:
                exc = commit_error
        if self._db.in_transaction:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error as rollback_error:  # the file is unusable; the first error says why
                log.warning("task database rollback failed", path=str(self._path), error=str(rollback_error))
        if isinstance(exc, sqlite3.Error):
            raise DatabaseError(f"cannot write the task database {self._path}: {exc}") from exc


class Table:
    """One table of the gateway's file, its own connection; rows are deleted `retention` after they expire,
    and the finished ones that expire first before that while the table holds more than `max_bytes`."""

    name: ClassVar[str]  # the table
    schema: ClassVar[str]  # CREATE ... IF NOT EXISTS statements
    row_bytes: ClassVar[str]  # SQL: about what one row takes on disk
    finished: ClassVar[str]  # SQL: a row whose outcome is in (one a caller may still be waiting for is not)
    trim_order: ClassVar[str] = "expires_at"  # SQL: the finished rows deleted first when over `max_bytes`

    def __init__(self, path: Path, retention: float, max_bytes: int | None = None) -> None:
        self.path = path
        self.retention = retention
        self.max_bytes = max_bytes
        self._db = open_database(path, self.schema)

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def purge(self, now: float | None = None) -> int:
        """Delete the rows kept longer than the retention (past `expires_at`), then, while the table holds more
        than `max_bytes`, the finished rows that would expire first; how many were deleted."""
        now = time.time() if now is None else now
        with self.transaction():
            deleted = self._db.execute(f"DELETE FROM {self.name} WHERE expires_at < ?", (now,)).rowcount
            if self.max_bytes is not None:
                deleted += self._trim(self.max_bytes)
        return deleted

    def stored_bytes(self) -> int:
        """About what the table's rows take."""
        return int(self._db.execute(f"SELECT COALESCE(SUM({self.row_bytes}), 0) FROM {self.name}").fetchone()[0])

    def _trim(self, max_bytes: int) -> int:
        over = self.stored_bytes() - max_bytes
        if over <= 0:
            return 0
        doomed: list[int] = []
        rows = self._db.execute(
            f"SELECT rowid, {self.row_bytes} FROM {self.name} WHERE {self.finished} ORDER BY {self.trim_order}"
        )
        for rowid, size in rows:
            if over <= 0:
                break
            doomed.append(rowid)
            over -= size
        rows.close()
        for start in range(0, len(doomed), TRIM_BATCH):
            batch = doomed[start : start + TRIM_BATCH]
            self._db.execute(f"DELETE FROM {self.name} WHERE rowid IN ({','.join('?' * len(batch))})", batch)
        if doomed:
            log.warning(
                "task database over its size: oldest finished tasks deleted", table=self.name, count=len(doomed)
            )
        return len(doomed)

    def transaction(self) -> Transaction:
        """A transaction on the database, for `with`."""
        return Transaction(self._db, self.path)


async def purge_loop(tables: Sequence[Table], interval: float = PURGE_INTERVAL) -> None:
    """Purge every table now and then every `interval` seconds, until cancelled."""
    while True:
        for table in tables:
            try:
                deleted = table.purge()
            except DatabaseError as exc:
                log.warning("could not delete expired tasks", table=table.name, error=str(exc))
            except Exception:  # noqa: BLE001 - the purge outlives any one failure: expired rows must go eventually
                log.exception("could not delete expired tasks", table=table.name)
            else:
                if deleted:
                    log.info("expired tasks deleted", table=table.name, count=deleted)
        await asyncio.sleep(interval)
