"""How an execution process ends, as the daemon names it: the errors its tasks and its start get."""

from __future__ import annotations

import signal

from node.wire.error_kinds import TaskError


class ExecutionProcessExitError(Exception):
    """The execution process ended while a task was on it.

    `crash` is True when it died by itself (a signal, an abort, its memory limit) and
    False when the daemon stopped it for another reason (another task that would not
    stop, a stalled decode loop, shutdown): only crashes count against a task as poison.
    `suspects` are the tasks inside the native call that stalled (cause "stalled"), and
    `sole_suspect` says that call was one task's own work (see stall.py). `error` is the error result its
    tasks get (`interrupted: ...` when the daemon stopped it under them); `reason`, its text.
    """

    def __init__(
        self,
        error: TaskError,
        *,
        crash: bool,
        cause: str,
        suspects: frozenset[str] = frozenset(),
        sole_suspect: bool = False,
    ) -> None:
        super().__init__(error.text)
        self.error = error
        self.reason = error.text
        self.crash = crash
        self.cause = cause  # "SIGSEGV", "exit code 1", "memory", "stalled", ...
        self.suspects = suspects
        self.sole_suspect = sole_suspect


class ExecutionProcessStartError(Exception):
    """The execution process could not load its model (the message names model and cause)."""


def describe_exit(returncode: int | None) -> str:
    """'SIGSEGV' for a death by signal, 'exit code N' otherwise."""
    if returncode is None:
        return "unknown"
    if returncode < 0:
        try:
            return signal.Signals(-returncode).name
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"
