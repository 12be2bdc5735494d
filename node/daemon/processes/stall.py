"""The stall watchdog: a model whose decode loop stops progressing is killed, and who is to blame.

Every probe answer (`Pong.progress`) says how many native calls the decode loop has
finished, how many sequences run, and which call runs now, for which tasks, since
how long (models/progress.py). `StallWatch.observe` turns that into a verdict:

- **Bounds.** A `start` call (building a request's sampler) and a `sample` call
  (one sequence picks its next token) are one task's own work: they get
  `exec_stall_timeout` seconds. A `decode` call (one batch: prompt chunks plus one
  token of every sequence) gets `exec_stall_timeout` plus `STEP_MULTIPLE` times its
  expected time: the larger of a full batch step at the benchmarked speed
  (`Ready.step_seconds`) and its token count times the slowest seconds per token of
  the recent decodes (measured by the runtime, carried over a restart); with
  neither known yet, `UNMEASURED_STEP_S`. With sequences running, finishing no call
  for the bound of a full step is a stall too (stuck outside any native call).
- **Suspects.** The tasks inside the stalled call. A `start` or `sample` call holds
  one sequence, so its task is the sole suspect (`Stall.sole`): what it costs is
  driven by that task's own constraints. A `decode` call holds every sequence of
  the batch: all are suspects, none alone. Tasks on the process but outside the
  call are innocent co-runners.
- **What the runner does with it** (node/daemon/runner.py): a sole suspect, or a
  suspect for the second time, gets `Invalid prompt: `; any other task on the
  killed process runs once more if its deadline leaves time.

A model whose decode loop has made no progress for half its bound is "lagging":
it leaves the heartbeats until it progresses again or its restart holds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from node.execution.protocol import Progress

# How many expected batch steps a decode call may take beyond the floor before it is a stall.
STEP_MULTIPLE = 4.0
# The expected time of a batch step before anything was measured (no benchmark, no decode yet).
UNMEASURED_STEP_S = 15.0
# While tasks run, how often the daemon asks for progress.
STALL_PROBE_INTERVAL_S = 1.0


@dataclass(frozen=True)
class Stall:
    """A decode loop found stalled: where, for whom, how long."""

    call: str | None  # "start", "decode", "sample", or None (stuck outside a native call)
    task_ids: frozenset[str]  # the suspects
    sole: bool  # the call was one task's own work
    seconds: float
    tokens: int = 0  # tokens in the stalled call (a decode's batch)

    def describe(self) -> str:
        """The stall in words, for logs and errors."""
        where = f"in a {self.call} call" if self.call else "outside any native call"
        return f"no progress for {self.seconds:.0f} s {where}"


class StallWatch:
    """The stall verdict for one execution process, fed with its probe answers."""

    def __init__(self, floor_s: float, step_s: float | None, seconds_per_token: float = 0.0) -> None:
        self.floor_s = floor_s
        self.step_s = step_s or 0.0
        # The slowest recent decode per token, as the process last reported it; a restarted
        # process's watch starts from it.
        self.seconds_per_token = seconds_per_token
        self._calls_done = -1
        self._last_change = time.monotonic()
        self._last: Progress | None = None
        self._observed_at = self._last_change

    def bound(self, call: str | None, tokens: int = 0) -> float:
        """Seconds a call of this kind (a decode of `tokens`) may run; None: time without any finished call."""
        if call in ("start", "sample"):
            return self.floor_s
        expected = max(self.step_s, self.seconds_per_token * tokens)
        if expected == 0.0:
            expected = UNMEASURED_STEP_S
        return self.floor_s + STEP_MULTIPLE * expected

    @property
    def busy(self) -> bool:
        """Sequences were running at the last observation."""
        return self._last is not None and self._last.busy > 0

    def observe(self, progress: Progress | None, now: float) -> Stall | None:
        """Record a probe answer; the stall it shows, if any."""
        self._last, self._observed_at = progress, now
        if progress is None:
            return None
        if progress.seconds_per_token > 0:  # a new process has measured nothing yet: keep what the last one did
            self.seconds_per_token = progress.seconds_per_token
        if progress.calls_done != self._calls_done or (progress.busy == 0 and progress.call is None):
            self._calls_done, self._last_change = progress.calls_done, now
        suspects = frozenset(progress.task_ids)
        if progress.call is not None and progress.call_seconds > self.bound(progress.call, progress.call_tokens):
            sole = progress.call != "decode" and len(suspects) == 1
            return Stall(progress.call, suspects, sole, progress.call_seconds, progress.call_tokens)
        quiet = now - self._last_change
        if progress.busy > 0 and progress.call is None and quiet > self.bound(None):
            return Stall(None, frozenset(), False, quiet)
        return None

    def lagging(self, now: float) -> bool:
        """No progress for half the bound of what runs now (judged from the last observation)."""
        last = self._last
        if last is None or (last.busy == 0 and last.call is None):
            return False
        if last.call is not None:
            running_s = last.call_seconds + (now - self._observed_at)
            return running_s > self.bound(last.call, last.call_tokens) / 2
        return now - self._last_change > self.bound(None) / 2
