"""The task journal on a real SQLite file in a temporary directory."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from node.journal import Journal, JournalEntry, JournalError, TaskState

HOUR_NS = 3600 * 10**9


@pytest.fixture
def journal_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "journal.sqlite3"


@pytest.fixture
def journal(journal_path: Path):
    j = Journal.open(journal_path)
    yield j
    j.close()


def accept(j: Journal, task_id: str, *, received_at_ns: int = 1, deadline_ns: int | None = None) -> bool:
    return j.record_accepted(
        task_id,
        publisher="pub-" + task_id,
        deadline_ns=deadline_ns if deadline_ns is not None else time.time_ns() + HOUR_NS,
        model="smollm2-135m",
        task_message=b"\x00signed task " + task_id.encode(),
        received_at_ns=received_at_ns,
    )


def test_open_uses_wal_and_normal_sync(journal: Journal, journal_path: Path) -> None:
    assert journal_path.exists()
    conn = sqlite3.connect(journal_path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()
    assert journal._conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL


def test_lifecycle_accepted_to_published(journal: Journal) -> None:
    assert accept(journal, "t1", received_at_ns=100)
    assert journal.seen("t1") and not journal.seen("t2")
    assert [e.task_id for e in journal.interrupted()] == ["t1"]

    journal.mark_running("t1")
    assert journal.get("t1").state is TaskState.RUNNING
    assert [e.state for e in journal.interrupted()] == [TaskState.RUNNING]

    journal.record_finished("t1", b"result body")
    assert journal.interrupted() == []
    assert journal.backlog() == 1
    [entry] = journal.unpublished()
    assert isinstance(entry, JournalEntry)
    assert entry.state is TaskState.FINISHED
    assert entry.result_body == b"result body"
    assert entry.task_message == b"\x00signed task t1"
    assert entry.publisher == "pub-t1" and entry.model == "smollm2-135m"
    assert entry.received_at_ns == 100 and entry.updated_at_ns > 0

    journal.mark_published("t1")
    journal.mark_published("t1")  # idempotent
    assert journal.backlog() == 0 and journal.unpublished() == []
    assert journal.get("t1").state is TaskState.PUBLISHED


def test_duplicate_accept_returns_false_and_keeps_first(journal: Journal) -> None:
    assert accept(journal, "dup", received_at_ns=5)
    journal.mark_running("dup")
    assert not accept(journal, "dup", received_at_ns=9)
    entry = journal.get("dup")
    assert entry.state is TaskState.RUNNING and entry.received_at_ns == 5


CRASHING_WRITER = """
import os, signal, sys
from pathlib import Path
from node.journal import Journal
j = Journal.open(Path(sys.argv[1]))
for tid, received in (("a", 3), ("b", 1), ("c", 2)):
    j.record_accepted(tid, "pub", 2**62, "m", b"msg-" + tid.encode(), received)
j.mark_running("a")
j.record_finished("c", b"done-c")
j.record_finished("b", b"done-b")
os.kill(os.getpid(), signal.SIGKILL)  # no close(), no checkpoint: a crash
"""


def test_state_survives_a_killed_process(journal_path: Path) -> None:
    """What a SIGKILLed node left is there for the next one (dedupe + recovery)."""
    proc = subprocess.run(
        [sys.executable, "-c", CRASHING_WRITER, str(journal_path)],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        timeout=30,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    journal = Journal.open(journal_path)
    try:
        assert journal.seen("a") and not accept(journal, "a")
        assert [e.task_id for e in journal.interrupted()] == ["a"]
        assert [(e.task_id, e.result_body) for e in journal.unpublished()] == [
            ("b", b"done-b"),
            ("c", b"done-c"),
        ]
        assert journal.backlog() == 2
    finally:
        journal.close()


def test_invalid_transitions_raise_with_names(journal: Journal) -> None:
    with pytest.raises(JournalError, match="ghost"):
        journal.mark_running("ghost")
    accept(journal, "t")
    with pytest.raises(JournalError, match="accepted to published"):
        journal.mark_published("t")
    journal.record_finished("t", b"r")
    with pytest.raises(JournalError, match="finished to running"):
        journal.mark_running("t")


def test_prune_removes_only_entries_past_their_deadline(journal: Journal) -> None:
    now = time.time_ns()
    accept(journal, "old-published", deadline_ns=now - 10)
    journal.record_finished("old-published", b"x")
    journal.mark_published("old-published")
    accept(journal, "old-stuck", deadline_ns=now - 5)
    accept(journal, "live-published", deadline_ns=now + HOUR_NS)
    journal.record_finished("live-published", b"y")
    journal.mark_published("live-published")
    accept(journal, "live", deadline_ns=now + HOUR_NS)

    assert journal.prune(now) == 2
    assert not journal.seen("old-published") and not journal.seen("old-stuck")
    # A published task still inside its deadline keeps deduping re-deliveries.
    assert journal.seen("live-published") and journal.seen("live")
    assert journal.prune(now) == 0


def test_open_corrupt_file_names_path(tmp_path: Path) -> None:
    bad = tmp_path / "journal.sqlite3"
    bad.write_bytes(b"this is not a database" * 200)
    with pytest.raises(JournalError, match=str(bad)):
        Journal.open(bad)


def test_open_path_under_a_file_names_path(tmp_path: Path) -> None:
    """Works as root too: the parent 'directory' is a regular file."""
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    with pytest.raises(JournalError, match="blocker"):
        Journal.open(blocker / "journal.sqlite3")


def test_calls_are_fast_enough_for_the_event_loop(journal: Journal) -> None:
    """A full task cycle (5 calls) stays far below a millisecond per call on average."""
    n = 300
    start = time.perf_counter()
    for i in range(n):
        tid = f"perf-{i}"
        accept(journal, tid)
        journal.seen(tid)
        journal.mark_running(tid)
        journal.record_finished(tid, b"r" * 512)
        journal.mark_published(tid)
    per_call_us = (time.perf_counter() - start) / (n * 5) * 1e6
    # Measured ~10-20 us; the bound is loose for a busy 2-core CI machine.
    assert per_call_us < 2000, f"{per_call_us:.0f} us per journal call"


def test_journal_files_are_private_to_the_operator(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path / "data" / "journal.sqlite3")
    journal.record_accepted("t", "a" * 40, 1, "m", b"{}", 1)
    for name in ("journal.sqlite3", "journal.sqlite3-wal"):
        assert (tmp_path / "data" / name).stat().st_mode & 0o777 == 0o600, name
    journal.close()
