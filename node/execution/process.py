"""The execution process: one model's runtime and the workflow engine, behind the IPC boundary.

Started by the daemon as `python -m node.execution --fd N` (a clean interpreter, never a fork of
the threaded daemon; the launcher, __main__.py, confines it first: sandbox.py), with one end of a
socketpair as fd N. It reads `configure`, applies the operator's memory limit, loads and
benchmarks the model, derives the limits left unset (memory_limits.py, from the GGUF
header the load read), answers
`ready` with its RSS limit (or `load_failed` and exits), then runs
tasks concurrently (task_host.py) until the daemon closes the socket. Its logs go to the
daemon's stderr. Anything that kills it (a signal, an abort in llama.cpp) costs
only this process: the daemon answers its tasks and starts a new one.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import importlib
import os
import resource
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from config.settings import Settings
from models.batching import BatchedLlamaModel
from models.benchmark import BenchmarkCache, BenchResult, ReportedSpeeds, SpeedStore, benchmark
from models.requests import ModelError
from node.execution.idle_benchmark import IdleBenchmark
from node.execution.memory_limits import MemoryLimits, memory_limits
from node.execution.model_setup import (
    PreparedModel,
    ServedModel,
    create_embedder,
    prepare_model,
    runtime_options,
)
from node.execution.protocol import (
    MAX_ERROR_CHARS,
    MAX_FRAME_BYTES,
    MAX_OPEN_FILES,
    MAX_STEP_SECONDS,
    MAX_TPS,
    Benchmarked,
    Cancel,
    Configure,
    LoadFailed,
    Measured,
    Message,
    Pong,
    Probe,
    Progress,
    Ready,
    RunTask,
    ToolFetched,
    decode_to_child,
    encode,
    read_line,
)
from node.execution.sandbox import SandboxOutcome
from node.execution.task_host import TaskHost
from node.execution.tool_channel import DaemonToolHttp
from node.execution.workflow_setup import engine_options
from node.ops.log import configure_logging

log = structlog.get_logger("node.execution")

# Test-only: "module:function" taking and returning the loaded model, to give tests a
# backend that misbehaves on purpose (spins, allocates, crashes). Unset in production.
TEST_WRAPPER_ENV = "COMPUTE_NODE_TEST_EXEC_WRAPPER"


def die_with_the_daemon(daemon_pid: int) -> None:
    """SIGKILL this process when the daemon dies, even if a runaway task holds its event loop.

    Orphaned means "re-parented away from `daemon_pid`", not "parent is 1": in a
    container the daemon itself is PID 1.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_PDEATHSIG = 1  # noqa: N806 - the Linux constant's name
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != daemon_pid:  # the daemon was already gone before prctl
        raise SystemExit(0)


def no_core_dumps() -> None:
    """No core file of this process: it would hold tasks' prompts and results and the operator's secrets
    (tool_secrets, search_api_key, engine keys), kept wherever the host's core_pattern puts it."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def leave_shutdown_signals_to_the_daemon() -> None:
    """Ignore SIGINT and SIGTERM: the daemon alone ends this process, after its drain.

    The process already runs in its own session; this also covers a signal sent to
    every process of the service (systemd's KillMode=control-group, `kill -- -PGID`
    of an old group).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def apply_memory_limit(limit_mb: int | None) -> None:
    """Cap this process's address space, so a runaway allocation fails here, not on the machine."""
    if limit_mb:
        limit = limit_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def apply_file_limits(limit_mb: int) -> None:
    """No file of this process grows past `limit_mb` (RLIMIT_FSIZE): a write past it fails (EFBIG), it does not
    kill the process (SIGXFSZ ignored); and it holds at most MAX_OPEN_FILES descriptors. The daemon bounds its
    scratch folder as a whole (node/daemon/processes/scratch.py)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    limit = limit_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # never infinite: the kernel caps it at fs.nr_open
    bound = min(hard, MAX_OPEN_FILES)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, bound), bound))


async def serve(fd: int, sandbox: SandboxOutcome) -> int:
    """Configure, load, serve until the daemon closes the socket; the process's exit code."""
    reader, writer = await asyncio.open_unix_connection(sock=socket.socket(fileno=fd), limit=MAX_FRAME_BYTES)

    def send(message: Message) -> None:
        if not writer.is_closing():
            writer.write(encode(message))

    line = await read_line(reader)
    if line is None:
        return 0
    configure = decode_to_child(line)
    if not isinstance(configure, Configure):
        raise SystemExit(f"execution process: expected configure first, got {configure.kind}")
    settings = Settings.model_validate(configure.settings)
    configure_logging(settings.log_level, "json")  # to the daemon, which logs each line again (child_output.py)
    name = configure.model
    if (refusal := _sandbox_refusal(name, settings, sandbox)) is not None:
        send(LoadFailed(model=name, error=refusal))
        await writer.drain()
        return 0
    apply_memory_limit(settings.exec_address_space_mb)  # the operator's: loading included
    apply_file_limits(settings.exec_scratch_mb)
    speeds = ReportedSpeeds(configure.speeds, lambda key, result: send(_measured(key, name, result)))
    try:
        loaded = await _load(name, settings, speeds)
    except (ModelError, OSError) as exc:
        send(LoadFailed(model=name, error=str(exc)[:MAX_ERROR_CHARS]))
        await writer.drain()
        return 0
    if settings.exec_address_space_mb is None:
        apply_memory_limit(loaded.limits.address_space_mb)  # derived: from what the loaded model maps
    http = DaemonToolHttp(send, settings.tool_timeout)
    host = TaskHost(loaded.model, loaded.embedder, configure.tools, engine_options(settings), send, http)
    prepared = loaded.prepared
    log.info("execution process ready", model=name, pid=os.getpid(), benchmark_later=prepared.benchmark_later)
    send(_ready(name, loaded, settings))
    benchmarking = None
    if prepared.benchmark_later and isinstance(prepared.model, BatchedLlamaModel):
        benchmarking = asyncio.create_task(
            benchmark_when_idle(host, prepared.model, settings, send, speeds), name="idle-benchmark"
        )
    try:
        await _answer_the_daemon(reader, writer, host, http, loaded.model, send)
    finally:
        if benchmarking is not None:
            benchmarking.cancel()
            await asyncio.gather(benchmarking, return_exceptions=True)
        await host.stop()
        await loaded.close()
    return 0


def _sandbox_refusal(name: str, settings: Settings, sandbox: SandboxOutcome) -> str | None:
    """Why the process may not load its model unconfined (None: it may); logs whether it is confined."""
    if not sandbox.confined and (sandbox.required or settings.sandbox == "on"):
        return f"sandbox = on, but the execution process is not confined: {sandbox.detail}"
    if sandbox.confined:
        log.info("execution process confined", model=name, sandbox=sandbox.detail)
    elif settings.sandbox != "off":
        log.warning("execution process not confined", model=name, sandbox=sandbox.detail)
    return None


@dataclass(frozen=True)
class _LoadedModel:
    """What `configure` loaded: the model as prepared and as served, its embedder, its memory limits."""

    prepared: PreparedModel
    model: Any  # the prepared model, through the test wrapper when one is set
    embedder: Any  # the model itself, unless another embedding model is set
    limits: MemoryLimits

    async def close(self) -> None:
        """Close the model and a separate embedder."""
        await self.model.close()
        if self.embedder is not self.model:
            await self.embedder.close()


async def _load(name: str, settings: Settings, speeds: ReportedSpeeds) -> _LoadedModel:
    """Load (and benchmark, unless cached or measured later) the model, its embedder; derive the memory limits."""
    prepared = await prepare_model(name, settings, speeds)
    model = _test_wrapper()(prepared.model)
    embedder: Any = model
    if settings.embedding_model and settings.embedding_model != name:
        embedder = await create_embedder(settings.embedding_model, settings)
    limits = memory_limits(settings, name, model.parallel, prepared.gguf_metadata)
    return _LoadedModel(prepared, model, embedder, limits)


def _ready(name: str, loaded: _LoadedModel, settings: Settings) -> Ready:
    """The `ready` answer: the model's parallel slots, its speed (or that it is measured later), its RSS limit."""
    prepared, parallel = loaded.prepared, loaded.model.parallel
    generation_tps, step = _speed(parallel, prepared.prompt_tps, prepared.generation_tps, settings)
    return Ready(
        model=name,
        parallel=parallel,
        generation_tps=generation_tps,
        max_rss_mb=loaded.limits.max_rss_mb,
        step_seconds=step,
        benchmark_later=prepared.benchmark_later,
        speed_key=prepared.speed_key,
    )


async def _answer_the_daemon(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    host: TaskHost,
    http: DaemonToolHttp,
    model: ServedModel,
    send: Callable[[Message], None],
) -> None:
    """Serve the daemon's messages until it closes the socket."""
    while (line := await read_line(reader)) is not None:
        message = decode_to_child(line)
        if isinstance(message, RunTask):
            host.start(message)
        elif isinstance(message, Cancel):
            host.cancel(message)
        elif isinstance(message, Probe):
            send(_pong(message, model))
        elif isinstance(message, ToolFetched):
            http.answer(message)
        await writer.drain()


async def benchmark_when_idle(
    host: TaskHost, model: BatchedLlamaModel, settings: Settings, send: Callable[[Message], None], speeds: SpeedStore
) -> None:
    """Measure the model's speed in idle time after `ready` and tell the daemon (`benchmarked`; the clean figure
    also as `measured`, which the daemon caches if no task came to this process before it)."""
    cache = BenchmarkCache(speeds)

    def report(result: BenchResult, provisional: bool) -> None:
        generation_tps, step = _speed(model.parallel, result.prompt_tps, result.generation_tps, settings)
        if generation_tps is not None:
            send(
                Benchmarked(model=model.name, generation_tps=generation_tps, step_seconds=step, provisional=provisional)
            )

    def keep(result: BenchResult) -> None:
        cache.put(model, result)  # reported to the daemon (`measured`), which decides whether it is kept
        log.info("model measured after ready", model=model.name, interruptions=idle_benchmark.interruptions)

    idle_benchmark = IdleBenchmark(model.name, lambda: benchmark(model), host.idle, report, keep)
    host.on_task_start = idle_benchmark.task_started
    try:
        await idle_benchmark.run()
    except ModelError as exc:
        log.warning("model not benchmarked", model=model.name, error=str(exc))
    except Exception:  # noqa: BLE001 - the model still serves, unadvertised speed and all
        log.exception("model not benchmarked", model=model.name)
    finally:
        host.on_task_start = None


def _speed(
    parallel: int, prompt_tps: float | None, generation_tps: float | None, settings: Settings
) -> tuple[float | None, float | None]:
    """(generation tokens/s, seconds of one full batch step) as `ready` and `benchmarked` carry them, within
    their bounds (a remote engine's own timings can claim any speed); (None, None) when nothing was measured.

    A full batch step is a prompt chunk of n_batch tokens plus one generated token per slot."""
    if not generation_tps or not prompt_tps:
        return None, None
    step = runtime_options(settings).n_batch / prompt_tps + parallel / generation_tps
    return min(max(round(generation_tps, 1), 0.1), MAX_TPS), min(step, MAX_STEP_SECONDS)


def _measured(key: str, model: str, result: BenchResult) -> Measured:
    """A measured speed as the daemon caches it (a remote engine's timings may claim past MAX_TPS)."""
    return Measured(
        key=key,
        model=model,
        prompt_tps=min(result.prompt_tps, MAX_TPS),
        generation_tps=min(result.generation_tps, MAX_TPS),
        measured_at=result.measured_at,
    )


def _pong(probe: Probe, model: ServedModel) -> Pong:
    snapshot = model.progress()
    progress = None
    if snapshot is not None:
        progress = Progress(
            calls_done=snapshot.calls_done,
            busy=snapshot.busy,
            call=snapshot.call,
            task_ids=list(snapshot.owners),
            call_seconds=snapshot.call_seconds,
            call_tokens=snapshot.call_tokens,
            seconds_per_token=snapshot.seconds_per_token,
        )
    return Pong(probe_id=probe.probe_id, progress=progress)


def _test_wrapper() -> Callable[[Any], Any]:
    spec = os.environ.get(TEST_WRAPPER_ENV)
    if not spec:
        return lambda model: model
    module, _, function = spec.partition(":")
    wrapper: Callable[[Any], Any] = getattr(importlib.import_module(module), function)
    return wrapper


def main(argv: list[str] | None = None, sandbox: SandboxOutcome | None = None) -> int:
    """Serve the daemon on the socket `--fd` (`python -m node.execution` confines the process first and
    passes what it managed as `sandbox`)."""
    parser = argparse.ArgumentParser(prog="python -m node.execution")
    parser.add_argument("--fd", type=int, required=True, help="this end of the daemon's socketpair")
    parser.add_argument("--parent-pid", type=int, required=True, help="the daemon's pid (orphan detection)")
    args = parser.parse_args(argv)
    leave_shutdown_signals_to_the_daemon()
    die_with_the_daemon(args.parent_pid)
    no_core_dumps()
    import uvloop

    return uvloop.run(serve(args.fd, sandbox or SandboxOutcome(False, "not confined (started without the launcher)")))


if __name__ == "__main__":
    raise SystemExit(main())
