"""What the pool bounds of a running execution process besides its RSS, read from /proc and its scratch folder.

- Threads (MAX_THREADS): each holds kernel memory no limit of the process counts, and counts against the node
  user's process limit and the service's (systemd's TasksMax), which the daemon needs to start a thread or a
  process again.
- Its scratch folder with what it holds in no folder (`held_in_no_folder`), against `exec_scratch_mb`.
- Its main thread alive while others run: a main thread that exits alone leaves /proc/<pid>'s memory, descriptor
  and mapping files empty, and every other bound blind.

`breach` reads them all, off the event loop (pool.py runs it in a thread): a process can make each read cost
milliseconds (a folder of many entries, thousands of descriptors or mappings), never more, as each is bounded.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from node.daemon.processes.scratch import Scratch, ScratchUsage
from node.execution.protocol import MAX_OPEN_FILES

MIB = 1024 * 1024
# An honest process runs its model's threads, the decode loop's, a few for tools: ~50 at 32 model threads. Two
# models at the bound stay within systemd's default TasksMax (15 % of the kernel's: 4,915 where it is 32,768).
MAX_THREADS = 1024
MAX_MAPS_BYTES = 4 * MIB  # of /proc/<pid>/maps: an honest process's is ~40 KiB (~300 mappings)
EXIT_SETTLE_S = 0.2  # a process that exits whole shows its main thread gone and others not yet, this long at most


@dataclass(frozen=True)
class Breach:
    """A bound the process is past: `cause` for the crash metrics, `reason` for its tasks and the log."""

    cause: str
    reason: str


def breach(pid: int, scratch: Scratch | None, scratch_limit_mb: int) -> Breach | None:
    """The first bound process `pid` is past, or None (blocks up to EXIT_SETTLE_S: run it in a thread)."""
    state, threads = _state(pid)
    if state in (b"Z", b"X") and threads > 1:
        time.sleep(EXIT_SETTLE_S)  # a whole process's exit passes through this too, for a moment
        state, threads = _state(pid)
        if state in (b"Z", b"X") and threads > 1:
            return Breach("hidden", "execution process's main thread exited while its other threads ran")
    if threads > MAX_THREADS:
        return Breach("threads", f"execution process exceeded its thread limit ({threads} > {MAX_THREADS})")
    if scratch is not None:
        held = held_in_no_folder(pid, scratch.path, scratch_limit_mb * MIB)
        if (overflow := scratch.overflow(scratch_limit_mb * MIB, held)) is not None:
            return Breach("scratch", f"execution process exceeded its scratch limit ({overflow})")
    return None


def held_in_no_folder(pid: int, folder: Path, per_file: int, max_read: int = MAX_MAPS_BYTES) -> ScratchUsage:
    """The files process `pid` holds in no folder (written, then removed while open or mapped; O_TMPFILE;
    memfd_create): they take disk or memory until it lets go, and no walk finds them. One held open counts
    its blocks; one held by a mapping alone, from `folder` or a memfd, counts `per_file` (its size's bound,
    RLIMIT_FSIZE: the daemon cannot read its blocks), as the mapping may be a single page of it. Each file
    counts once, by device and inode."""
    size, seen = 0, set()
    try:
        with os.scandir(f"/proc/{pid}/fd") as listing:
            for count, entry in enumerate(listing, 1):
                if count > MAX_OPEN_FILES:  # past its RLIMIT_NOFILE: not a descriptor table of its own
                    return ScratchUsage(size, count, f"more than {MAX_OPEN_FILES} open files")
                try:
                    status = os.stat(entry.path)  # the open file itself, wherever it is
                except OSError:
                    continue  # closed meanwhile
                if stat.S_ISREG(status.st_mode) and status.st_nlink == 0 and (key := _key(status)) not in seen:
                    seen.add(key)
                    size += status.st_blocks * 512
        with open(f"/proc/{pid}/maps", "rb") as maps:
            text = maps.read(max_read + 1)
    except PermissionError:  # it made itself undumpable: /proc/<pid>/fd and maps are root's then
        return ScratchUsage(size, len(seen), "open files or mappings the daemon may not read")
    except OSError:
        return ScratchUsage(size, len(seen))  # exited
    if len(text) > max_read:
        return ScratchUsage(size, len(seen), f"more than {max_read // MIB} MiB of memory mappings")
    if b" (deleted)" in text:
        inside = os.fsencode(folder) + b"/"
        for line in text.splitlines():
            fields = line.split(maxsplit=5)  # range, permissions, offset, device, inode, path
            if len(fields) == 6 and fields[5].endswith(b" (deleted)") and fields[5].startswith((inside, b"/memfd:")):
                major, _, minor = fields[3].partition(b":")
                if (key := (os.makedev(int(major, 16), int(minor, 16)), int(fields[4]))) not in seen:
                    seen.add(key)
                    size += per_file
    return ScratchUsage(size, len(seen))


def _key(status: os.stat_result) -> tuple[int, int]:
    return status.st_dev, status.st_ino


def _state(pid: int) -> tuple[bytes, int]:
    """The main thread's state letter and the thread count, from /proc (b"", 0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat_file:
            fields = stat_file.read().rpartition(b")")[2].split()  # after the command's name
        return fields[0], int(fields[17])
    except (OSError, IndexError, ValueError):
        return b"", 0


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
    state, threads = _state(pid)
    return threads if state else None
