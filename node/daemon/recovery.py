"""Start-up recovery from the journal: what a crash or kill left behind.

Tasks that were accepted or running when the node died either run again (when
the operator allows it and the deadline leaves enough time) or get an error
result `interrupted: node restarted`. Finished but unpublished results are the
outbox's job: it publishes them once the node has peers.
"""

from __future__ import annotations

import time

import structlog

from node.daemon.admission import BusyError, Executor, Job
from node.daemon.journal import Journal, JournalEntry
from node.daemon.outbox import ResultOutbox
from node.wire.messages import MessageError, Stats, decode_task
from node.wire.results import error_body

log = structlog.get_logger(__name__)

INTERRUPTED = "interrupted: node restarted"


async def recover_interrupted(
    journal: Journal,
    outbox: ResultOutbox,
    executor: Executor,
    *,
    rerun: bool,
    min_time_left_s: float,
) -> tuple[int, int]:
    """Re-run or error every interrupted task; returns (re-run, errored)."""
    rerun_count = errored = 0
    now = time.time_ns()
    for entry in journal.interrupted():
        task_log = log.bind(task_id=entry.task_id)
        if rerun and entry.deadline_ns - now > min_time_left_s * 1e9 and _resubmit(entry, executor, task_log):
            rerun_count += 1
            continue
        stats = Stats(
            received_at=entry.received_at_ns,
            execution_started_at=entry.updated_at_ns,
            execution_ended_at=now,
            published_at=now,
        )
        task_log.warning("interrupted task answered with an error", state=str(entry.state))
        await outbox.send(error_body(entry.task_id, entry.model, INTERRUPTED, stats))
        errored += 1
    return rerun_count, errored


def _resubmit(entry: JournalEntry, executor: Executor, task_log: structlog.typing.FilteringBoundLogger) -> bool:
    if not entry.task_message:  # refused (busy) when it came: journalled without its body
        return False
    try:
        task = decode_task(entry.task_message)
    except MessageError as exc:
        task_log.error("journalled task unreadable", error=str(exc))
        return False
    if not executor.hosts(entry.model):
        return False
    try:
        executor.submit(
            Job(
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
