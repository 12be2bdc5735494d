"""Ledger rows a kill lost, written again at a start from the journal.

The ledger writes its rows every few seconds from memory (no commit on the event loop per task), so a
SIGKILL, an OOM kill or a power loss loses the rows of the tasks that finished in those seconds. The
journal's write that moves a task to FINISHED carries the task's ledger row too (one commit either way),
and keeps it while it keeps the task's record: at a start, every row the journal holds that the ledger
has not (by task id) is written to the ledger.
"""

from __future__ import annotations

import sqlite3
import time

import structlog

from node.daemon.journal import Journal
from node.daemon.journal_file import JournalError
from node.daemon.ledger import Ledger, LedgerEntry

log = structlog.get_logger(__name__)

CLOCK_SLACK_NS = 1_000_000_000  # ended_ns went through a float: look a little earlier for a row's twin
# A kill loses the rows noted since the writer's last flush (every 2 s), which ended after the newest row it
# wrote: rows that ended earlier than that (less this slack: tasks end out of the order they are noted in) are
# in the ledger, or were pruned on purpose (past `ledger_max_rows`), and are not looked at.
RESTORE_WINDOW_NS = 5 * 1_000_000_000


def restore_lost_rows(journal: Journal, ledger: Ledger) -> int:
    """Write to the ledger the rows of tasks that finished in its last moments (or, for a new ledger, in its kept
    days) that the journal holds and the ledger lacks; how many.

    A journal or ledger that cannot be read or written is logged: the node serves all the same."""
    try:
        newest = ledger.newest_ended_ns()
        kept_since = ledger.kept_since_ns(time.time_ns())
        since_ns = kept_since if newest is None else max(kept_since, newest - RESTORE_WINDOW_NS)
        entries = _entries(journal.ledger_entries(since_ns))
        if not entries:
            return 0
        known = ledger.task_ids_since(int(min(entry.ended_at for entry in entries) * 1e9) - CLOCK_SLACK_NS)
        lost = [entry for entry in entries if entry.task_id not in known and entry.ended_at * 1e9 >= since_ns]
        if lost:
            ledger.write(lost)
    except (JournalError, sqlite3.Error) as exc:
        log.error("ledger rows not restored from the journal", error=str(exc))
        return 0
    if lost:
        log.warning("ledger rows lost by a kill restored from the journal", count=len(lost))
    return len(lost)


def _entries(texts: list[str]) -> list[LedgerEntry]:
    entries = []
    for text in texts:
        try:
            entries.append(LedgerEntry.from_journal_form(text))
        except (ValueError, TypeError) as exc:  # a row damaged on disk: the others still count
            log.warning("journalled ledger row unreadable", error=str(exc))
    return entries
