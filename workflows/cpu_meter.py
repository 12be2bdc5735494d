"""A share of this thread's CPU for work a stranger shapes, and coroutines metered against it.

`Allowance` is an amount that refills at a steady rate up to a burst (seconds of CPU, or requests). `metered`
runs a coroutine step by step, charging each step's thread CPU time to an allowance: once it is spent, the
coroutine gets `error` thrown in at its next step, so its own cleanup (closing a connection) still runs. The
egress uses it (egress.py): a hostile server's headers, trickled bytes or redirects cost the event loop their
parse, and no cap on bytes or pieces bounds that for every shape of answer.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Coroutine, Generator
from typing import Any, TypeVar

T = TypeVar("T")


class Allowance:
    """`per_second` units a second, at most `burst` held; spending past zero is refused."""

    def __init__(self, per_second: float, burst: float) -> None:
        self._per_second, self._burst = per_second, burst
        self._left, self._counted_at = burst, time.monotonic()

    def left(self) -> float:
        """What is left now."""
        now = time.monotonic()
        self._left = min(self._burst, self._left + (now - self._counted_at) * self._per_second)
        self._counted_at = now
        return self._left

    def spend(self, amount: float) -> bool:
        """Take `amount` (down to below zero, once); False when nothing was left to take it from."""
        if self.left() <= 0:
            return False
        self._left -= amount
        return True


def metered(coroutine: Coroutine[Any, Any, T], allowance: Allowance, error: BaseException) -> Awaitable[T]:
    """`coroutine`, its steps' thread CPU time spent from `allowance`; `error` thrown in once it is spent."""
    return _Metered(coroutine, allowance, error)


class _Metered(Awaitable[T]):
    def __init__(self, coroutine: Coroutine[Any, Any, T], allowance: Allowance, error: BaseException) -> None:
        self._coroutine, self._allowance, self._error = coroutine, allowance, error

    def __await__(self) -> Generator[Any, Any, T]:
        coroutine, allowance = self._coroutine, self._allowance
        value: Any = None
        thrown: BaseException | None = None
        stopped = False
        while True:
            started = time.thread_time()
            try:
                step = coroutine.send(value) if thrown is None else coroutine.throw(thrown)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            finally:
                spent_all = not allowance.spend(time.thread_time() - started)
            if spent_all and not stopped:  # its cleanup runs on, and is charged, but stopped once
                stopped, value, thrown = True, None, self._error
                continue
            try:
                value, thrown = (yield step), None
            except BaseException as exc:  # noqa: BLE001 - a cancellation, passed on into the coroutine
                value, thrown = None, exc
