"""The daemon's supervisor of execution processes: one per model, started, watched, restarted.

At start every configured model gets a process; the node serves the models whose
process loaded and answered a health probe, and stops with a clear error if none
did. While serving, a watch loop per model probes the process (every second while
tasks run), checks its RSS against its limit (the operator's, or derived from the
model: its `ready`), its threads and its scratch folder (scratch.py) against theirs,
and its decode progress against the stall watchdog (stall.py), and kills it if any fails. A process that
ends is counted in /metrics with its signal and restarted with exponential
backoff; so is a start that fails in any way. After `exec_crash_limit` crashes
within `exec_crash_window` seconds the model leaves the heartbeats until a
restart succeeds and the process stays up; a model restarting or stalling is left
out of them (`advertised`) until it serves again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from config.settings import Settings
from models.benchmark import CacheFile
from node.daemon.failures import RecentFailures
from node.daemon.processes.bounds import breach, rss_bytes
from node.daemon.processes.early import EarlyProcess, execution_process
from node.daemon.processes.exits import ExecutionProcessExitError, ExecutionProcessStartError
from node.daemon.processes.handle import ExecutionProcess
from node.daemon.processes.sandbox_policy import prepare_sandbox
from node.daemon.processes.scratch import remove_stale
from node.daemon.processes.stall import STALL_PROBE_INTERVAL_S, StallWatch
from node.daemon.processes.tool_settings import tool_settings
from node.execution.protocol import Ready, RunTask, TaskDone, TaskFailed
from node.ops.metrics import NodeMetrics
from node.wire.error_kinds import ErrorKind, TaskError

log = structlog.get_logger(__name__)

MIB = 1024 * 1024
PROBE_INTERVAL_S = 5.0
PROBE_TIMEOUT_S = 30.0  # the child's loop is free unless a workflow blocks it; tasks have their own limits
RSS_CHECK_INTERVAL_S = 0.5
MIN_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0
RESTART_CHECK_S = 1.0  # how often a task waiting for a restart looks whether the restarts keep failing
CLOSE_TIMEOUT_S = 10.0  # at shutdown, what a process gets to end by itself before it is killed


class NoUsableModelError(Exception):
    """None of the configured models could be loaded."""


class ModelUnavailableError(Exception):
    """The model's execution process is not running (restarting, or never started)."""


@dataclass
class _ModelEntry:
    """One model's process and its crash history."""

    model: str
    process: ExecutionProcess | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    crashes: RecentFailures = field(default_factory=RecentFailures)
    benched: bool = False  # crashed too often: out of the heartbeats until a restart holds
    failed_starts: int = 0
    restarter: asyncio.Task[None] | None = None
    watcher: asyncio.Task[None] | None = None
    prober: asyncio.Task[None] | None = None
    stall: StallWatch | None = None  # the running process's progress watchdog


class ExecutionPool:
    """All execution processes of the node."""

    def __init__(self, settings: Settings, metrics: NodeMetrics, early: EarlyProcess | None = None) -> None:
        self._settings = settings
        # The node's identity key and the tools' secrets stay in the daemon (child_inputs.py): the processes'
        # tool requests are made here (tool_egress.py).
        self._tools = tool_settings(settings)
        self._sandbox = prepare_sandbox(settings)  # and no access to the data dir's files, the key's included
        # What the processes of a daemon that was killed wrote; the first process's folder is this daemon's.
        remove_stale(settings.scratch_dir, keep=early.scratch if early is not None else None)
        self._speeds = CacheFile(settings.benchmark_cache_path)  # the processes' measured speeds, kept here
        self._early = early  # the first model's process, spawned before the daemon's imports
        self._metrics = metrics
        self._entries: dict[str, _ModelEntry] = {}
        self.hosted: list[str] = []  # models whose process started; the node's models
        self.parallel: dict[str, int] = {}
        self.tps: dict[str, float] = {}
        self._closing = False

    # ----------------------------------------------------------------- start/stop
    async def start(self) -> None:
        """Start one process per configured model; READY means loaded and probed.

        A model whose execution process fails to start (missing file, too slow, a crash naming its signal)
        is logged and left out; NoUsableModelError if none is left.
        """
        problems = []
        # One after the other: startup benchmarks running side by side would measure each other.
        for name in dict.fromkeys(self._settings.models):
            try:
                await self._start_first(name)
            except Exception as exc:  # noqa: BLE001 - any failure leaves this model out, never the node
                self._metrics.exec_start_failures.labels(model=name).inc()
                log.error("model skipped", model=name, error=str(exc))
                problems.append(str(exc))
                continue
            self.hosted.append(name)
        if not self.hosted:
            raise NoUsableModelError("no usable model: " + "; ".join(problems))

    async def _start_first(self, name: str) -> None:
        entry = _ModelEntry(name)
        ready = await self._spawn(entry)
        self._entries[name] = entry
        self.parallel[name] = ready.parallel
        entry.watcher = asyncio.create_task(self._watch(entry), name=f"exec-watch-{name}")

    async def _spawn(self, entry: _ModelEntry) -> Ready:
        """Start a process for the model; ExecutionProcessStartError whatever went wrong (the process is gone then)."""
        process = self._early.take(entry.model) if self._early is not None else None
        if process is None:
            process = execution_process(
                self._settings, entry.model, self._sandbox, self._speeds, self._tools, self._on_exit
            )
        process.on_exit = self._on_exit
        process.on_benchmarked = lambda benchmarked: self._on_benchmarked(entry, benchmarked)
        try:
            ready = await process.start(self._settings.exec_start_timeout)
        except ExecutionProcessStartError:
            raise
        except Exception as exc:  # a broken first line, a socket error...: the same as any failed start
            if not isinstance(exc, OSError):  # a bug, here or in the child's first answer: keep its traceback
                log.error("execution process start failed unexpectedly", model=entry.model, exc_info=True)
            await process.close(1.0)
            raise ExecutionProcessStartError(
                f"model {entry.model}: the execution process failed to start ({type(exc).__name__}: {exc})"
            ) from exc
        try:
            await process.probe(PROBE_TIMEOUT_S)
        except (TimeoutError, ExecutionProcessExitError) as exc:
            await process.close(1.0)
            raise ExecutionProcessStartError(
                f"model {entry.model}: the execution process did not answer its health probe ({exc})"
            ) from None
        entry.process = process
        # What this process says replaces what the last one said (a hijacked process may have said anything):
        # the cached figure, or none until it measures. (A remote engine's figure, set by the health checks
        # while the engine is up, stays when its process has none.)
        if ready.generation_tps is not None:
            self.tps[entry.model] = ready.generation_tps
            self._metrics.tokens_per_second.labels(model=entry.model).set(ready.generation_tps)
        elif ready.benchmark_later and self.tps.pop(entry.model, None) is not None:
            self._metrics.tokens_per_second.remove(entry.model)
        learned = entry.stall.seconds_per_token if entry.stall is not None else 0.0
        entry.stall = StallWatch(self._settings.exec_stall_timeout, ready.step_seconds, learned)
        if process.benchmarked is not None:  # measured already, while its health probe was answered
            self._on_benchmarked(entry, process)
        entry.ready.set()
        self._metrics.exec_process_up.labels(model=entry.model).set(1)
        return ready

    def _on_benchmarked(self, entry: _ModelEntry, process: ExecutionProcess) -> None:
        """A speed measured after `ready` (a first start's; provisional, then clean): advertised, and the stall
        bound sized by it."""
        measured = process.benchmarked
        if measured is None or entry.process is not process:  # not (or not yet) the model's serving process
            return
        self.tps[entry.model] = measured.generation_tps
        self._metrics.tokens_per_second.labels(model=entry.model).set(measured.generation_tps)
        if entry.stall is not None and measured.step_seconds is not None:
            entry.stall.step_s = measured.step_seconds

    async def close(self) -> None:
        """Stop every process (their running tasks end with an 'interrupted' error)."""
        self._closing = True
        for entry in self._entries.values():
            for task in (entry.restarter, entry.prober):
                if task is not None:
                    task.cancel()
        # The watchers go on while the processes end (up to CLOSE_TIMEOUT_S): their bounds hold till the last.
        await asyncio.gather(
            *(s.process.close(CLOSE_TIMEOUT_S) for s in self._entries.values() if s.process is not None)
        )
        for entry in self._entries.values():
            if entry.watcher is not None:
                entry.watcher.cancel()

    # ----------------------------------------------------------------- serving
    def available(self) -> list[str]:
        """Models to take tasks for: hosted, and not crash-looping (a restarting one queues them)."""
        return [name for name in self.hosted if not self._entries[name].benched]

    def advertised(self) -> list[str]:
        """Models to announce in heartbeats: available, with a process up and not stalling."""
        now = time.monotonic()
        return [name for name in self.available() if self._serving_now(self._entries[name], now)]

    @staticmethod
    def _serving_now(entry: _ModelEntry, now: float) -> bool:
        process = entry.process
        if not entry.ready.is_set() or process is None or not process.alive:
            return False
        return entry.stall is None or not entry.stall.lagging(now)

    def available_tps(self) -> dict[str, float]:
        """Measured generation speed of the models in the heartbeats."""
        advertised = self.advertised()
        return {name: tps for name, tps in self.tps.items() if name in advertised}

    def process(self, model: str) -> ExecutionProcess | None:
        """The ready execution process of `model`; None if it has none."""
        entry = self._entries.get(model)
        return entry.process if entry is not None and entry.ready.is_set() else None

    async def run(
        self, model: str, request: RunTask, on_delta: Callable[[str], None] | None = None
    ) -> TaskDone | TaskFailed:
        """Run on `model`'s process, waiting for it while it restarts (the caller bounds the wait);
        `on_delta` gets a streaming request's text deltas."""
        entry = self._entries.get(model)
        if entry is None:
            raise ModelUnavailableError(f"model {model} is not served here")
        while True:
            if not entry.ready.is_set() and self._failing_to_start(entry):
                raise ModelUnavailableError(f"model {model} is unavailable: its execution process fails to start")
            try:
                # Not wait_for: on Python 3.11 it returns when cancelled just after `ready` was set, and the
                # cancelled task would then be sent to the process (its runner already answered it).
                async with asyncio.timeout(RESTART_CHECK_S):
                    await entry.ready.wait()
            except TimeoutError:
                continue
            if entry.process is not None and entry.process.alive:
                return await entry.process.run(request, on_delta)
            await asyncio.sleep(0)  # exited after `ready` was set: the exit callback clears it

    def _failing_to_start(self, entry: _ModelEntry) -> bool:
        """Its restarts keep failing (the file was removed or damaged): tasks do not wait for it."""
        return entry.failed_starts >= self._settings.exec_crash_limit

    def cancel(self, model: str, task_id: str, reason: str) -> bool:
        """Ask the process to stop a task; False if the task is not on a running process."""
        process = self.process(model)
        if process is None or not process.has_task(task_id):
            return False
        process.cancel(task_id, reason)
        return True

    def kill(self, model: str, reason: str) -> None:
        """Kill a process that would not stop; its other tasks get a transient error."""
        process = self.process(model)
        if process is not None:
            log.error("killing execution process", model=model, pid=process.pid, reason=reason)
            process.kill(
                TaskError.of(ErrorKind.INTERRUPTED, "execution process restarted (another task would not stop)"),
                crash=False,
                cause="stopped",
            )

    # ----------------------------------------------------------------- watching
    def _on_exit(self, process: ExecutionProcess) -> None:
        entry = self._entries.get(process.model)
        if entry is None or entry.process is not process or self._closing:
            return
        entry.ready.clear()
        self._metrics.exec_process_up.labels(model=entry.model).set(0)
        error = process.exit_error
        assert error is not None
        if error.crash:
            self._metrics.exec_crashes.labels(model=entry.model, cause=error.cause).inc()
            entry.crashes.record(time.monotonic(), self._settings.exec_crash_window)
        log.error(
            "execution process ended",
            model=entry.model,
            pid=process.pid,
            cause=error.cause,
            reason=error.reason,
            tasks_lost=process.running,
            crash=error.crash,
        )
        if error.crash and len(entry.crashes) >= self._settings.exec_crash_limit and not entry.benched:
            entry.benched = True
            log.error(
                "model leaves the heartbeats: its execution process crashed too often",
                model=entry.model,
                crashes=len(entry.crashes),
                window_s=self._settings.exec_crash_window,
            )
        entry.restarter = asyncio.create_task(self._restart(entry), name=f"exec-restart-{entry.model}")

    async def _restart(self, entry: _ModelEntry) -> None:
        delay = entry.crashes.backoff(MIN_BACKOFF_S, MAX_BACKOFF_S, at_least=entry.failed_starts + 1)
        while not self._closing:
            await asyncio.sleep(delay)
            try:
                await self._spawn(entry)
            except Exception as exc:  # noqa: BLE001 - whatever failed, the model gets another start later
                entry.failed_starts += 1
                self._metrics.exec_start_failures.labels(model=entry.model).inc()
                delay = min(MAX_BACKOFF_S, delay * 2)
                log.error(
                    "execution process restart failed",
                    model=entry.model,
                    error=str(exc),
                    error_type=type(exc).__name__,
                    failed_starts=entry.failed_starts,
                    retry_in_s=delay,
                )
                if self._failing_to_start(entry) and not entry.benched:
                    entry.benched = (
                        True  # intake takes no task for it; the restarts go on, and one that holds ends this
                    )
                    log.error(
                        "model leaves the heartbeats: its execution process fails to start",
                        model=entry.model,
                        failed_starts=entry.failed_starts,
                    )
                continue
            entry.failed_starts = 0
            self._metrics.exec_restarts.labels(model=entry.model).inc()
            log.info("execution process restarted", model=entry.model, pid=entry.process.pid if entry.process else None)
            if entry.benched:
                entry.benched = False
                log.warning("model back in the heartbeats: its execution process restarted", model=entry.model)
            return

    async def _watch(self, entry: _ModelEntry) -> None:
        """Kill the process when it outgrows its RSS limit, its threads or its scratch folder, or stops answering
        probes."""
        last_probe = time.monotonic()
        while True:
            await asyncio.sleep(RSS_CHECK_INTERVAL_S)
            process = entry.process
            if process is not None and process.alive and await self._over_bounds(process):
                continue
            if process is None or not process.alive or not entry.ready.is_set():
                last_probe = time.monotonic()
                continue
            rss = rss_bytes(process.pid)
            limit = process.ready.max_rss_mb if process.ready is not None else None  # the operator's or derived
            if rss is not None:
                self._metrics.exec_rss_bytes.labels(model=entry.model).set(rss)
                if limit and rss > limit * MIB:
                    reason = f"execution process exceeded its memory limit ({rss // MIB} MiB RSS > {limit} MiB)"
                    log.error(
                        "execution process over its memory limit",
                        model=entry.model,
                        pid=process.pid,
                        rss_mib=rss // MIB,
                        limit_mib=limit,
                    )
                    process.kill(TaskError.failed(reason), crash=True, cause="memory")
                    continue
            busy = process.running > 0 or (entry.stall is not None and entry.stall.busy)
            interval = STALL_PROBE_INTERVAL_S if busy else PROBE_INTERVAL_S
            probing = not self._closing and (entry.prober is None or entry.prober.done())
            if time.monotonic() - last_probe >= interval and probing:
                last_probe = time.monotonic()
                entry.prober = asyncio.create_task(self._probe(entry, process), name=f"exec-probe-{entry.model}")

    async def _over_bounds(self, process: ExecutionProcess) -> bool:
        """Kill the process if it holds more than it may of what its RSS does not count (bounds.py; True: it was
        killed)."""
        if process.pid is None:
            return False
        pid, scratch, limit_mb = process.pid, process.scratch, self._settings.exec_scratch_mb
        try:
            found = await asyncio.to_thread(breach, pid, scratch, limit_mb)
        except RuntimeError:  # no thread could start (the user's process limit): here, then
            found = breach(pid, scratch, limit_mb)
        if found is None or not process.alive:
            return False
        log.error("execution process over a bound", model=process.model, pid=process.pid, reason=found.reason)
        process.kill(TaskError.failed(found.reason), crash=True, cause=found.cause)
        return True

    async def _probe(self, entry: _ModelEntry, process: ExecutionProcess) -> None:
        try:
            pong = await process.probe(PROBE_TIMEOUT_S)
        except TimeoutError:
            log.error("execution process does not answer its health probe", model=entry.model, pid=process.pid)
            process.kill(
                TaskError.failed(
                    f"execution process stopped answering ({PROBE_TIMEOUT_S:g} s without a health probe answer)"
                ),
                crash=True,
                cause="unresponsive",
            )
            return
        except ExecutionProcessExitError:
            return
        if entry.stall is None or entry.process is not process:
            return
        stall = entry.stall.observe(pong.progress, time.monotonic())
        if stall is None:
            return
        self._metrics.exec_stalls.labels(model=entry.model, call=stall.call or "none").inc()
        log.error(
            "execution process stalled; killing it",
            model=entry.model,
            pid=process.pid,
            call=stall.call,
            stalled_s=round(stall.seconds, 1),
            bound_s=round(entry.stall.bound(stall.call, stall.tokens), 1),
            suspects=sorted(stall.task_ids),
            sole_suspect=stall.sole,
        )
        process.kill(
            TaskError.of(ErrorKind.INTERRUPTED, f"execution process restarted ({stall.describe()})"),
            crash=False,
            cause="stalled",
            suspects=stall.task_ids,
            sole_suspect=stall.sole,
        )

    def stats(self) -> dict[str, Any]:
        """Per-model process state for /status."""
        return {
            name: {
                "pid": s.process.pid if s.process else None,
                "up": s.ready.is_set(),
                "benched": s.benched,
                "advertised": s.model in self.advertised(),
                "crashes_in_window": len(s.crashes),
            }
            for name, s in self._entries.items()
        }
