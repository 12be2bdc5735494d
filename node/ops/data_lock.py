"""DataDirLock: one running node (or gateway) per data directory.

Two daemons on one data directory share its key, its journal and its ledger: the second's
start-up recovery would answer the first one's running tasks as interrupted, and both would
publish under one identity. So each takes an exclusive `flock` on `<data_dir>/<name>.lock`
before it opens anything there, and refuses to start while another holds it, naming that
process. A node and a gateway never share one: a directory that holds the other kind's lock file
is refused (both would sign with its `identity.key`, one peer id that cannot dial itself). The kernel drops the lock when its process ends, however it ends (a `kill -9`
leaves no stale lock), and the file stays. Commands that only read the data directory
(`compute-node ledger`, `nodes`, `identity`) take no lock; `pause` and `resume` ask `lock_holder` whether a
node runs there.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import IO


class DataDirLockedError(Exception):
    """This data directory cannot be held: another process holds its lock, or it cannot be used (the message says)."""


KINDS = ("node", "gateway")  # the daemons that lock a data directory, each by its own `<name>.lock`
MAX_TRIES = 8  # lock files removed under a starting process (each by a refused one) before it gives up


class DataDirLock:
    """An exclusive lock on a data directory, held from `acquire` until `release` (or the process ends)."""

    def __init__(self, data_dir: Path, name: str) -> None:
        self.path = Path(data_dir) / f"{name}.lock"
        self._name = name
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        """Take the lock; DataDirLockedError if another process holds it, or the directory is another kind's."""
        # A process that refuses removes the file it made (below): one that opened that file before it was removed
        # would lock a file no longer in the directory, so the lock is taken again on the file that is there.
        for _ in range(MAX_TRIES):
            if self._try_acquire():
                return
        raise DataDirLockedError(f"cannot lock the data directory {self.path.parent}: its lock file keeps changing")

    def _try_acquire(self) -> bool:
        """True once locked; False if the file locked was removed meanwhile (try again)."""
        self._refuse_other_kinds()
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            file, made = _open(self.path)
        except (NotADirectoryError, FileExistsError):  # the path, or one above it, is a file
            raise DataDirLockedError(f"the data directory {self.path.parent} is not a directory") from None
        except OSError as exc:
            raise DataDirLockedError(f"cannot use the data directory {self.path.parent}: {exc}") from exc
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holder = file.read().strip() or "unknown"
            file.close()
            raise DataDirLockedError(
                f"another {self._name} is running on the data directory {self.path.parent} (pid {holder}); "
                "stop it first, or give this one a data_dir of its own"
            ) from None
        except OSError as exc:
            file.close()
            raise DataDirLockedError(f"cannot lock the data directory {self.path.parent}: {exc}") from exc
        try:
            moved = not _is_at(file, self.path)
        except OSError as exc:
            file.close()
            raise DataDirLockedError(f"cannot use the data directory {self.path.parent}: {exc}") from exc
        if moved:
            file.close()
            return False
        try:
            # Again, now that ours is there: another kind started at the same instant checked before we made it,
            # so one of the two sees the other's file (or each sees it, and neither runs on a shared key).
            self._refuse_other_kinds()
        except DataDirLockedError:
            file.seek(0)
            # Ours, or one no process ever ran on (one that runs writes its pid; another that refused made it, and
            # we hold its lock): the directory stays the other kind's, and no such file may claim it later.
            if made or not file.read().strip():
                self.path.unlink(missing_ok=True)
            file.close()
            raise
        try:
            file.seek(0)
            file.truncate()
            file.write(f"{os.getpid()}\n")
            file.flush()
        except OSError as exc:  # a full disk: the lock's file cannot say who holds it
            with contextlib.suppress(OSError):  # its flush fails again; the descriptor is closed all the same
                file.close()
            raise DataDirLockedError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
        self._file = file
        return True

    def _refuse_other_kinds(self) -> None:
        """DataDirLockedError if the directory holds another kind's lock file."""
        for other in (kind for kind in KINDS if kind != self._name):
            if (self.path.parent / f"{other}.lock").exists():
                raise DataDirLockedError(
                    f"the data directory {self.path.parent} is a {other}'s (it holds {other}.lock): a {self._name} "
                    f"there would sign with the {other}'s key; give this {self._name} a data_dir of its own"
                )

    def release(self) -> None:
        """Release the lock (nothing if not held)."""
        if self._file is not None:
            self._file.close()  # closing the file drops the lock
            self._file = None

    def __enter__(self) -> DataDirLock:
        self.acquire()
        return self

    def __exit__(self, *_: object) -> None:
        self.release()


def lock_holder(data_dir: Path, name: str) -> str | None:
    """The pid its lock file names when a process holds `<data_dir>/<name>.lock` now, else None (also where the
    kernel's lock table cannot be read). Read from /proc/locks, not by trying the lock: a node starting at that
    instant would find it taken and refuse to start."""
    path = Path(data_dir) / f"{name}.lock"
    try:
        there = os.stat(path)
        with open("/proc/locks", encoding="ascii") as table:
            rows = table.read().splitlines()
        holder = path.read_text(encoding="ascii").strip() or "unknown"
    except (OSError, UnicodeDecodeError):
        return None
    return holder if flock_held(rows, there.st_dev, there.st_ino, holder) else None


def flock_held(rows: list[str], device: int, inode: int, holder: str) -> bool:
    """Whether /proc/locks' `rows` show a held (not awaited) flock on the file of `device` and `inode`.

    A row: "12: FLOCK  ADVISORY  WRITE 19565 fe:00:2245410 0 EOF"; a waiter's has "->" after its number. On btrfs
    stat's device is the subvolume's and /proc/locks' the filesystem's: there the inode and `holder`'s pid decide."""
    exact = f"{os.major(device):02x}:{os.minor(device):02x}:{inode}"
    for row in rows:
        fields = row.split()
        if (
            len(fields) >= 6
            and fields[1] == "FLOCK"
            and (fields[5] == exact or (fields[5].endswith(f":{inode}") and fields[4] == holder))
        ):
            return True
    return False


def _is_at(file: IO[str], path: Path) -> bool:
    """Whether the open file is still the one at `path` (not removed, nor replaced, since it was opened)."""
    try:
        there = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(file.fileno())
    return (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino)


def _open(path: Path) -> tuple[IO[str], bool]:
    """The lock file, open for reading and writing, and whether this call created it (only a file this process
    made is removed when it refuses: a file another process made, or opened, is not ours to remove)."""
    for _ in range(MAX_TRIES):
        try:
            return open(path, "x+", encoding="ascii"), True  # noqa: SIM115 - held open for as long as the lock
        except FileExistsError:
            pass
        try:
            return open(path, "r+", encoding="ascii"), False  # noqa: SIM115
        except FileNotFoundError:
            continue  # removed in between by a process that refused: make it
    return open(path, "a+", encoding="ascii"), False  # noqa: SIM115 - e.g. a dangling symlink: as before
