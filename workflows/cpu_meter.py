"""Coroutines metered against an allowance of this thread's CPU, for work a stranger shapes.

`metered` runs a coroutine step by step, taking each step's thread CPU time from an `Allowance`. Before a step,
if the allowance is spent, `error` is thrown in at the coroutine's await point instead of the value it awaited,
so its own cleanup (closing a connection) still runs; a cancellation or any other exception being passed in is
never replaced. The egress uses it (egress.py): a hostile server's headers, trickled bytes or redirects cost the
event loop their parse, and no cap on bytes or pieces bounds that for every shape of answer.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Coroutine, Generator
from typing import Any, TypeVar

from workflows.allowance import Allowance

T = TypeVar("T")


def metered(coroutine: Coroutine[Any, Any, T], allowance: Allowance, error: BaseException) -> Awaitable[T]:
    """`coroutine`, its steps' thread CPU time taken from `allowance`; `error` thrown in once it is spent."""
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
            if thrown is not None:
                stopped = True  # a cancellation or another error on its way out: nothing replaces it, now or later
            elif not stopped and allowance.left() <= 0:
                stopped, value, thrown = True, None, self._error  # once: the cleanup that follows runs on
            started = time.thread_time()
            try:
                step = coroutine.send(value) if thrown is None else coroutine.throw(thrown)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            finally:
                allowance.take(time.thread_time() - started)
            try:
                value, thrown = (yield step), None
            except BaseException as exc:  # noqa: BLE001 - a cancellation, passed on into the coroutine
                value, thrown = None, exc
