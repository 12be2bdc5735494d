"""Tasks as admission takes them (`AcceptedTask`), for tests of admission, the runner and what they report."""

from __future__ import annotations

import time

from node.daemon.admission import AcceptedTask
from node.wire.identity import Identity
from node.wire.messages import TaskBody, TaskInput

PUBLISHER_KEY = Identity.from_hex("33" * 32).public_key_compressed.hex()


def accepted_task(task_id: str, model: str = "m", deadline_s: float = 60.0) -> AcceptedTask:
    """An accepted task for `model` with an empty workflow, its deadline `deadline_s` from now."""
    body = TaskBody(
        task_id=task_id,
        deadline=time.time_ns() + int(deadline_s * 10**9),
        input=TaskInput(workflow={}, model=[model]),
        public_key=PUBLISHER_KEY,
    )
    return AcceptedTask(task=body, publisher="00" * 20, model=model, received_at_ns=time.time_ns())
