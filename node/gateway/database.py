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

PURGE_INTERVAL = 60.0  # seconds between two purges of every table


class DatabaseError(Exception):
    """The gateway's database cannot be opened or written."""


def open_database(path: Path, schema: str) -> sqlite3.Connection:
    """The SQLite file at `path` (WAL, autocommit) with `schema` applied; DatabaseError if it cannot be."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
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
    """One table of the gateway's file, its own connection; rows are deleted `retention` after they expire."""

    name: ClassVar[str]  # the table
    schema: ClassVar[str]  # CREATE ... IF NOT EXISTS statements

    def __init__(self, path: Path, retention: float) -> None:
        self.path = path
        self.retention = retention
        self._db = open_database(path, self.schema)

    def close(self) -> None:
        self._db.close()

    def purge(self, now: float | None = None) -> int:
        """Delete the rows kept longer than the retention (past `expires_at`); how many were deleted."""
        now = time.time() if now is None else now
        with self.transaction():
            cursor = self._db.execute(f"DELETE FROM {self.name} WHERE expires_at < ?", (now,))
        return cursor.rowcount

    def transaction(self) -> Transaction:
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
