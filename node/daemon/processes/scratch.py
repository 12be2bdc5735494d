"""Each execution process's scratch folder: the one folder it may write, measured and removed by the daemon.

A confined process writes nowhere else: not /tmp, /var/tmp or /dev/shm, whose files outlive it and, where they
are tmpfs, hold memory that no limit of the process counts. Its folder is `<data_dir>/scratch/exec-*` (its
TMPDIR, libffi's too). The pool measures it with the RSS (`overflow`, with the files the process holds in
no folder: bounds.py) and kills a process past `exec_scratch_mb` or SCRATCH_MAX_ENTRIES entries; the process
cannot grow a file past `exec_scratch_mb` either (RLIMIT_FSIZE, node/execution/process.py). The folder is removed when its process has exited, and what a daemon
that was killed left is removed at the next start (`remove_stale`). Every walk and removal goes by file
descriptors and follows no link: the process owns what is inside.
"""

from __future__ import annotations

import asyncio
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

SCRATCH_MAX_ENTRIES = 1024  # files and folders, at any depth: an honest process keeps a few at most
SCRATCH_MAX_DEPTH = 16  # folders in folders: an honest process makes none
_UNREADABLE = "a folder the daemon may not read"
_FOLDER = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# The walk's reads leave no access time for the process to watch for (it owns the folders, so do we).
_WALKED = _FOLDER | os.O_NOATIME
_PARENT = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC  # "..", which is no link


class ScratchError(OSError):
    """No scratch folder could be made; the message names where and why."""


@dataclass(frozen=True)
class ScratchUsage:
    """What a scratch folder holds: bytes on disk (allocated blocks, so a sparse file counts what it fills),
    entries counted up to one past the bound, and `unmeasured`: why the rest could not be measured (more
    entries than the bound, folders nested past SCRATCH_MAX_DEPTH, a folder the daemon may not read: its
    process owns it and can take the daemon's access away), or None."""

    bytes: int
    entries: int
    unmeasured: str | None = None


class Scratch:
    """One process's scratch folder."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def make(cls, root: Path) -> Scratch:
        """A new, empty folder under `root` (made private if need be); ScratchError naming `root` and the cause."""
        try:
            root.mkdir(mode=0o700, parents=True, exist_ok=True)
            return cls(Path(os.path.realpath(tempfile.mkdtemp(dir=root, prefix="exec-"))))  # as /proc names it
        except OSError as exc:  # a read-only or full data dir, `scratch` a file
            raise ScratchError(f"cannot make an execution process's scratch folder in {root}: {exc}") from exc

    def usage(self, max_entries: int = SCRATCH_MAX_ENTRIES) -> ScratchUsage:
        """Walk the folder, one descriptor per level and no link followed, stopping past `max_entries`."""
        try:
            folders = [os.open(self.path, _WALKED)]  # the open folders, from the top down to the one walked
        except PermissionError:
            return ScratchUsage(0, 0, _UNREADABLE)
        except OSError:
            return ScratchUsage(0, 0)  # gone
        pending: list[list[str]] = []  # per open folder, the folders in it not walked yet
        walked = ScratchUsage(0, 0)
        try:
            while True:
                walked, inner = _walk_one(folders[-1], walked, max_entries)
                if walked.unmeasured is not None:
                    return walked
                pending.append(inner)
                while True:  # the next folder to walk: down, or up and across
                    while not pending[-1]:
                        pending.pop()
                        os.close(folders.pop())
                        if not folders:
                            return walked
                    if len(folders) > SCRATCH_MAX_DEPTH:
                        return ScratchUsage(walked.bytes, walked.entries, f"folders nested past {SCRATCH_MAX_DEPTH}")
                    try:
                        folders.append(os.open(pending[-1].pop(), _WALKED, dir_fd=folders[-1]))
                        break
                    except PermissionError:
                        return ScratchUsage(walked.bytes, walked.entries, _UNREADABLE)
                    except OSError:
                        continue  # gone meanwhile (its process is at work)
        finally:
            for folder in folders:
                os.close(folder)

    def overflow(
        self, max_bytes: int, held: ScratchUsage | None = None, max_entries: int = SCRATCH_MAX_ENTRIES
    ) -> str | None:
        """Why the folder, with what its process `held` in no folder (bounds.py), holds too much (None: it
        does not)."""
        usage = self.usage(max_entries)
        held = held or ScratchUsage(0, 0)
        if (unmeasured := usage.unmeasured or held.unmeasured) is not None:
            return unmeasured
        if (size := usage.bytes + held.bytes) > max_bytes:
            return f"{size // (1024 * 1024)} MiB > {max_bytes // (1024 * 1024)} MiB"
        return None

    def remove(self) -> None:
        """Remove the folder and all in it (once its process has exited: nothing writes there any more)."""
        remove_tree(self.path)

    async def remove_in_thread(self) -> None:
        """`remove`, off the event loop: a process can leave a great many files between two checks."""
        try:
            await asyncio.to_thread(self.remove)
        except RuntimeError:  # no thread could start (the user's process limit): here, then
            self.remove()


def _walk_one(folder: int, walked: ScratchUsage, max_entries: int) -> tuple[ScratchUsage, list[str]]:
    """`walked` plus one folder's entries (not what its folders hold), and the names of its folders."""
    size, entries, inner = walked.bytes, walked.entries, []
    try:
        with os.scandir(folder) as listing:
            for entry in listing:
                entries += 1
                if entries > max_entries:
                    return ScratchUsage(size, entries, f"more than {max_entries} files and folders"), []
                try:
                    status = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # removed meanwhile
                size += status.st_blocks * 512
                if stat.S_ISDIR(status.st_mode):
                    inner.append(entry.name)
    except PermissionError:
        return ScratchUsage(size, entries, _UNREADABLE), []
    except OSError:
        pass  # gone meanwhile: what was listed counts
    return ScratchUsage(size, entries), inner


def remove_stale(root: Path, keep: Path | None = None) -> None:
    """Remove everything under `root` but `keep` (the first process's folder, made before the data dir was
    locked): a killed daemon's leftovers, since the data dir's lock says no other daemon uses them. (Not by a
    daemon's pid: in a container each daemon is pid 1.)"""
    try:
        names = os.listdir(root)
    except OSError:
        return  # none yet
    for name in names:
        if keep is None or os.path.realpath(root / name) != os.path.realpath(keep):  # data_dir may hold a link
            remove_tree(root / name)


def remove_tree(path: Path) -> None:
    """Remove a file, or a folder and everything in it, never following a link (a link is removed itself).

    Any depth (shutil.rmtree recurses, and a process can nest folders past Python's recursion limit in a
    fraction of a second) with one descriptor open at a time, and folders whose owner took its own rights
    away given them back: the process that owned the tree has exited, so nothing changes it meanwhile."""
    try:
        if not path.is_dir() or path.is_symlink():
            path.unlink(missing_ok=True)
            return
        _remove_folder(path)
    except OSError as exc:
        log.warning("folder not removed", path=str(path), error=str(exc))


def _remove_folder(path: Path) -> None:
    folder = _open_own_folder(str(path), None)
    names: list[str] = []  # the folders from `path` down to the open one
    pending: list[list[str]] = []  # per level, the folders in it not removed yet
    try:
        while True:
            inner = []
            with os.scandir(folder) as listing:
                for entry in listing:
                    if entry.is_dir(follow_symlinks=False):
                        inner.append(entry.name)
                    else:
                        os.unlink(entry.name, dir_fd=folder)
            pending.append(inner)
            while not pending[-1]:
                pending.pop()
                if not names:
                    break
                parent = os.open("..", _PARENT, dir_fd=folder)
                os.close(folder)
                folder = parent
                os.rmdir(names.pop(), dir_fd=folder)
            if not pending:
                break
            name = pending[-1].pop()
            inner_folder = _open_own_folder(name, folder)
            os.close(folder)
            folder = inner_folder
            names.append(name)
    finally:
        os.close(folder)
    os.rmdir(path)


def _open_own_folder(name: str, parent: int | None) -> int:
    """Open a folder of the tree, first giving its owner (this user) every right on it. The mode is changed on
    the folder opened (O_PATH needs no right on it), never through a name a link could have taken meanwhile."""
    handle = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    try:
        os.chmod(f"/proc/self/fd/{handle}", 0o700)  # files in it can be removed, folders in it listed
        return os.open(".", _FOLDER, dir_fd=handle)
    finally:
        os.close(handle)
