"""The ledger: rows of finished tasks in SQLite, bounded by days and rows, totals read back."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import deque
from pathlib import Path

import pytest

from node.daemon.ledger import ERROR_CHARS, PENDING_MAX, Ledger, LedgerEntry, LedgerError, outcome_of, totals
from node.wire.error_kinds import ErrorKind, parse_error
from workflows.errors import INVALID_PROMPT


def entry(
    task_id: str,
    *,
    model: str = "m",
    publisher: str = "aa" * 20,
    ended: float | None = None,
    error: str | None = None,
    tokens: int = 5,
) -> LedgerEntry:
    end = time.time() if ended is None else ended
    return LedgerEntry(
        task_id=task_id,
        publisher=publisher,
        model=model,
        received_at=end - 2,
        started_at=end - 1,
        ended_at=end,
        prompt_tokens=0 if error else 3,
        completion_tokens=0 if error else tokens,
        outcome=outcome_of(None if error is None else parse_error(error).kind),
        error=error,
    )


def test_outcomes_follow_the_error_kind() -> None:
    assert outcome_of(None) == "ok"
    assert outcome_of(ErrorKind.INVALID_PROMPT) == "invalid_prompt"
    assert outcome_of(ErrorKind.BUSY) == "busy"
    assert outcome_of(ErrorKind.INTERRUPTED) == "interrupted"
    assert outcome_of(ErrorKind.FAILED) == "error"


@pytest.mark.parametrize(
    ("text", "outcome"),
    [
        (f"{INVALID_PROMPT}bad", "invalid_prompt"),
        ("busy: node is paused", "busy"),
        ("interrupted: node shutting down", "interrupted"),
        ("deadline passed while the task was running", "error"),
    ],
)
def test_an_error_text_read_at_its_edge_has_the_outcome_its_start_says(text: str, outcome: str) -> None:
    assert outcome_of(parse_error(text).kind) == outcome


def test_totals_by_day_model_publisher_and_outcome(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    ledger = Ledger.open(path, keep_days=30, max_rows=1000)
    ledger.record(entry("a", model="m1", tokens=7))
    ledger.record(entry("b", model="m1", publisher="bb" * 20, tokens=4))
    ledger.record(entry("c", model="m2", error="busy: node is paused"))
    assert totals(path)["model"] == []  # nothing written before the flush
    assert ledger.flush() == 3
    report = totals(path)
    by_model = {t.key: t for t in report["model"]}
    assert (by_model["m1"].tasks, by_model["m1"].ok, by_model["m1"].completion_tokens) == (2, 2, 11)
    assert (by_model["m2"].tasks, by_model["m2"].ok) == (1, 0)
    assert {t.key: t.tasks for t in report["outcome"]} == {"ok": 2, "busy": 1}
    assert {t.key: t.tasks for t in report["publisher"]} == {"aa" * 20: 2, "bb" * 20: 1}
    assert [t.key for t in report["day"]] == [time.strftime("%Y-%m-%d", time.gmtime())]
    ledger.close()


def test_rows_are_capped_whoever_sends_them_and_errors_clipped(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    ledger = Ledger.open(path, keep_days=30, max_rows=1000)
    for i in range(1500):  # each from a fresh publisher key: keys are free
        ledger.record(entry(f"t{i}", publisher=f"{i:040x}", error="x" * 10_000))
    ledger.flush()
    ledger.close()
    import sqlite3

    with sqlite3.connect(path) as conn:
        count, longest, first = conn.execute("SELECT count(*), max(length(error)), min(task_id) FROM tasks").fetchone()
    assert count == 1000 and longest == ERROR_CHARS
    assert first == "t1000"  # the oldest went first (t500.. sort after t1000 as text)


def test_rows_older_than_the_kept_days_go(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    ledger = Ledger.open(path, keep_days=1, max_rows=1000)
    ledger.record(entry("old", ended=time.time() - 2 * 86400))
    ledger.record(entry("new"))
    ledger.flush()
    assert {t.key for t in totals(path)["outcome"]} == {"ok"}
    assert sum(t.tasks for t in totals(path)["outcome"]) == 1
    ledger.close()


def test_no_ledger_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="no ledger at"):
        totals(tmp_path / "missing.sqlite3")


def test_a_ledger_of_another_layout_is_refused_at_open_naming_it(tmp_path: Path) -> None:
    # Opened as it was, every later write failed: the node ran, and lost each row, without a word at start.
    path = tmp_path / "ledger.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE tasks (id INTEGER PRIMARY KEY, task_id TEXT, ended_ns INTEGER)")
    with pytest.raises(
        LedgerError, match=rf"cannot open the ledger {path}: its tasks table has the columns id, task_id, ended_ns, not"
    ):
        Ledger.open(path, keep_days=30, max_rows=1000)
    fresh = Ledger.open(tmp_path / "new.sqlite3", keep_days=30, max_rows=1000)  # this version's own layout passes
    fresh.close()


def test_a_damaged_ledger_is_moved_aside_and_a_new_one_started(tmp_path: Path) -> None:
    """A ledger SQLite cannot read stopped the node at every start (a restart loop under systemd): it is an
    account of finished tasks, so it is kept under another name and the node goes on with a new one."""
    path = tmp_path / "ledger.sqlite3"
    garbage = b"not a database, but an operator's only copy of their accounts" * 100
    path.write_bytes(garbage)
    ledger = Ledger.open(path, keep_days=30, max_rows=1000)
    ledger.record(entry("t1"))
    assert ledger.flush() == 1
    ledger.close()
    assert [row.tasks for row in totals(path)["model"]] == [1]
    (aside,) = [p for p in tmp_path.iterdir() if p.name.startswith("ledger.sqlite3.damaged-")]
    assert aside.read_bytes() == garbage


async def test_a_ledger_that_cannot_be_written_drops_rows_and_keeps_running(tmp_path: Path) -> None:
    import asyncio
    import sqlite3

    path = tmp_path / "ledger.sqlite3"
    ledger = Ledger.open(path, keep_days=30, max_rows=1000)
    with sqlite3.connect(path) as other:  # the file changed under the node: every write fails
        other.execute("DROP TABLE tasks")
    ledger.record(entry("a"))
    writer = asyncio.create_task(ledger.run(interval=0.05))
    for _ in range(100):
        if ledger.dropped:
            break
        await asyncio.sleep(0.05)
    assert ledger.dropped == 1
    assert not writer.done()  # the loop goes on
    writer.cancel()
    ledger.record(entry("b"))
    with pytest.raises(sqlite3.OperationalError):
        ledger.flush()
    assert ledger.dropped == 2


class FlushAtLen(deque[LedgerEntry]):
    """A pending deque whose len() lets the writer thread drain it first, as a switch of the GIL there can."""

    ledger: Ledger | None = None

    def __len__(self) -> int:
        size = super().__len__()
        if self.ledger is not None and threading.current_thread() is threading.main_thread():
            ledger, self.ledger = self.ledger, None
            writer = threading.Thread(target=ledger.flush)
            writer.start()
            writer.join()
        return size


def test_a_row_noted_while_the_writer_thread_drains_the_full_queue_is_kept_and_nothing_raises(tmp_path: Path) -> None:
    # record() checked the length, then popped: with the writer behind (10,000 rows waiting) and its thread
    # draining between the two, the pop raised IndexError in TaskRunner._finish, before the result was sent.
    path = tmp_path / "ledger.sqlite3"
    ledger = Ledger.open(path, keep_days=1, max_rows=10**6)
    pending = FlushAtLen((entry(f"t{i}") for i in range(PENDING_MAX)), maxlen=PENDING_MAX)
    ledger._pending = pending
    pending.ledger = ledger
    ledger.record(entry("last"))
    assert ledger.flush() == 1  # the writer took the 10,000; the last one waited for the next flush
    assert sum(t.tasks for t in totals(path)["model"]) == PENDING_MAX + 1
    ledger.close()
