"""The daemon's handle on one execution process: spawn, talk, watch it end.

`ExecutionProcess.start()` spawns a clean interpreter (`python -m node.execution`, which
confines itself by the sandbox policy first; child_spawn.py), hands it one end of a socketpair, sends `configure`
and waits for `ready`; `spawn()` alone starts the interpreter early (its imports
beside the daemon's, see early.py) and `start()` then configures it. A reader task then routes answers to the tasks waiting for
them, and another relays its stderr into the daemon's log (child_output.py). When the process ends,
for whatever reason, every task still on it gets a `ExecutionProcessExitError` naming the signal or
exit code, and `on_exit` is called once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from models.benchmark import SpeedStore
from node.daemon.processes.child_output import read_pipe, relay_output
from node.daemon.processes.child_spawn import spawn_child
from node.daemon.processes.exits import ExecutionProcessExitError, ExecutionProcessStartError, describe_exit
from node.daemon.processes.scratch import Scratch
from node.daemon.processes.speed_keeper import SpeedKeeper
from node.daemon.processes.strays import ParseCost, StrayAnswers
from node.daemon.processes.tool_egress import ToolEgress
from node.execution.protocol import (
    MAX_CHILD_LINE_BYTES,
    Benchmarked,
    Cancel,
    Configure,
    LoadFailed,
    Measured,
    Message,
    Pong,
    Probe,
    ProtocolError,
    Ready,
    RunTask,
    SandboxPolicy,
    TaskDelta,
    TaskDone,
    TaskFailed,
    ToolFetch,
    decode_from_child,
    encode,
    read_line,
)
from node.wire.error_kinds import ErrorKind, TaskError
from workflows.options import ToolSettings

log = structlog.get_logger(__name__)

OUTPUT_DRAIN_S = 1.0  # after a process's exit, what it wrote last still reaches the log within this


class ExecutionProcess:
    """One running execution process for `model`."""

    def __init__(
        self,
        model: str,
        settings: dict[str, Any],
        on_exit: Callable[[ExecutionProcess], None],
        sandbox: SandboxPolicy | None = None,
        speeds: SpeedStore | None = None,
        scratch_root: Path | None = None,
        tools: ToolSettings | None = None,
        environment: dict[str, str] | None = None,
    ) -> None:
        self.model = model
        self._settings = settings
        self._environment = environment  # child_inputs.py's for its model (None: the daemon's, less its secrets)
        self._sandbox = sandbox  # what the child confines itself by (sandbox_policy.py); None: not confined
        self._scratch_root = scratch_root  # where its scratch folder is made (None: it gets none)
        self.scratch: Scratch | None = None  # the one folder it may write, removed after its exit (scratch.py)
        self._removal: asyncio.Task[None] | None = None  # of the scratch folder, after the exit: close() awaits it
        self._speeds = SpeedKeeper(model, speeds)  # the daemon's speed cache: sent in `configure`, `measured` offered
        self.on_exit = on_exit  # the owner's, set again by a pool adopting an early-spawned process
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._exit_watch: asyncio.Task[None] | None = None
        self._output: asyncio.Task[None] | None = None  # relays the process's stderr into the daemon's log
        self._pending: dict[str, asyncio.Future[TaskDone | TaskFailed]] = {}
        self._delta_sinks: dict[str, Callable[[str], None]] = {}
        self._probes: dict[int, asyncio.Future[Pong]] = {}
        self._probe_ids = itertools.count(1)
        self._egress = ToolEgress(tools, self._send, model, self._unread)  # its tools' requests: it has no network
        self._strays, self._parse_cost = StrayAnswers(), ParseCost()  # what its lines cost without cause (strays.py)
        self._exit: ExecutionProcessExitError | None = None  # set by kill() before the process ends
        self.exited = asyncio.Event()
        self.ready: Ready | None = None
        self.benchmarked: Benchmarked | None = None  # the latest speed measured after `ready`
        self.on_benchmarked: Callable[[ExecutionProcess], None] = lambda process: None

    @property
    def pid(self) -> int | None:
        """The process's pid; None before it starts."""
        return None if self._proc is None else self._proc.pid

    @property
    def running(self) -> int:
        """Tasks sent and not answered."""
        return len(self._pending)

    @property
    def alive(self) -> bool:
        """Started and not yet exited."""
        return self._proc is not None and not self.exited.is_set()

    @property
    def spawned(self) -> bool:
        """The process was spawned (its interpreter starts and imports until `start` configures it)."""
        return self._proc is not None

    async def spawn(self) -> None:
        """Spawn the process: its interpreter starts and imports what loading a model needs, then
        waits for `configure` (`start`)."""
        if self._scratch_root is not None:
            self.scratch = Scratch.make(self._scratch_root)  # first: nothing to close if it fails
        with contextlib.ExitStack() as undo:  # a spawn that fails leaves no scratch folder behind
            if (scratch := self.scratch) is not None:
                undo.callback(scratch.remove)  # empty: no process wrote there
            path = None if scratch is None else scratch.path
            spawned = await spawn_child(self._settings, self._environment, self._sandbox, path)
            undo.pop_all()
        self._proc = spawned.process
        self._output = asyncio.create_task(
            relay_output(await read_pipe(spawned.output), self.model, self._proc.pid), name=f"exec-{self.model}-output"
        )
        self._reader, self._writer = await asyncio.open_unix_connection(
            sock=spawned.channel, limit=MAX_CHILD_LINE_BYTES
        )

    async def start(self, timeout: float) -> Ready:
        """Spawn (unless `spawn` did), configure and wait for `ready`; ExecutionProcessStartError names
        the model and the cause."""
        if not self.spawned:
            await self.spawn()
        assert self._proc is not None and self._reader is not None
        reader = self._reader
        self._send(
            Configure(model=self.model, settings=self._settings, speeds=self._speeds.entries(), tools=self._egress.told)
        )
        try:
            # Not wait_for: on Python 3.11 it swallows a stop asked for during startup that lands as `ready` arrives.
            async with asyncio.timeout(timeout):
                message = await self._first_answer(reader)
        except TimeoutError:
            self._proc.kill()
            await self._reap(reader)  # closes our end of the socket too
            raise ExecutionProcessStartError(
                f"model {self.model}: the execution process did not load within {timeout:g} s"
            ) from None
        except ProtocolError as exc:
            self._proc.kill()
            await self._reap(reader)
            raise ExecutionProcessStartError(f"model {self.model}: {exc}") from None
        if not isinstance(message, Ready):
            await self._reap(reader)
            if isinstance(message, LoadFailed):
                named = message.error.startswith(f"model {self.model}")  # the loader's errors name it already
                raise ExecutionProcessStartError(message.error if named else f"model {self.model}: {message.error}")
            cause = describe_exit(self._proc.returncode)
            raise ExecutionProcessStartError(
                f"model {self.model}: the execution process crashed while loading ({cause})"
            )
        self.ready = message
        self._reader_task = asyncio.create_task(self._read(reader), name=f"exec-{self.model}")
        self._exit_watch = asyncio.create_task(self._end_stream_at_exit(), name=f"exec-{self.model}-exit")
        log.info(
            "execution process started",
            model=self.model,
            pid=self.pid,
            parallel=message.parallel,
            benchmark_later=message.benchmark_later,  # before READY: the benchmarks read it to know a measurement comes
        )
        return message

    async def _first_answer(self, reader: asyncio.StreamReader) -> Message | None:
        """The answer to `configure` (None: the stream ended first), after the speeds measured while loading."""
        while (line := await read_line(reader, MAX_CHILD_LINE_BYTES)) is not None:
            message = decode_from_child(line)
            if not isinstance(message, Measured):
                return message
            self._keep_speed(message, len(line))
        return None

    async def run(self, request: RunTask, on_delta: Callable[[str], None] | None = None) -> TaskDone | TaskFailed:
        """Send a task and wait for its answer; ExecutionProcessExitError if the process ends first.

        `on_delta` gets the `delta` messages of a streaming request (`request.stream`), in order.
        """
        if self._exit is not None or not self.alive:
            raise self._exit or ExecutionProcessExitError(
                TaskError.failed("execution process is not running"), crash=False, cause="stopped"
            )
        future: asyncio.Future[TaskDone | TaskFailed] = asyncio.get_running_loop().create_future()
        self._pending[request.task_id] = future
        if on_delta is not None:
            self._delta_sinks[request.task_id] = on_delta
        try:
            self._speeds.task_sent()
            self._send(request)
            return await future
        except asyncio.CancelledError:
            self.cancel(request.task_id, TaskError.of(ErrorKind.INTERRUPTED, "node shutting down").text)
            raise
        finally:
            self._pending.pop(request.task_id, None)
            self._delta_sinks.pop(request.task_id, None)

    def has_task(self, task_id: str) -> bool:
        """Whether the task is running in this process."""
        return task_id in self._pending

    def cancel(self, task_id: str, reason: str) -> None:
        """Ask the process to cancel the task (nothing if the process has exited)."""
        if self.alive:
            self._send(Cancel(task_id=task_id, reason=reason))

    async def probe(self, timeout: float) -> Pong:
        """A health probe: raises TimeoutError if the process's event loop does not answer."""
        probe_id = next(self._probe_ids)
        future: asyncio.Future[Pong] = asyncio.get_running_loop().create_future()
        self._probes[probe_id] = future
        try:
            self._send(Probe(probe_id=probe_id))
            async with asyncio.timeout(timeout):
                return await future
        finally:
            self._probes.pop(probe_id, None)

    def kill(
        self,
        error: TaskError,
        *,
        crash: bool,
        cause: str,
        suspects: frozenset[str] = frozenset(),
        sole_suspect: bool = False,
    ) -> None:
        """SIGKILL the process; its tasks get ExecutionProcessExitError(error)."""
        if self._proc is None or self.exited.is_set():
            return
        if self._exit is None:
            self._exit = ExecutionProcessExitError(
                error, crash=crash, cause=cause, suspects=suspects, sole_suspect=sole_suspect
            )
        try:
            self._proc.kill()
        except ProcessLookupError:
            pass

    async def close(self, timeout: float) -> None:
        """Ask the process to stop (end of stream), kill it if it has not after `timeout` s."""
        if self._exit is None:
            self._exit = ExecutionProcessExitError(
                TaskError.of(ErrorKind.INTERRUPTED, "execution process stopped"), crash=False, cause="stopped"
            )
        if self._writer is not None and not self._writer.is_closing():
            self._writer.close()
        if self._proc is None:
            return
        try:
            await asyncio.wait_for(self.exited.wait() if self._reader_task else self._proc.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):  # it exited meanwhile
                self._proc.kill()
            await self._proc.wait()
        if self._reader_task is not None:
            await asyncio.gather(self._reader_task, return_exceptions=True)
        self._remove_scratch()
        await self._end_output()
        if self._removal is not None:
            await self._removal

    def _send(self, message: Message) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(encode(message))

    def _unread(self) -> int:
        return 0 if self._writer is None else self._writer.transport.get_write_buffer_size()

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while (line := await read_line(reader, MAX_CHILD_LINE_BYTES)) is not None:
                started = time.thread_time()
                message = decode_from_child(line)
                self._parse_cost.note(time.thread_time() - started)
                self._dispatch(message, len(line))
        except ProtocolError as exc:
            log.error("execution process broke the protocol", model=self.model, error=str(exc))
            self.kill(TaskError.failed(f"execution process failed: {exc}"), crash=True, cause="protocol")
        finally:
            await self._reap(reader)
            cause = describe_exit(self._proc.returncode if self._proc else None)
            exit_error = self._exit or ExecutionProcessExitError(
                TaskError.failed(f"execution process crashed ({cause})"), crash=True, cause=cause
            )
            self._exit = exit_error
            futures: list[asyncio.Future[Any]] = [*self._pending.values(), *self._probes.values()]
            for future in futures:
                if not future.done():
                    future.set_exception(exit_error)
            await self._egress.close()
            self.exited.set()
            self.on_exit(self)

    async def _end_stream_at_exit(self) -> None:
        """The process's exit ends its stream, though another process may hold the socket's other end (one
        it forked: the sandbox refuses fork, and this does not count on it): the reader then sees the end,
        and the process's tasks fail over as after any exit."""
        assert self._proc is not None
        await self._proc.wait()
        if self._writer is not None:
            self._writer.transport.abort()

    @property
    def exit_error(self) -> ExecutionProcessExitError | None:
        """Why the process exited; None while it runs."""
        return self._exit

    def _dispatch(self, message: Message, size: int = 0) -> None:
        if isinstance(message, TaskDelta):
            sink = self._delta_sinks.get(message.task_id)
            if sink is None:
                return self._stray(size)
            try:
                sink(message.text)
            except Exception:  # noqa: BLE001 - progress is best effort; the answer still comes
                log.exception("task delta not routed", task_id=message.task_id)
        elif isinstance(message, TaskDone | TaskFailed):
            future = self._pending.get(message.task_id)
            if future is None or future.done():
                return self._stray(size)
            future.set_result(message)
        elif isinstance(message, Pong):
            probe = self._probes.get(message.probe_id)
            if probe is None or probe.done():
                return self._stray(size)
            probe.set_result(message)
        elif isinstance(message, ToolFetch):
            # The task it names goes on the request's log lines only if it is one this process runs.
            if not self._egress.start(message, message.task_id if message.task_id in self._pending else ""):
                return self._stray(size)  # past its bounds: a stream of them ends the process
        elif isinstance(message, Measured):
            self._keep_speed(message, size)
        elif isinstance(message, Benchmarked) and self._speeds.takes_benchmark(message, self.ready, self.benchmarked):
            self.benchmarked = message
            self.on_benchmarked(self)
        else:
            raise ProtocolError(f"unexpected {type(message).__name__} message")
        return None

    def _keep_speed(self, message: Measured, size: int) -> None:
        if not self._speeds.offer(message, self.ready):
            self._stray(size)

    def _stray(self, size: int) -> None:
        """An answer nobody waits for, a line of `size` bytes: a stream of them ends the process (strays.py)."""
        self._strays.note(asyncio.get_running_loop().time(), size)

    async def _reap(self, reader: asyncio.StreamReader) -> None:
        """Wait for the process to end after its stream closed (kill it if it lingers)."""
        assert self._proc is not None
        if self._writer is not None:
            self._writer.close()
        try:
            await asyncio.wait_for(self._proc.wait(), 5.0)
        except TimeoutError:
            self._proc.kill()
            await self._proc.wait()
        self._remove_scratch()
        await self._end_output()

    def _remove_scratch(self) -> None:
        """Remove the scratch folder once the process has exited, beside what follows its exit (its tasks'
        errors, its restart): a process can leave a great many files there between two of the pool's checks."""
        scratch = self.scratch
        if scratch is not None and self._proc is not None and self._proc.returncode is not None:
            self.scratch = None
            self._removal = asyncio.create_task(scratch.remove_in_thread(), name=f"exec-{self.model}-scratch")

    async def _end_output(self) -> None:
        """Let the relay log what the process wrote before its exit (a crash's message), then end it."""
        if self._output is None:
            return
        await asyncio.wait({self._output}, timeout=OUTPUT_DRAIN_S)
        self._output.cancel()
        await asyncio.gather(self._output, return_exceptions=True)
