"""Each execution process's scratch folder: the one folder it may write, measured and removed by the daemon.

A confined process writes nowhere else: not /tmp, /var/tmp or /dev/shm, whose files outlive it and, where they
are tmpfs, hold memory that no limit of the process counts. Its folder is `<data_dir>/scratch/<daemon pid>-*`
(its TMPDIR, libffi's too). The pool measures it with the RSS (`usage`) and kills a process past
`exec_scratch_mb` or SCRATCH_MAX_ENTRIES entries; the process cannot grow a file past `exec_scratch_mb` either
(RLIMIT_FSIZE, node/execution/process.py). The folder is removed when its process has exited, and what a daemon
that was killed left is removed at the next start (`remove_stale`). Every walk and removal goes by file
descriptors and follows no link: the process owns what is inside.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

SCRATCH_MAX_ENTRIES = 1024  # files and folders, at any depth: an honest process keeps a few at most
_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class ScratchUsage:
    """What a scratch folder holds: bytes on disk (allocated blocks, so a sparse file counts what it fills)
    and entries, counted up to one past the bound (`entries > max_entries`: the walk stopped there), and
    whether a folder in it could not be read (its process took the daemon's access away: what it holds is
    hidden)."""

    bytes: int
    entries: int
    hidden: bool = False


class Scratch:
    """One process's scratch folder."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def make(cls, root: Path) -> Scratch:
        """A new, empty folder under `root` (made private if need be), named for this daemon."""
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        return cls(Path(tempfile.mkdtemp(dir=root, prefix=f"{os.getpid()}-")))

    def usage(self, max_entries: int = SCRATCH_MAX_ENTRIES) -> ScratchUsage:
        """Walk the folder (no link followed), stopping past `max_entries` entries."""
        try:
            folders = [os.open(self.path, _DIRECTORY_FLAGS)]
        except PermissionError:
            return ScratchUsage(0, 0, hidden=True)
        except OSError:
            return ScratchUsage(0, 0)  # gone
        size = entries = 0
        hidden = False
        try:
            while folders and entries <= max_entries and not hidden:
                folder = folders.pop()
                try:
                    with os.scandir(folder) as listing:
                        for entry in listing:
                            entries += 1
                            if entries > max_entries:
                                break
                            try:
                                status = entry.stat(follow_symlinks=False)
                                size += status.st_blocks * 512
                                if stat.S_ISDIR(status.st_mode):
                                    folders.append(os.open(entry.name, _DIRECTORY_FLAGS, dir_fd=folder))
                            except PermissionError:
                                hidden = True
                            except OSError:
                                continue  # removed or replaced meanwhile
                except PermissionError:
                    hidden = True
                except OSError:
                    continue
                finally:
                    os.close(folder)
        finally:
            for folder in folders:
                os.close(folder)
        return ScratchUsage(size, entries, hidden)

    def overflow(self, max_bytes: int, max_entries: int = SCRATCH_MAX_ENTRIES) -> str | None:
        """Why the folder holds too much (None: it does not)."""
        usage = self.usage(max_entries)
        if usage.hidden:
            return "a folder the daemon may not read"
        if usage.entries > max_entries:
            return f"more than {max_entries} files and folders"
        if usage.bytes > max_bytes:
            return f"{usage.bytes // (1024 * 1024)} MiB > {max_bytes // (1024 * 1024)} MiB"
        return None

    def remove(self) -> None:
        """Remove the folder and all in it (once its process has exited: nothing writes there any more)."""
        remove_tree(self.path)


def remove_stale(root: Path) -> None:
    """Remove the scratch folders under `root` that are not this daemon's (a killed daemon's leftovers; the
    data dir's lock says no other daemon uses them)."""
    try:
        names = os.listdir(root)
    except OSError:
        return  # none yet
    for name in names:
        if not name.startswith(f"{os.getpid()}-"):
            remove_tree(root / name)


def remove_tree(path: Path) -> None:
    """Remove a file, or a folder and everything in it, never following a link (a link is removed itself)."""
    try:
        if not path.is_dir() or path.is_symlink():
            path.unlink(missing_ok=True)
            return
        try:
            shutil.rmtree(path)  # by file descriptors: a link inside is removed, not followed
        except OSError:
            _make_removable(path)  # a process took its own access to a folder away
            shutil.rmtree(path)
    except OSError as exc:
        log.warning("folder not removed", path=str(path), error=str(exc))


def _make_removable(path: Path) -> None:
    """Give the owner every right on each folder of the tree, never through a link. The process that owned the
    tree has exited, so nothing replaces a folder by a link between the check and the change."""
    folders = [path]
    while folders:
        folder = folders.pop()
        try:
            if not stat.S_ISDIR(os.lstat(folder).st_mode):
                continue
            os.chmod(folder, 0o700)
            with os.scandir(folder) as listing:
                folders += [Path(entry.path) for entry in listing if entry.is_dir(follow_symlinks=False)]
        except OSError:
            continue
