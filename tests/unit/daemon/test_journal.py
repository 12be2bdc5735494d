"""The task journal on a real SQLite file in a temporary directory."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from node.daemon.journal import Journal, JournalEntry, JournalError, JournalQuotaError, TaskState

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
from node.daemon.journal import Journal
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
        cwd=Path(__file__).resolve().parents[3],
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


def test_numbers_sqlite_cannot_store_are_a_journal_error(journal: Journal) -> None:
    with pytest.raises(JournalError, match="cannot journal task huge: OverflowError"):
        accept(journal, "huge", deadline_ns=2**63)
    assert not journal.seen("huge")
    assert accept(journal, "next")  # the journal still works


def test_quota_in_total_and_per_publisher(journal_path: Path) -> None:
    j = Journal.open(journal_path, max_bytes=12_000, max_publisher_bytes=4_000)
    try:
        deadline = time.time_ns() + HOUR_NS
        assert j.record_accepted("a1", "alice", deadline, "m", b"x" * 3000, 1)
        with pytest.raises(JournalQuotaError, match="publisher alice has 3256 of its 4000 journal bytes"):
            j.record_accepted("a2", "alice", deadline, "m", b"x" * 1000, 1)
        assert j.record_accepted("a3", "alice", deadline, "m", b"", 1)  # a refused task's row is small
        assert j.record_accepted("b1", "bob", deadline, "m", b"x" * 3000, 1)
        assert j.record_accepted("c1", "carol", deadline, "m", b"x" * 3000, 1)
        with pytest.raises(JournalQuotaError, match="is full: 10024 of 12000 bytes used"):
            j.record_accepted("d1", "dave", deadline, "m", b"x" * 3000, 1)
        assert not j.seen("a2") and not j.seen("d1")
        assert j.bytes_used == 10024 and j.publisher_bytes("alice") == 3512
    finally:
        j.close()
    reopened = Journal.open(journal_path, max_bytes=12_000, max_publisher_bytes=4_000)
    try:  # the count survives a restart, results count too (never refused: they are owed), pruning gives room back
        assert reopened.bytes_used == 10024
        reopened.record_finished("a3", b"r" * 2000)
        assert reopened.bytes_used == 12024 and reopened.publisher_bytes("alice") == 5512
        reopened.replace_result("a3", b"r" * 10)
        assert reopened.bytes_used == 10034
        assert reopened.prune(time.time_ns() + 2 * HOUR_NS) == 4
        assert reopened.bytes_used == 0
        assert reopened.record_accepted("d1", "dave", time.time_ns() + HOUR_NS, "m", b"x" * 3000, 1)
    finally:
        reopened.close()


def test_known_ids_lists_tasks_until_their_deadline(journal: Journal) -> None:
    now = time.time_ns()
    accept(journal, "live", deadline_ns=now + HOUR_NS)
    accept(journal, "gone", deadline_ns=now - 1)
    assert journal.known_ids(now) == [("live", now + HOUR_NS)]


def test_dropped_results_are_not_retried(journal: Journal) -> None:
    accept(journal, "t")
    journal.record_finished("t", b"too big")
    journal.replace_result("t", b"smaller")
    assert journal.get("t").result_body == b"smaller"
    journal.mark_dropped("t")
    assert journal.unpublished() == [] and journal.backlog() == 0
    assert journal.get("t").state is TaskState.DROPPED


@pytest.fixture
def small_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A 1 MiB filesystem (tmpfs) if this process may mount one, else None."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], capture_output=True)
    if done.returncode != 0:
        yield None
        return
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_a_full_disk_is_a_clear_journal_error_and_the_journal_recovers(small_disk: Path | None, tmp_path: Path) -> None:
    """On a real full filesystem when the test may mount one; otherwise SQLite's page limit, which
    fails the same way (SQLITE_FULL)."""
    j = Journal.open((small_disk or tmp_path) / "journal.sqlite3", max_bytes=10**9, max_publisher_bytes=10**9)
    filler = (small_disk or tmp_path) / "filler"
    if small_disk is None:
        j._conn.execute("PRAGMA max_page_count = 64")
    else:
        filler.write_bytes(b"\0" * (1024 * 1024 - 200 * 1024))  # leave ~200 KiB
    try:
        errors = []
        for i in range(40):
            try:
                accept_big = j.record_accepted(f"t{i}", "p", time.time_ns() + HOUR_NS, "m", b"x" * 20_000, 1)
                assert accept_big
            except JournalError as exc:
                errors.append(str(exc))
        assert errors, "the disk never filled up"
        assert all("database or disk is full" in e for e in errors), errors[:3]
        assert f"journal {j.path}: cannot journal task" in errors[0]
        # Room again (the filler removed, or a higher page limit): the same journal takes tasks again.
        if small_disk is None:
            j._conn.execute("PRAGMA max_page_count = 1000000")
        else:
            filler.unlink()
        assert j.record_accepted("after", "p", time.time_ns() + HOUR_NS, "m", b"x" * 20_000, 1)
        assert j.seen("after")
    finally:
        j.close()


def test_a_database_locked_by_another_process_is_a_quick_journal_error(journal: Journal, journal_path: Path) -> None:
    other = sqlite3.connect(journal_path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        started = time.monotonic()
        with pytest.raises(JournalError, match="database is locked"):
            accept(journal, "blocked")
        assert time.monotonic() - started < 2.0  # the event loop is not held for sqlite3's default 5 s
        other.execute("ROLLBACK")
        assert accept(journal, "blocked")
    finally:
        other.close()
