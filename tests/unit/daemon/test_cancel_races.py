"""A stop that lands as an awaited answer completes is honoured (Python 3.11's `asyncio.wait_for` returned the
answer instead and the cancel was lost): the execution process's first line at startup, and nvidia-smi's
output under `idle_only` (there the shutdown then waited for ever on the idle watch)."""

from __future__ import annotations

import asyncio
import types
from typing import Any

import pytest

import node.daemon.idle as idle
from node.daemon.idle import IdleWatch
from node.daemon.processes.handle import ExecutionProcess
from node.daemon.supervisor import Supervisor
from tests.support.spawned_child import SpawnedChild


async def test_a_stop_that_lands_as_the_execution_process_says_ready_stops_the_start() -> None:
    process = ExecutionProcess("m", {}, on_exit=lambda _: None)
    process._proc = SpawnedChild()  # type: ignore[assignment]
    process._reader = asyncio.StreamReader()
    starting = asyncio.ensure_future(process.start(60.0))
    await asyncio.sleep(0.01)  # start() waits for the child's first line

    def ready_and_stop() -> None:  # in one loop iteration: the line arrives and the node is told to stop
        assert process._reader is not None
        process._reader.feed_data(b'{"kind":"ready","model":"m","parallel":1}\n')
        starting.cancel()

    asyncio.get_running_loop().call_soon(ready_and_stop)
    with pytest.raises(asyncio.CancelledError):
        await starting  # it returned Ready: startup went on to probe it and load the next model
    if process._reader_task is not None:
        process._reader_task.cancel()
        await asyncio.gather(process._reader_task, return_exceptions=True)


class Machine:
    def machine(self) -> tuple[int, int]:
        return 0, 100

    def tree(self) -> tuple[set[int], int]:
        return {1}, 0


class Pause:
    def set_machine_busy(self, reason: str | None) -> None:
        pass


async def test_a_shutdown_that_lands_as_nvidia_smi_answers_ends_the_idle_watch(monkeypatch: pytest.MonkeyPatch) -> None:
    supervisor = Supervisor(lambda name, reason: None)
    settings = types.SimpleNamespace(idle_cpu_threshold=0.9, idle_gpu_threshold=0.5, idle_check_interval=0.05)
    watch = IdleWatch(Pause(), settings, sampler=Machine())  # type: ignore[arg-type]
    watch._nvidia_smi = "/usr/bin/nvidia-smi"  # as on a GPU machine
    stopping: list[asyncio.Future[Any]] = []

    class NvidiaSmi:
        async def communicate(self) -> tuple[bytes, None]:
            await asyncio.sleep(0.01)
            if not stopping:  # the shutdown begins as the output completes
                stopping.append(asyncio.ensure_future(supervisor.stop()))
            return b"0\n", None

        def kill(self) -> None:
            pass

        async def wait(self) -> int:
            return 0

    async def run_nvidia_smi(*args: Any, **kwargs: Any) -> NvidiaSmi:
        return NvidiaSmi()

    monkeypatch.setattr(idle.asyncio, "create_subprocess_exec", run_nvidia_smi)
    watching = supervisor.start("idle-watch", watch.run)
    while not stopping:
        await asyncio.sleep(0.005)
    done, _ = await asyncio.wait(stopping, timeout=2.0)
    if not done:  # clean up before failing
        watching.cancel()
        await asyncio.gather(watching, *stopping, return_exceptions=True)
    assert done, "the shutdown still waited for the idle watch after 2 s"
