"""Coroutines metered against an allowance of this thread's CPU, for work a stranger shapes.

`metered` runs a coroutine step by step, taking each step's thread CPU time from an `Allowance`. Before a step,
if the allowance is spent, `error` is thrown in at the coroutine's await point instead of the value it awaited,
once, so its own cleanup (closing a connection) still runs; never in place of an exception being passed in, nor
while the task is being cancelled (a timeout, a stop). The egress uses it (egress.py): a hostile server's headers, trickled bytes or redirects cost the
event loop their parse, and no cap on bytes or pieces bounds that for every shape of answer.
"""

from __future__ import annotations

import asyncio
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
        injected = False
        while True:
            if thrown is None and not injected and allowance.left() <= 0 and not _cancelling():
                injected, value, thrown = True, None, self._error  # once: the cleanup that follows runs on
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


def _cancelling() -> bool:
    """Whether this task is being cancelled (a timeout, a stop). A cancellation some library takes back, as anyio
    does when its cancel scope around a connect ends, leaves the count at zero: metering goes on after it."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
