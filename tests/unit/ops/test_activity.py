"""NodeActivity: per-minute counts for the last hour and the latest tasks, in bounded memory."""

from __future__ import annotations

from node.ops.activity import ERROR_CHARS, HISTORY_MINUTES, RECENT_TASKS, NodeActivity

NS = 1_000_000_000


class Clock:
    """A settable wall clock (unix seconds) for the activity's window."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _record(activity: NodeActivity, at: float, *, tokens: int = 10, error: str | None = None, n: int = 0) -> None:
    activity.record(
        task_id=f"t{n}",
        publisher="pub",
        model="m",
        error=error,
        completion_tokens=tokens,
        received_at_ns=int((at - 1) * NS),
        ended_at_ns=int(at * NS),
    )


def test_tasks_and_tokens_land_in_their_minute() -> None:
    clock = Clock(600_000.0)
    activity = NodeActivity(clock=clock)
    _record(activity, 599_990.0, tokens=30)  # the minute before
    _record(activity, 600_010.0, tokens=90)
    _record(activity, 600_020.0, tokens=0, error="Invalid prompt: bad")
    minutes = activity.snapshot().minutes
    assert len(minutes) == HISTORY_MINUTES
    assert minutes[-1] == {"minute": 600_000, "tasks": 2, "failed": 1, "tokens": 90, "tokens_per_s": 1.5}
    assert minutes[-2]["tasks"] == 1 and minutes[-2]["tokens"] == 30
    assert sum(m["tasks"] for m in minutes) == 3


def test_an_hour_later_the_old_minutes_are_gone_and_memory_stays_bounded() -> None:
    clock = Clock(0.0)
    activity = NodeActivity(clock=clock)
    for minute in range(3 * HISTORY_MINUTES):
        clock.now = minute * 60.0 + 5
        _record(activity, clock.now, n=minute)
    snapshot = activity.snapshot()
    assert [m["tasks"] for m in snapshot.minutes] == [1] * HISTORY_MINUTES
    assert snapshot.minutes[0]["minute"] == (2 * HISTORY_MINUTES) * 60
    assert len(activity._minutes) == HISTORY_MINUTES  # noqa: SLF001 - the bound itself is what is tested
    assert len(snapshot.recent_tasks) == RECENT_TASKS
    assert snapshot.recent_tasks[0].task_id == f"t{3 * HISTORY_MINUTES - 1}"  # newest first
    clock.now += 2 * 3600
    assert sum(m["tasks"] for m in activity.snapshot().minutes) == 0


def test_a_failed_task_keeps_a_short_error_and_no_negative_counts() -> None:
    activity = NodeActivity(clock=lambda: 120.0)
    _record(activity, 100.0, tokens=-5, error="x" * 10_000)
    [task] = activity.snapshot().recent_tasks
    assert not task.ok and task.error == "x" * ERROR_CHARS and task.completion_tokens == 0
    assert task.elapsed_s == 1.0
