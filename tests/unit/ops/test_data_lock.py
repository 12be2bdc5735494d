"""DataDirLock: one process per data directory, named when another holds it; a killed holder leaves no lock."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from node.ops.data_lock import DataDirLock, DataDirLockedError, flock_held


def test_a_second_lock_on_a_data_dir_is_refused_until_the_first_is_released(tmp_path: Path) -> None:
    first = DataDirLock(tmp_path / "d", "node")
    first.acquire()
    with pytest.raises(DataDirLockedError, match=rf"another node is running on .* \(pid {os.getpid()}\)"):
        DataDirLock(tmp_path / "d", "node").acquire()
    first.release()
    with DataDirLock(tmp_path / "d", "node"):
        pass


@pytest.mark.parametrize("first, second", [("node", "gateway"), ("gateway", "node")])
def test_a_node_and_a_gateway_never_share_a_data_dir(tmp_path: Path, first: str, second: str) -> None:
    # Both would sign with its identity.key: one peer id, which cannot dial itself ("refusing to dial our own address").
    with DataDirLock(tmp_path, first):
        pass  # released: the lock file stays, and says whose directory it is
    with pytest.raises(DataDirLockedError, match=rf"is a {first}'s \(it holds {first}.lock\).* a data_dir of its own"):
        DataDirLock(tmp_path, second).acquire()
    with DataDirLock(tmp_path / second, second):  # the gateway's default is a directory inside the node's
        pass


@pytest.mark.parametrize("first, second", [("node", "gateway"), ("gateway", "node")])
def test_a_node_and_a_gateway_started_at_the_same_instant_do_not_both_run(
    tmp_path: Path, first: str, second: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `second` checked for the other's file before `first` made it, and `first` did before `second` made its own:
    # both ran, on one key.
    mkdir = Path.mkdir
    racing = DataDirLock(tmp_path, first)

    def first_starts_meanwhile(path: Path, *args: Any, **kwargs: Any) -> None:
        monkeypatch.setattr(Path, "mkdir", mkdir)
        racing.acquire()
        mkdir(path, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", first_starts_meanwhile)
    with pytest.raises(DataDirLockedError, match=rf"is a {first}'s"):
        DataDirLock(tmp_path, second).acquire()
    assert not (tmp_path / f"{second}.lock").exists()  # the directory stays the first's, after it stops too
    racing.release()
    with DataDirLock(tmp_path, first):
        pass


def test_an_empty_lock_file_another_refused_start_left_is_removed_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two nodes and a gateway at once: node A made node.lock and lost its lock to node B, which opened A's file and
    # then saw the gateway's: each refused, neither removed the file (A held no lock, B had not made it), and the
    # running gateway was refused its own directory at its next start.
    (tmp_path / "node.lock").touch()  # A's, empty: no process ever ran on it
    mkdir = Path.mkdir
    gateway = DataDirLock(tmp_path, "gateway")

    def gateway_starts_meanwhile(path: Path, *args: Any, **kwargs: Any) -> None:
        monkeypatch.setattr(Path, "mkdir", mkdir)
        (tmp_path / "node.lock").rename(tmp_path / "aside")  # so the gateway's checks pass, as they did
        gateway.acquire()
        (tmp_path / "aside").rename(tmp_path / "node.lock")
        mkdir(path, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", gateway_starts_meanwhile)
    with pytest.raises(DataDirLockedError, match="is a gateway's"):
        DataDirLock(tmp_path, "node").acquire()
    assert not (tmp_path / "node.lock").exists()
    gateway.release()
    with DataDirLock(tmp_path, "gateway"):  # its own directory still
        pass


def test_a_lock_file_removed_under_a_starting_process_is_made_again_and_locked_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A process that refuses removes the lock file it made; one that had opened that file just before locked a
    # file no longer in the directory and ran with no node.lock there: a later gateway started beside it.
    flock = fcntl.flock
    removed: list[Path] = []

    def removed_meanwhile(fd: int, operation: int) -> None:
        if not removed:  # a refused node removes the file this one opened, once
            removed.append(tmp_path / "node.lock")
            removed[0].unlink()
        flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", removed_meanwhile)
    with DataDirLock(tmp_path, "node") as lock:
        assert removed and (tmp_path / "node.lock").read_text().strip() == str(os.getpid())
        assert lock._file is not None and os.fstat(lock._file.fileno()).st_ino == (tmp_path / "node.lock").stat().st_ino
        monkeypatch.setattr(fcntl, "flock", flock)
        with pytest.raises(DataDirLockedError, match="is a node's"):
            DataDirLock(tmp_path, "gateway").acquire()


def test_a_holder_killed_with_sigkill_leaves_no_lock(tmp_path: Path) -> None:
    code = (
        "import sys, time; from pathlib import Path; from node.ops.data_lock import DataDirLock; "
        "lock = DataDirLock(Path(sys.argv[1]), 'node'); lock.acquire(); print('held', flush=True); time.sleep(60)"
    )
    root = Path(__file__).resolve().parents[3]
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True, cwd=root)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(DataDirLockedError, match=f"pid {holder.pid}"):
            DataDirLock(tmp_path, "node").acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with DataDirLock(tmp_path, "node"):
        pass


def test_a_data_dir_that_is_a_file_is_named_as_such(tmp_path: Path) -> None:
    a_file = tmp_path / "data"
    a_file.write_text("not a directory")
    with pytest.raises(DataDirLockedError, match=f"the data directory {a_file} is not a directory"):
        DataDirLock(a_file, "node").acquire()


def test_a_lock_file_that_cannot_be_written_is_named_with_its_cause(tmp_path: Path) -> None:
    """A full disk at start: the pid cannot be written into the lock file. RLIMIT_FSIZE 0 makes every write fail
    (EFBIG) as ENOSPC does, in a child process, without a disk to fill."""
    script = (
        "import resource, signal, sys\n"
        "from pathlib import Path\n"
        "from node.ops.data_lock import DataDirLock, DataDirLockedError\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))\n"
        "try:\n"
        "    DataDirLock(Path(sys.argv[1]), 'node').acquire()\n"
        "except DataDirLockedError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"cannot write {tmp_path / 'node.lock'}: File too large"


# /proc/locks as this machine wrote it (ext4 on fe:00) with rows for a btrfs subvolume's file, whose stat device
# (0:43 here) is not the filesystem's the kernel names (00:2d), a waiter's row, and other kinds of lock.
PROC_LOCKS = [
    "1: FLOCK  ADVISORY  WRITE 19565 fe:00:2245410 0 EOF",
    "1: -> FLOCK  ADVISORY  WRITE 20001 fe:00:2245410 0 EOF",
    "2: POSIX  ADVISORY  WRITE 311 fe:00:777 0 EOF",
    "3: FLOCK  ADVISORY  WRITE 4242 00:2d:263 0 EOF",
    "4: OFDLCK ADVISORY  READ  -1 fe:00:999 0 EOF",
]


def test_the_lock_table_is_read_for_held_flocks_on_the_file_alone() -> None:
    ext4 = os.makedev(0xFE, 0)
    assert flock_held(PROC_LOCKS, ext4, 2245410, "19565")
    assert flock_held(PROC_LOCKS, ext4, 2245410, "unknown")  # the device and inode are enough
    assert not flock_held(PROC_LOCKS, ext4, 777, "311")  # a POSIX lock: not ours
    assert not flock_held(PROC_LOCKS, ext4, 999, "-1")
    assert not flock_held(PROC_LOCKS[1:], ext4, 2245410, "20001")  # only waiting for it
    btrfs_subvolume = os.makedev(0, 0x43)
    assert flock_held(PROC_LOCKS, btrfs_subvolume, 263, "4242")  # the inode, and the pid the lock file names
    assert not flock_held(PROC_LOCKS, btrfs_subvolume, 263, "4243")
    assert not flock_held(PROC_LOCKS, btrfs_subvolume, 26, "4242")
