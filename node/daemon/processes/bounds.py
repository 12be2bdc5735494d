"""What the pool bounds of a running execution process besides its RSS, read from /proc and its scratch folder.

- Threads (MAX_THREADS): each holds kernel memory no limit of the process counts, and counts against the node
  user's process limit and the service's (systemd's TasksMax), which the daemon needs to start a thread or a
  process again.
- Its scratch folder with what it holds in no folder (scratch.py), against `exec_scratch_mb`.

`breach` reads them all, off the event loop (pool.py runs it in a thread): a process can make each read cost
milliseconds (a folder of many entries, thousands of descriptors or mappings), never more, as each is bounded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from node.daemon.processes.scratch import Scratch

MIB = 1024 * 1024
# An honest process runs its model's threads, the decode loop's, a few for tools: ~50 at 32 model threads. Two
# models at the bound stay within systemd's default TasksMax (15 % of the kernel's: 4,915 where it is 32,768).
MAX_THREADS = 1024


@dataclass(frozen=True)
class Breach:
    """A bound the process is past: `cause` for the crash metrics, `reason` for its tasks and the log."""

    cause: str
    reason: str


def breach(pid: int, scratch: Scratch | None, scratch_limit_mb: int) -> Breach | None:
    """The first bound process `pid` is past, or None."""
    max_threads = MAX_THREADS
    threads = thread_count(pid)
    if threads is not None and threads > max_threads:
        return Breach("threads", f"execution process exceeded its thread limit ({threads} > {max_threads})")
    if scratch is not None and (overflow := scratch.overflow(scratch_limit_mb * MIB, pid)) is not None:
        return Breach("scratch", f"execution process exceeded its scratch limit ({overflow})")
    return None


def rss_bytes(pid: int | None) -> int | None:
    """Resident memory of process `pid`, from /proc (None once it is gone)."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return None


def thread_count(pid: int | None) -> int | None:
    """Threads of process `pid`, from /proc (None once it is gone)."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return int(stat.read().rpartition(b")")[2].split()[17])  # num_threads, after the command's name
    except (OSError, IndexError, ValueError):
        return None
