"""The node's last hour of work, in bounded memory, for the status page.

`NodeActivity.record()` is called once per finished task. It keeps one bucket
per wall-clock minute (tasks finished, tokens generated) for the last
`HISTORY_MINUTES` minutes and the last `RECENT_TASKS` tasks with their outcome;
`snapshot()` is what ``/status`` shows under ``activity``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from pydantic import BaseModel

HISTORY_MINUTES = 60
RECENT_TASKS = 25
# An error shown on the page is cut to this many characters (an error may quote a prompt).
ERROR_CHARS = 200


class MinuteSample(BaseModel):
    """Work finished in one wall-clock minute."""

    minute: int  # unix time of the minute's start, in seconds
    tasks: int = 0
    failed: int = 0
    tokens: int = 0

    @property
    def tokens_per_s(self) -> float:
        """The minute's tokens per second."""
        return round(self.tokens / 60, 3)


class RecentTask(BaseModel):
    """One finished task as the status page lists it."""

    task_id: str
    publisher: str
    model: str
    ok: bool
    error: str | None = None
    completion_tokens: int
    received_at: float  # unix seconds
    ended_at: float
    elapsed_s: float


class ActivitySnapshot(BaseModel):
    """The ``activity`` part of ``/status``: one sample per minute (oldest first) and the latest tasks (newest first)."""

    minutes: list[dict[str, float | int]]
    recent_tasks: list[RecentTask]


class NodeActivity:
    """Per-minute task and token counts for the last hour and the latest tasks; memory bounded by both windows."""

    def __init__(
        self,
        *,
        minutes: int = HISTORY_MINUTES,
        recent: int = RECENT_TASKS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._window = minutes
        self._clock = clock
        self._minutes: deque[MinuteSample] = deque(maxlen=minutes)
        self._recent: deque[RecentTask] = deque(maxlen=recent)

    def record(
        self,
        *,
        task_id: str,
        publisher: str,
        model: str,
        error: str | None,
        completion_tokens: int,
        received_at_ns: int,
        ended_at_ns: int,
    ) -> None:
        """Count one finished task (``error`` None: it produced a result)."""
        sample = self._bucket(ended_at_ns / 1e9)
        sample.tasks += 1
        sample.failed += error is not None
        sample.tokens += max(0, completion_tokens)
        self._recent.appendleft(
            RecentTask(
                task_id=task_id,
                publisher=publisher,
                model=model,
                ok=error is None,
                error=error[:ERROR_CHARS] if error else None,
                completion_tokens=max(0, completion_tokens),
                received_at=received_at_ns / 1e9,
                ended_at=ended_at_ns / 1e9,
                elapsed_s=round(max(0, ended_at_ns - received_at_ns) / 1e9, 3),
            )
        )

    def snapshot(self) -> ActivitySnapshot:
        """The last hour, one entry per minute (empty minutes included), and the latest tasks."""
        now_minute = int(self._clock() // 60) * 60
        counted = {s.minute: s for s in self._minutes}
        minutes = []
        for minute in range(now_minute - (self._window - 1) * 60, now_minute + 60, 60):
            s = counted.get(minute, MinuteSample(minute=minute))
            minutes.append(
                {
                    "minute": minute,
                    "tasks": s.tasks,
                    "failed": s.failed,
                    "tokens": s.tokens,
                    "tokens_per_s": s.tokens_per_s,
                }
            )
        return ActivitySnapshot(minutes=minutes, recent_tasks=list(self._recent))

    def _bucket(self, at: float) -> MinuteSample:
        minute = int(at // 60) * 60
        for sample in reversed(self._minutes):  # a late task lands in its own minute if that is still kept
            if sample.minute == minute:
                return sample
            if sample.minute < minute:
                break
        if self._minutes and minute < self._minutes[-1].minute:
            return self._minutes[-1]  # older than the newest kept minute and not kept: count it in the newest
        sample = MinuteSample(minute=minute)
        self._minutes.append(sample)
        return sample
