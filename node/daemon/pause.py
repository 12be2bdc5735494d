"""Pause and resume: a paused node advertises no free capacity and takes no new task.

Two causes pause a node: the operator (`compute-node pause`, kept in
`<data_dir>/paused.json` so it survives a restart until `resume`) and, with
`idle_only`, the machine being busy with other work (idle.py; not kept). Tasks
already accepted run to their results either way.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import structlog
from pydantic import BaseModel, Field, ValidationError

log = structlog.get_logger(__name__)

PAUSE_FILE = "paused.json"


class PauseFile(BaseModel):
    """What `<data_dir>/paused.json` holds while the operator keeps the node paused."""

    since: float = Field(ge=0, le=2**33, allow_inf_nan=False)  # unix seconds (else the file reads as damaged)
    reason: str = Field(default="operator", max_length=200)


class PauseView(BaseModel):
    """The pause state as /status shows it."""

    paused: bool
    operator: bool  # paused by `compute-node pause` (kept across restarts)
    idle_only: bool  # paused because other processes keep the machine busy
    since: float | None = None  # unix seconds the current pause began
    reason: str | None = None


class PauseState:
    """Whether the node takes new tasks; the operator's pause is kept in a file in the data dir."""

    def __init__(self, data_dir: Path) -> None:
        self._path = data_dir / PAUSE_FILE
        self._operator: PauseFile | None = read_pause_file(self._path)
        self._busy_since: float | None = None
        self._busy_reason: str | None = None
        if self._operator is not None:  # kept from before this start: only /status said so (`since` as the file has it)
            since, path = self._operator.since, str(self._path)
            log.warning("node paused by the operator: it takes no task until resumed", since=since, path=path)

    @property
    def paused(self) -> bool:
        """Whether the node takes no new tasks (paused by the operator or while busy)."""
        return self._operator is not None or self._busy_since is not None

    def pause(self, reason: str = "operator") -> PauseView:
        """The operator's pause: kept in the data dir until `resume` (PauseFileError if it cannot be kept)."""
        if self._operator is None:
            self._operator = write_pause_file(self._path, reason)
            log.info("node paused", reason=reason)
        return self.view()

    def resume(self) -> PauseView:
        """End the operator's pause (a pause for a busy machine ends by itself); PauseFileError if its file stays."""
        if self._operator is not None:
            remove_pause_file(self._path)  # first: a file that stays would pause the node again at its next start
            self._operator = None
            log.info("node resumed")
        return self.view()

    def set_machine_busy(self, reason: str | None) -> None:
        """idle_only: `reason` while other processes keep the machine busy, None once they stop."""
        if reason is not None and self._busy_since is None:
            self._busy_since = time.time()
            log.info("node paused: machine busy", reason=reason)
        elif reason is None and self._busy_since is not None:
            self._busy_since = None
            log.info("node resumed: machine idle")
        self._busy_reason = reason

    def view(self) -> PauseView:
        """The pause state as shown: by whom, since when, why."""
        operator = self._operator
        since = min(
            (t for t in (operator.since if operator else None, self._busy_since) if t is not None), default=None
        )
        reason = operator.reason if operator else self._busy_reason if self._busy_since is not None else None
        return PauseView(
            paused=self.paused,
            operator=operator is not None,
            idle_only=self._busy_since is not None,
            since=since,
            reason=reason,
        )


class PauseFileError(OSError):
    """The pause file could not be written or removed; the message names it and why."""


def read_pause_file(path: Path) -> PauseFile | None:
    """The operator's pause kept at `path`, or None; an unreadable file still means paused."""
    try:
        kept = path.read_bytes()  # not decoded here: bytes that are no UTF-8 read as a damaged file
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("pause file unreadable: staying paused", path=str(path), error=str(exc))
        return PauseFile(since=time.time(), reason="operator (pause file unreadable)")
    try:
        return PauseFile.model_validate_json(kept)
    except ValidationError:
        return PauseFile(since=time.time(), reason="operator")


def write_pause_file(path: Path, reason: str) -> PauseFile:
    """Write the operator's pause atomically (a crash leaves the old file or the new one)."""
    kept = PauseFile(since=time.time(), reason=reason)
    tmp = path.with_suffix(".tmp")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # the data dir: the node's own mode
        tmp.write_text(kept.model_dump_json())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise PauseFileError(f"cannot write the pause file {path}: {exc.strerror or exc}") from exc
    return kept


def remove_pause_file(path: Path) -> None:
    """End the kept pause; PauseFileError if the file stays (a node started from here would start paused)."""
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        raise PauseFileError(f"cannot remove the pause file {path}: {exc.strerror or exc}") from exc
