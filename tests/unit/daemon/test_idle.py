"""idle_only's measure: the CPU of other processes, from /proc, with real busy loops."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from config.settings import Settings
from node.daemon.idle import CpuSampler, IdleWatch
from node.daemon.pause import PauseState

BUSY_LOOP = [sys.executable, "-c", "while True: pass"]


def test_own_tree_holds_children_and_their_cpu() -> None:
    busy = subprocess.Popen(BUSY_LOOP)
    try:
        sampler = CpuSampler(os.getpid())
        _, before = sampler.tree()
        time.sleep(1.5)
        pids, after = sampler.tree()
        assert busy.pid in pids
        assert after - before >= 10  # ticks (1/100 s): the busy child ran at least 0.1 s
        busy_alone, _ = CpuSampler(busy.pid).tree()
        assert os.getpid() not in busy_alone
    finally:
        busy.kill()
        busy.wait()


async def test_busy_loops_outside_the_tree_pause_and_inside_do_not(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, idle_only=True, idle_cpu_threshold=0.05, idle_check_interval=1.5)
    busy = subprocess.Popen(BUSY_LOOP)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        # Rooted at an idle process, the busy loop is someone else's load.
        elsewhere = IdleWatch(PauseState(tmp_path), settings, CpuSampler(sleeper.pid))
        reason = await elsewhere.measure()
        assert reason is not None and "other processes use" in reason
        # Rooted at the busy loop's parent, it is the node's own: counted out of "others".
        sampler = CpuSampler(os.getpid())
        busy0, total0 = sampler.machine()
        _, own0 = sampler.tree()
        time.sleep(1.5)
        busy1, total1 = sampler.machine()
        _, own1 = sampler.tree()
        assert own1 - own0 >= 10 and busy1 - busy0 >= own1 - own0 - 5
    finally:
        for proc in (busy, sleeper):
            proc.kill()
            proc.wait()
