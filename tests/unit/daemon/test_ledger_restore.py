"""Ledger rows a kill lost, written again at a start from what the journal keeps (real SQLite files)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from node.daemon.journal import Journal
from node.daemon.journal_file import SCHEMA
from node.daemon.ledger import ERROR_CHARS, PENDING_MAX, Ledger, LedgerEntry, totals
from node.daemon.ledger_restore import restore_lost_rows

HOUR_NS = 3600 * 10**9


def finished(
    journal: Journal, task_id: str, *, tokens: int = 7, error: str | None = None, ago_s: float = 0.0
) -> LedgerEntry:
    """A task accepted, finished (`ago_s` seconds ago) with its ledger row journalled, and published."""
    now = time.time_ns() - int(ago_s * 1e9)
    journal.record_accepted(task_id, "aa" * 20, now + HOUR_NS, "m", b"task", now - 2 * 10**9)
    row = LedgerEntry(
        task_id=task_id,
        publisher="aa" * 20,
        model="m",
        received_at=now / 1e9 - 2,
        started_at=now / 1e9 - 1,
        ended_at=now / 1e9,
        completion_tokens=0 if error else tokens,
        outcome="error" if error else "ok",
        error=error,
    )
    journal.record_finished(task_id, b"result", row.journal_form())
    journal.mark_published(task_id, len(b"result"))
    return row


def test_a_row_the_ledger_never_wrote_comes_back_from_the_journal_once(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path / "journal.sqlite3")
    ledger = Ledger.open(tmp_path / "ledger.sqlite3", keep_days=30, max_rows=100)
    written = finished(journal, "written")
    ledger.record(written)
    ledger.flush()
    lost = finished(journal, "lost", tokens=11, error="x" * 1000)
    ledger.record(lost)  # in memory only: the kill comes before the writer's next flush
    journal.close()
    ledger = Ledger.open(tmp_path / "ledger.sqlite3", keep_days=30, max_rows=100)  # the restart
    journal = Journal.open(tmp_path / "journal.sqlite3")
    try:
        assert restore_lost_rows(journal, ledger) == 1
        assert restore_lost_rows(journal, ledger) == 0  # never twice
        by_outcome = {t.key: t.tasks for t in totals(tmp_path / "ledger.sqlite3")["outcome"]}
        assert by_outcome == {"ok": 1, "error": 1}
        with sqlite3.connect(tmp_path / "ledger.sqlite3") as db:
            error = db.execute("SELECT error FROM tasks WHERE task_id = 'lost'").fetchone()[0]
        assert error == "x" * ERROR_CHARS
    finally:
        journal.close()
        ledger.close()


def test_a_journal_of_the_first_release_gets_the_column_and_its_records_restore_nothing(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript(SCHEMA.replace(",\n    ledger_entry   TEXT", ""))
        db.execute(
            "INSERT INTO tasks VALUES ('old', 'aa', ?, 'm', 'published', x'', NULL, 1, 2)", (time.time_ns() + HOUR_NS,)
        )
    journal = Journal.open(path)
    ledger = Ledger.open(tmp_path / "ledger.sqlite3", keep_days=30, max_rows=100)
    try:
        assert restore_lost_rows(journal, ledger) == 0
        finished(journal, "new")
        assert restore_lost_rows(journal, ledger) == 1
    finally:
        journal.close()
        ledger.close()


def test_rows_the_ledger_pruned_on_purpose_stay_out_and_a_new_ledger_gets_all_it_keeps(tmp_path: Path) -> None:
    """A ledger capped below the journal's records pruned rows at every flush; a restore that took every row it
    lacked brought them back at each start ("restored 2000" after clean stops), and a new ledger (a damaged one
    moved aside) got at most the pending queue's 10,000 of 100,000, the rest counted as dropped."""
    journal = Journal.open(tmp_path / "journal.sqlite3")
    rows = [finished(journal, f"t{i}", ago_s=3600 - i) for i in range(1500)]  # one a second, for 25 minutes
    capped = Ledger.open(tmp_path / "capped.sqlite3", keep_days=30, max_rows=500)
    capped.write(rows)  # as its writer did, task by task: it keeps the newest 500
    assert restore_lost_rows(journal, capped) == 0  # a clean restart: nothing was lost
    capped.close()
    many = Ledger.open(tmp_path / "new.sqlite3", keep_days=30, max_rows=100_000)
    with_more = rows + [finished(journal, f"u{i}") for i in range(PENDING_MAX)]
    try:
        assert restore_lost_rows(journal, many) == len(with_more)
        assert many.dropped == 0
        assert sum(t.tasks for t in totals(tmp_path / "new.sqlite3")["outcome"]) == len(with_more)
    finally:
        journal.close()
        many.close()
