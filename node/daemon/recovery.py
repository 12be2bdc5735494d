"""Start-up recovery from the journal: what a crash or kill left behind.

Tasks that were accepted or running when the node died either run again (when
the operator allows it and the deadline leaves enough time) or get an error
result `interrupted: node restarted`. Finished but unpublished results are the
outbox's work: it publishes them once the node has peers.
"""

from __future__ import annotations

import time

import structlog

from node.daemon.admission import AcceptedTask, Admission, BusyError
from node.daemon.journal import Journal
from node.daemon.journal_file import JournalEntry
from node.daemon.ledger import Ledger, LedgerEntry, outcome_of
from node.daemon.outbox import ResultOutbox
from node.wire.error_kinds import ErrorKind, TaskError
from node.wire.messages import MessageError, decode_task
from node.wire.results import result_body

log = structlog.get_logger(__name__)

INTERRUPTED = TaskError.of(ErrorKind.INTERRUPTED, "node restarted")


async def recover_interrupted(
    journal: Journal,
    outbox: ResultOutbox,
    admission: Admission,
    *,
    rerun: bool,
    min_time_left_s: float,
    ledger: Ledger | None = None,
) -> tuple[int, int]:
    """Re-run or error every interrupted task; returns (re-run, errored). An errored task gets its ledger row
    (outcome `interrupted`) as a drained one does; a re-run one gets it when it finishes."""
    rerun_count = errored = 0
    now = time.time_ns()
    for entry in journal.interrupted():
        task_log = log.bind(task_id=entry.task_id)
        if rerun and entry.deadline_ns - now > min_time_left_s * 1e9 and _readmit(entry, admission, task_log):
            rerun_count += 1
            continue
        task_log.warning("interrupted task answered with an error", state=str(entry.state))
        body = result_body(
            entry.task_id,
            entry.model,
            INTERRUPTED.text,
            received_at_ns=entry.received_at_ns,
            started_at_ns=entry.updated_at_ns,
            ended_at_ns=now,
            publisher=entry.publisher,
        )
        row = LedgerEntry(
            task_id=entry.task_id,
            publisher=entry.publisher,
            model=entry.model,
            received_at=entry.received_at_ns / 1e9,
            started_at=entry.updated_at_ns / 1e9,
            ended_at=now / 1e9,
            outcome=outcome_of(INTERRUPTED.kind),
            error=INTERRUPTED.text,
        )
        if ledger is not None:
            ledger.record(row)
        await outbox.send(body, ledger_entry=row.journal_form() if ledger is not None else None)
        errored += 1
    return rerun_count, errored


def _readmit(entry: JournalEntry, admission: Admission, task_log: structlog.typing.FilteringBoundLogger) -> bool:
    if not entry.task_message:  # busy when it came: journalled without its body
        return False
    try:
        task = decode_task(entry.task_message)
    except MessageError as exc:
        task_log.error("journalled task unreadable", error=str(exc))
        return False
    if not admission.hosts(entry.model):
        return False
    try:
        admission.admit(
            AcceptedTask(
                task=task,
                publisher=entry.publisher,
                model=entry.model,
                received_at_ns=entry.received_at_ns,
                log=task_log,
            )
        )
    except BusyError:
        return False
    task_log.info("interrupted task runs again", model=entry.model)
    return True
