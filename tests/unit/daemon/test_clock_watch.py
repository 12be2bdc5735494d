"""ClockWatch: every message rejected for its time and none accepted means this machine's clock is wrong;
a few replayed old messages among accepted ones mean nothing."""

from __future__ import annotations

from node.daemon.clock_watch import MIN_REJECTED, WINDOW_S, ClockWatch


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_only_rejections_for_time_and_no_message_accepted_make_a_problem() -> None:
    clock = Clock()
    watch = ClockWatch(clock=clock)
    for _ in range(MIN_REJECTED - 1):
        watch.rejected("stale")
    watch.rejected("bad_signature")  # rejected, but not for its time
    assert watch.problem() is None
    watch.rejected("future")
    assert watch.problem() is not None and "clock" in watch.problem()  # type: ignore[operator]

    watch.heard()  # one message passed: the clock is right, the rejected ones were replays
    assert watch.problem() is None
    clock.now += WINDOW_S + 1  # that message is out of the window, and so are the rejections
    assert watch.problem() is None
    for _ in range(MIN_REJECTED):
        watch.rejected("stale")
    assert watch.problem() is not None
