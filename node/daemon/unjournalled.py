"""Results the journal could not take (a full disk, an I/O error), held in memory until it can.

The journal is the outbox's memory; when SQLite refuses a write, the result it was about
is not lost with it:

- a finished result the journal could not record (its row still says accepted) is held
  with its body: the outbox publishes it from here, and journals it once writes work again;
- a result that went out but could not be marked published is held without one: the
  retry loop must not publish it again, only mark it.

`settle` makes those writes, oldest first, and stops at the first the journal refuses.
Bounded: a result leaves once the journal has it as it should, and at most `max_held` are
held, each at most `MAX_HELD_S` (past either the oldest is forgotten, logged). While the journal fails, intake refuses new
tasks (`journal_error`), so only the tasks already running can end up here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import structlog

from node.daemon.journal import Journal
from node.daemon.journal_file import JournalError, TaskState
from node.wire.messages import ResultBody

log = structlog.get_logger(__name__)

MAX_HELD = 1024
MAX_HELD_S = 3600.0  # a result held longer is forgotten (logged): its task's deadline has long passed


@dataclass
class HeldResult:
    """What the journal still owes for one task."""

    body: ResultBody | None  # None: the journal has the result (FINISHED); only its publication is owed
    encoded: bytes = b""  # the body as journalled once the journal takes it
    ledger_entry: str | None = None  # the task's ledger row, journalled with it (ledger_restore.py)
    published: bool = False
    since: float = field(default_factory=time.monotonic)


class UnjournalledResults:
    """Results (by task id) whose journal write failed, until `settle` writes them."""

    def __init__(self, max_held: int = MAX_HELD) -> None:
        self._held: dict[str, HeldResult] = {}
        self._max_held = max_held

    def __contains__(self, task_id: str) -> bool:
        return task_id in self._held

    def __len__(self) -> int:
        return len(self._held)

    def hold_finished(self, body: ResultBody, encoded: bytes, ledger_entry: str | None = None) -> None:
        """A finished result the journal did not record (and its ledger row): published from here."""
        self._hold(body.task_id, HeldResult(body, encoded, ledger_entry))

    def hold_published(self, task_id: str) -> None:
        """A journalled result that went out but is not marked published; an unjournalled one that went out."""
        held = self._held.get(task_id)
        if held is not None:
            held.published = True
        else:
            self._hold(task_id, HeldResult(None, published=True))

    def discard(self, task_id: str) -> bool:
        """Forget a held result (it can never be published); False if none was held."""
        return self._held.pop(task_id, None) is not None

    def to_publish(self) -> list[ResultBody]:
        """The held results not published yet, oldest first."""
        return [held.body for held in self._held.values() if held.body is not None and not held.published]

    def settle(self, journal: Journal) -> int:
        """Write what the journal owes, oldest first, until it refuses; how many results are settled."""
        settled = 0
        for task_id, held in list(self._held.items()):
            if time.monotonic() - held.since > MAX_HELD_S:
                del self._held[task_id]
                log.error("held result forgotten: the journal refused it for too long", task_id=task_id)
                continue
            try:
                _settle(journal, task_id, held)
            except JournalError as exc:
                log.debug("journal still refuses held results", held=len(self._held), error=str(exc))
                break
            del self._held[task_id]
            settled += 1
        if settled:
            log.info("held results journalled", count=settled, still_held=len(self._held))
        return settled

    def _hold(self, task_id: str, held: HeldResult) -> None:
        self._held[task_id] = held
        if len(self._held) > self._max_held:
            oldest = next(iter(self._held))
            del self._held[oldest]
            log.error("held result forgotten: more results than memory holds for a failing journal", task_id=oldest)


def _settle(journal: Journal, task_id: str, held: HeldResult) -> None:
    """Make the journal's row say what happened to this result (JournalError if it cannot yet)."""
    state = journal.state(task_id)
    if state is None or state in (TaskState.PUBLISHED, TaskState.DROPPED):
        return  # pruned, or already where it should be
    if state != TaskState.FINISHED:  # accepted (or running): the result itself is owed
        if held.body is None:
            return  # nothing to write it with; recovery after a restart answers the task
        journal.record_finished(task_id, held.encoded, held.ledger_entry)
    if held.published:
        journal.mark_published(task_id)
