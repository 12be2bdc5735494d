"""The task journal on a real SQLite file in a temporary directory."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from config.settings import Settings
from node.daemon.build import open_journal
from node.daemon.journal import ROW_OVERHEAD_BYTES, Journal, JournalEntry, JournalError, TaskState
from tests.support.small_disk import small_disk as mounted_small_disk

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
    assert journal.get("t1") is not None and journal.get("t2") is None
    assert [e.task_id for e in journal.interrupted()] == ["t1"]

    assert journal.state("t1") is TaskState.ACCEPTED and journal.state("t2") is None
    assert [e.state for e in journal.interrupted()] == [TaskState.ACCEPTED]

    journal.record_finished("t1", b"result body")
    assert journal.interrupted() == []
    assert journal.backlog() == 1
    [entry] = journal.unpublished()
    assert isinstance(entry, JournalEntry)
    assert entry.state is TaskState.FINISHED
    assert entry.result_body == b"result body"
    assert entry.task_message == b""  # finished: the task body is no longer needed
    assert entry.publisher == "pub-t1" and entry.model == "smollm2-135m"
    assert entry.received_at_ns == 100 and entry.updated_at_ns > 0

    journal.mark_published("t1")
    journal.mark_published("t1")  # idempotent
    assert journal.backlog() == 0 and journal.unpublished() == []
    record = journal.get("t1")
    assert record.state is TaskState.PUBLISHED
    assert record.task_message == b"" and record.result_body is None  # only the dedupe record stays
    assert journal.get("t1") is not None and not accept(journal, "t1")


def test_duplicate_accept_returns_false_and_keeps_first(journal: Journal) -> None:
    assert accept(journal, "dup", received_at_ns=5)
    assert not accept(journal, "dup", received_at_ns=9)
    entry = journal.get("dup")
    assert entry.state is TaskState.ACCEPTED and entry.received_at_ns == 5


def test_a_running_row_from_an_earlier_version_is_live(journal: Journal) -> None:
    """Earlier versions wrote RUNNING when a task started: such a row is interrupted work and finishes as any."""
    assert accept(journal, "old", received_at_ns=7)
    journal._conn.execute("UPDATE tasks SET state = 'running' WHERE task_id = 'old'")
    assert [(e.task_id, e.state) for e in journal.interrupted()] == [("old", TaskState.RUNNING)]
    journal.record_finished("old", b"result body")
    assert journal.state("old") is TaskState.FINISHED and journal.interrupted() == []


CRASHING_WRITER = """
import os, signal, sys
from pathlib import Path
from node.daemon.journal import Journal
j = Journal.open(Path(sys.argv[1]))
for tid, received in (("a", 3), ("b", 1), ("c", 2)):
    j.record_accepted(tid, "pub", 2**62, "m", b"msg-" + tid.encode(), received)
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
        assert journal.get("a") is not None and not accept(journal, "a")
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
        journal.record_finished("ghost", b"r")
    accept(journal, "t")
    with pytest.raises(JournalError, match="accepted to published"):
        journal.mark_published("t")
    journal.record_finished("t", b"r")
    journal.mark_published("t")
    with pytest.raises(JournalError, match="published to finished"):
        journal.record_finished("t", b"again")


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
    assert journal.get("old-published") is None and journal.get("old-stuck") is None
    # A published task still inside its deadline keeps deduping re-deliveries.
    assert journal.get("live-published") is not None and journal.get("live") is not None
    assert journal.prune(now) == 0


def test_open_corrupt_file_names_path(tmp_path: Path) -> None:
    bad = tmp_path / "journal.sqlite3"
    bad.write_bytes(b"this is not a database" * 200)
    with pytest.raises(JournalError, match=str(bad)) as raised:
        Journal.open(bad)
    assert "move the file aside" in str(raised.value)  # else a supervisor restarts it into the same error


def test_a_journal_damaged_past_its_header_says_what_to_do_too(tmp_path: Path) -> None:
    """Its header intact, its pages garbage (a torn write, bit rot): the open passes, the compact step fails."""
    path = tmp_path / "journal.sqlite3"
    journal = Journal.open(path)
    for i in range(40):
        journal.record_accepted(f"t{i}", "aa" * 20, time.time_ns() + 10**12, "m", b"x" * 2000, time.time_ns())
    journal.close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = path.stat().st_size
    with path.open("r+b") as file:
        file.seek(4096)  # past the first page: the header and the schema stay readable
        file.write(bytes(range(256)) * ((size - 4096) // 256 + 1))
    with pytest.raises(JournalError, match=str(path)) as raised:
        Journal.open(path)
    assert "move the file aside" in str(raised.value)


def test_open_path_under_a_file_names_path(tmp_path: Path) -> None:
    """Works as root too: the parent 'directory' is a regular file."""
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    with pytest.raises(JournalError, match="blocker"):
        Journal.open(blocker / "journal.sqlite3")


def test_calls_are_fast_enough_for_the_event_loop(journal: Journal) -> None:
    """A full task cycle (4 calls) stays far below a millisecond per call on average."""
    n = 300
    start = time.perf_counter()
    for i in range(n):
        tid = f"perf-{i}"
        accept(journal, tid)
        journal.get(tid)
        journal.record_finished(tid, b"r" * 512)
        journal.mark_published(tid)
    per_call_us = (time.perf_counter() - start) / (n * 4) * 1e6
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
    assert journal.get("huge") is None
    assert accept(journal, "next")  # the journal still works


def test_published_and_dropped_tasks_keep_no_body(journal_path: Path) -> None:
    """Only live tasks keep their signed task; a finished one keeps its result until published."""
    j = Journal.open(journal_path)
    try:
        deadline = time.time_ns() + HOUR_NS
        for tid in ("run", "fin", "pub", "drop"):
            assert j.record_accepted(tid, "p", deadline, "m", b"x" * 3000, 1)
        assert j.record_accepted("busy", "p", deadline, "m", b"", 1)  # refused: its row only
        for tid in ("fin", "pub", "drop", "busy"):
            j.record_finished(tid, b"r" * 100)
        j.mark_published("pub")
        j.mark_published("busy")
        j.mark_dropped("drop")
        usage = j.usage()
        assert (usage.live_rows, usage.live_bytes) == (1, 3000 + ROW_OVERHEAD_BYTES)
        assert (usage.waiting_rows, usage.waiting_bytes) == (1, 100 + ROW_OVERHEAD_BYTES)
        assert (usage.records, usage.record_bytes) == (3, 3 * ROW_OVERHEAD_BYTES)
        assert j.waiting_bytes == usage.waiting_bytes and j.records == 3
    finally:
        j.close()
    reopened = Journal.open(journal_path)
    try:  # the counts survive a restart
        assert reopened.waiting_bytes == 100 + ROW_OVERHEAD_BYTES and reopened.records == 3
    finally:
        reopened.close()


def test_an_older_journal_loses_published_bodies_when_opened(journal_path: Path) -> None:
    """A journal written before bodies were dropped at publication is compacted on open."""
    j = Journal.open(journal_path)
    j.record_accepted("old", "p", time.time_ns() + HOUR_NS, "m", b"x" * 5000, 1)
    j.record_finished("old", b"r" * 10)
    j._conn.execute("UPDATE tasks SET state = 'published', task_message = ?, result_body = ?", (b"x" * 5000, b"r"))
    j.close()
    reopened = Journal.open(journal_path)
    try:
        entry = reopened.get("old")
        assert entry.state is TaskState.PUBLISHED and entry.task_message == b"" and entry.result_body is None
        assert reopened.usage().bytes == ROW_OVERHEAD_BYTES
    finally:
        reopened.close()


def test_waiting_results_past_the_cap_drop_the_oldest(journal_path: Path) -> None:
    """No peers to publish to: results wait, and past the cap the oldest go (never the newest)."""
    cap = 10 * (1000 + ROW_OVERHEAD_BYTES)
    j = Journal.open(journal_path, max_waiting_bytes=cap)
    try:
        deadline = time.time_ns() + HOUR_NS
        for i in range(25):
            j.record_accepted(f"t{i:02}", "p", deadline, "m", b"", received_at_ns=i)
            j.record_finished(f"t{i:02}", b"r" * 1000)
            assert j.waiting_bytes <= cap
        waiting = [e.task_id for e in j.unpublished()]
        assert waiting == [f"t{i:02}" for i in range(15, 25)]
        assert j.get("t00").state is TaskState.DROPPED and j.get("t00").result_body is None
        assert j.usage().waiting_bytes == j.waiting_bytes == cap
        j.replace_result("t24", b"r" * 10)
        assert j.waiting_bytes == j.usage().waiting_bytes
        # A result alone larger than the cap is still kept: it is owed, and the next one drops it.
        j.record_accepted("big", "p", deadline, "m", b"", received_at_ns=100)
        j.record_finished("big", b"r" * (cap + 1))
        assert j.unpublished()[-1].task_id == "big" and len(j.unpublished()) == 1
    finally:
        j.close()


def test_publishing_a_result_of_known_size_counts_as_reading_it_back_does(journal_path: Path) -> None:
    """`mark_published(result_bytes=...)` (the outbox's size, spared a read) keeps the counts a reopen computes;
    a size that is not the stored one, or a row that is not FINISHED, takes the reading path."""
    j = Journal.open(journal_path, max_records=3)
    try:
        deadline = time.time_ns() + HOUR_NS
        for tid in ("a", "b", "c", "d", "e", "wrong"):
            assert j.record_accepted(tid, "p", deadline, "m", b"x" * 50, 1)
            j.record_finished(tid, b"r" * 100)
        j.mark_published("a", result_bytes=100)
        j.mark_published("a", result_bytes=100)  # again: a no-op, counted once
        j.mark_published("wrong", result_bytes=99)  # not the stored size: read back, still counted right
        assert j.get("a").state == j.get("wrong").state == TaskState.PUBLISHED
        assert j.get("a").result_body is None and j.get("a").task_message == b""
        usage = j.usage()
        assert (
            (j.records, j.waiting_bytes) == (usage.records, usage.waiting_bytes) == (2, 4 * (100 + ROW_OVERHEAD_BYTES))
        )
        j.mark_dropped("e")
        with pytest.raises(JournalError, match="cannot go from dropped to published"):
            j.mark_published("e", result_bytes=100)
        for tid in ("b", "c", "d"):  # past max_records: the oldest records are forgotten on this path too
            j.mark_published(tid, result_bytes=100)
        assert j.records == j.usage().records <= 3
    finally:
        j.close()
    reopened = Journal.open(journal_path)
    try:
        assert reopened.waiting_bytes == 0 and reopened.records == reopened.usage().records
    finally:
        reopened.close()


def test_records_past_the_cap_forget_the_earliest_deadlines(journal_path: Path) -> None:
    j = Journal.open(journal_path, max_records=1000)
    try:
        now = time.time_ns()
        for i in range(1500):
            tid = f"t{i}"
            j.record_accepted(tid, "p", now + HOUR_NS + i, "m", b"", 1)
            j.record_finished(tid, b"r")
            j.mark_published(tid)
            assert j.records <= 1000
        assert j.usage().records == j.records
        assert j.get("t1499") is not None and j.get("t0") is None
        # Never a live or waiting task: only records are forgotten.
        j.record_accepted("live", "p", now, "m", b"x", 1)
        for i in range(1500, 1600):
            j.record_accepted(f"t{i}", "p", now + HOUR_NS + i, "m", b"", 1)
            j.record_finished(f"t{i}", b"r")
            j.mark_published(f"t{i}")
        assert j.get("live") is not None
    finally:
        j.close()


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
def small_disk(tmp_path: Path) -> Iterator[Path | None]:
    with mounted_small_disk(tmp_path) as mount_point:
        yield mount_point


def test_a_full_disk_is_a_clear_journal_error_and_the_journal_recovers(small_disk: Path | None, tmp_path: Path) -> None:
    """On a real full filesystem when the test may mount one; otherwise SQLite's page limit, which
    fails the same way (SQLITE_FULL)."""
    j = Journal.open((small_disk or tmp_path) / "journal.sqlite3")
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
        assert j.get("after") is not None
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


def test_the_deprecated_quota_settings_still_load_and_are_ignored(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, journal_retention=60.0, journal_publisher_max_bytes=1000)
    with structlog.testing.capture_logs() as logs:
        j = open_journal(settings)
    try:
        warned = {e["setting"] for e in logs if e["event"] == "setting deprecated and ignored"}
        assert warned == {"journal_retention", "journal_publisher_max_bytes"}
        deadline = time.time_ns() + HOUR_NS
        for i in range(3):  # a 1000-byte quota per publisher would refuse the second one
            assert j.record_accepted(f"t{i}", "p", deadline, "m", b"x" * 900, 1)
        assert j.max_waiting_bytes == settings.journal_max_bytes and j.max_records == settings.journal_max_records
    finally:
        j.close()
