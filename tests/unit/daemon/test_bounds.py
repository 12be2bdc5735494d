"""What the pool bounds besides an execution process's RSS (node/daemon/processes/bounds.py), on real processes."""

from __future__ import annotations

import platform
import subprocess
import sys
import time
from pathlib import Path

from node.daemon.processes.bounds import breach, rss_bytes, thread_count
from node.daemon.processes.scratch import Scratch

# The main thread exits by itself (SYS_exit, not exit_group) while another thread runs on, holding the memory.
_MAIN_THREAD_EXITS = """
import ctypes, threading, time
held = bytearray(64 * 1024 * 1024)
threading.Thread(target=time.sleep, args=(60,)).start()
print("ready", flush=True)
ctypes.CDLL(None).syscall({number}, 0)
"""
_SYS_EXIT = {"x86_64": 60, "aarch64": 93}


def test_a_main_thread_that_exits_alone_is_a_breach(tmp_path: Path) -> None:
    """/proc/<pid>/statm, fd and maps read empty once the main thread is gone: every other bound goes blind."""
    code = _MAIN_THREAD_EXITS.format(number=_SYS_EXIT[platform.machine()])
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and process.stdout.readline() == "ready\n"
        deadline = time.monotonic() + 10
        while (found := breach(process.pid, Scratch.make(tmp_path), 256)) is None:
            assert time.monotonic() < deadline, "the main thread never exited"
            time.sleep(0.05)
        assert found.cause == "hidden" and "main thread exited" in found.reason
        assert rss_bytes(process.pid) == 0  # why: the RSS guard alone would see nothing
    finally:
        process.kill()
        process.wait()


def test_an_honest_process_is_within_every_bound(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stdout.readline() == "ready\n"
        assert breach(process.pid, Scratch.make(tmp_path), 1) is None
        assert thread_count(process.pid) == 1 and (rss_bytes(process.pid) or 0) > 0
    finally:
        process.kill()
        process.wait()
    assert breach(process.pid, None, 1) is None and thread_count(process.pid) is None  # gone
