"""Coalescing a task's text deltas before they cross the IPC boundary (execution process side).

A token's text is a few characters; a message per token would cost the daemon a frame
per token per task. `DeltaCoalescer` gathers the pieces and sends them as one delta
once `max_chars` have gathered or `max_delay_s` after the first unsent piece, and at
`close`. Past `max_total_chars` it stops for good (the rest arrives with the result),
so a task's deltas stay bounded whatever it generates. Event loop only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

FLUSH_CHARS = 32
FLUSH_DELAY_S = 0.05
MAX_TOTAL_CHARS = 1024 * 1024


class DeltaCoalescer:
    """Gathers text pieces and hands them to `send` in fewer, larger deltas, in order."""

    def __init__(
        self,
        send: Callable[[str], None],
        *,
        max_chars: int = FLUSH_CHARS,
        max_delay_s: float = FLUSH_DELAY_S,
        max_total_chars: int = MAX_TOTAL_CHARS,
    ) -> None:
        self._send = send
        self._max_chars = max_chars
        self._max_delay_s = max_delay_s
        self._left = max_total_chars
        self._pieces: list[str] = []
        self._gathered = 0
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def stopped(self) -> bool:
        """True once closed or past the total bound: nothing more is sent."""
        return self._closed or self._left <= 0

    def add(self, piece: str) -> None:
        """A piece of text, in order; sent now, soon, or (past the total bound) never."""
        if self.stopped or not piece:
            return
        if len(piece) > self._left - self._gathered:  # past the bound: nothing unsent or later goes
            self._pieces.clear()
            self._gathered = 0
            self._left = 0
            self._cancel_timer()
            return
        self._pieces.append(piece)
        self._gathered += len(piece)
        if self._gathered >= self._max_chars:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._max_delay_s, self.flush)

    def flush(self) -> None:
        """Send what has gathered, as one delta."""
        self._cancel_timer()
        if not self._pieces or self._closed:
            return
        text = "".join(self._pieces)
        self._pieces.clear()
        self._gathered = 0
        self._left -= len(text)
        self._send(text)

    def close(self) -> None:
        """Send the rest and stop (the task ended)."""
        self.flush()
        self._closed = True

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
