"""idle_only: pause the node while other processes keep the machine busy.

The CPU others use is the machine's busy time (/proc/stat) minus this node's own
process tree (the daemon and its execution processes, from /proc/<pid>/stat), as a
share of all CPUs over `idle_check_interval`. Where `nvidia-smi` exists, a GPU
busier than `idle_gpu_threshold` with a compute process outside this tree counts too.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import structlog

from config.settings import Settings
from node.daemon.pause import PauseState

log = structlog.get_logger(__name__)

PROC = Path("/proc")
NVIDIA_SMI_TIMEOUT_S = 5.0


class CpuSampler:
    """Cumulative CPU ticks of the whole machine and of one process tree, from /proc."""

    def __init__(self, root_pid: int, proc: Path = PROC) -> None:
        self._root = root_pid
        self._proc = proc

    def machine(self) -> tuple[int, int]:
        """(busy, total) ticks of all CPUs since boot."""
        fields = (self._proc / "stat").read_text().splitlines()[0].split()[1:]
        ticks = [int(f) for f in fields[:8]]  # user nice system idle iowait irq softirq steal
        idle = ticks[3] + ticks[4]
        return sum(ticks) - idle, sum(ticks)

    def tree(self) -> tuple[set[int], int]:
        """(pids, user+system ticks) of the root process and all its descendants."""
        parents: dict[int, int] = {}
        times: dict[int, int] = {}
        for entry in self._proc.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                text = (entry / "stat").read_text()
            except OSError:
                continue  # it ended meanwhile
            rest = text[text.rfind(")") + 2 :].split()  # the command name may hold spaces and parentheses
            parents[int(entry.name)] = int(rest[1])
            times[int(entry.name)] = int(rest[11]) + int(rest[12])
        tree = {self._root}
        grew = True
        while grew:
            found = {pid for pid, ppid in parents.items() if ppid in tree and pid not in tree}
            tree |= found
            grew = bool(found)
        return tree, sum(times.get(pid, 0) for pid in tree)


class IdleWatch:
    """Samples the machine's load every interval and pauses or resumes the node for it."""

    def __init__(self, pause: PauseState, settings: Settings, sampler: CpuSampler | None = None) -> None:
        self._pause = pause
        self._cpu_threshold = settings.idle_cpu_threshold
        self._gpu_threshold = settings.idle_gpu_threshold
        self._interval = settings.idle_check_interval
        self._sampler = sampler or CpuSampler(os.getpid())
        self._nvidia_smi = shutil.which("nvidia-smi")

    async def run(self) -> None:
        """Measure and pause or resume, for as long as the node runs; /proc unreadable: no pause from it."""
        while True:
            try:
                busy = await self.measure()
            except (OSError, ValueError, IndexError) as exc:
                log.error("machine load not measured: idle_only cannot pause the node", error=str(exc))
                busy = None
                await asyncio.sleep(self._interval)
            self._pause.set_machine_busy(busy)

    async def measure(self) -> str | None:
        """Why the machine counts as busy over the next interval, or None when it is idle enough."""
        busy0, total0 = self._sampler.machine()
        _, own0 = self._sampler.tree()
        await asyncio.sleep(self._interval)
        busy1, total1 = self._sampler.machine()
        pids, own1 = self._sampler.tree()
        elapsed = max(1, total1 - total0)
        others = max(0, (busy1 - busy0) - max(0, own1 - own0)) / elapsed
        if others > self._cpu_threshold:
            return f"other processes use {others:.0%} of the CPUs (idle_cpu_threshold {self._cpu_threshold:.0%})"
        if self._nvidia_smi is not None:
            return await self._gpu_busy(pids)
        return None

    async def _gpu_busy(self, own: set[int]) -> str | None:
        apps = await self._query("--query-compute-apps=pid", "--format=csv,noheader,nounits")
        usage = await self._query("--query-gpu=utilization.gpu", "--format=csv,noheader,nounits")
        foreign = [line for line in apps if line.isdigit() and int(line) not in own]
        busiest = max((int(u) for u in usage if u.isdigit()), default=0) / 100
        if foreign and busiest > self._gpu_threshold:
            return f"other processes keep a GPU {busiest:.0%} busy (idle_gpu_threshold {self._gpu_threshold:.0%})"
        return None

    async def _query(self, *args: str) -> list[str]:
        assert self._nvidia_smi is not None
        proc = await asyncio.create_subprocess_exec(
            self._nvidia_smi, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
        )
        try:
            # Not wait_for: on Python 3.11 it swallows a cancel (the shutdown's) that lands as the output completes.
            async with asyncio.timeout(NVIDIA_SMI_TIMEOUT_S):
                out, _ = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            log.warning("nvidia-smi did not answer: GPU load not counted")
            return []
        return [line.strip() for line in out.decode(errors="replace").splitlines()]
