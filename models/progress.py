"""Decode progress of the batched runtime, for a watchdog outside the decode loop's thread.

The decode loop wraps every native call that can take long (starting a request's
sampler, one `llama_decode` of a batch, sampling one sequence) in
`DecodeProgress.native_call`, naming the owners of the requests inside it. Any thread
can take a `ProgressSnapshot`: a counter of finished calls (monotonic), how many
sequences are running, and which call is running now, for whom, since how long, how
many tokens it holds, and the slowest seconds per token of recent decodes (what a
decode of that size should cost here, measured). A call that never returns is
visible from outside, and so is whose it was.

The owner of a request is whatever the caller set in `request_owner` (a task id in
the node's execution process) when it called `generate`.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Literal

# Set by the caller around `generate`; copied into each request the runtime queues.
request_owner: ContextVar[str | None] = ContextVar("request_owner", default=None)

# start: a request's sampler is built (grammar parsing); decode: one llama_decode of the
# batch (every sequence in it); sample: one sequence's sampler picks its next token.
NativeCall = Literal["start", "decode", "sample"]

# Decode calls whose cost per token is remembered (the slowest of them sizes a decode's bound).
RECENT_DECODES = 64


@dataclass(frozen=True)
class ProgressSnapshot:
    """The decode loop's progress at one instant."""

    calls_done: int  # native calls finished since load; grows while the loop progresses
    busy: int  # sequences running in slots
    call: NativeCall | None  # the native call running now, if any
    owners: tuple[str, ...]  # owners of the requests inside that call
    call_seconds: float  # how long that call has run
    call_tokens: int  # tokens in that call (a decode's batch)
    seconds_per_token: float  # the slowest of the recent decodes, per token (0: none yet)


class DecodeProgress:
    """Written by the decode loop's thread, read from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls_done = 0
        self._call: NativeCall | None = None
        self._owners: tuple[str, ...] = ()
        self._since = 0.0
        self._tokens = 0
        self._per_token: deque[float] = deque(maxlen=RECENT_DECODES)

    @contextmanager
    def native_call(self, call: NativeCall, owners: Iterable[str | None], tokens: int = 0) -> Iterator[None]:
        """Mark the body as one native call on behalf of `owners` (None owners are left out)."""
        named = tuple(dict.fromkeys(owner for owner in owners if owner is not None))
        with self._lock:
            self._call, self._owners, self._since, self._tokens = call, named, time.monotonic(), tokens
        try:
            yield
        finally:
            with self._lock:
                if tokens:
                    self._per_token.append((time.monotonic() - self._since) / tokens)
                self._call, self._owners, self._tokens = None, (), 0
                self._calls_done += 1

    def snapshot(self, busy: int) -> ProgressSnapshot:
        """The decode progress now, with `busy` slots in use."""
        with self._lock:
            running = self._call is not None
            return ProgressSnapshot(
                calls_done=self._calls_done,
                busy=busy,
                call=self._call,
                owners=self._owners,
                call_seconds=time.monotonic() - self._since if running else 0.0,
                call_tokens=self._tokens,
                seconds_per_token=max(self._per_token, default=0.0),
            )
