"""Execution processes' scratch folders (node/daemon/processes/scratch.py): measured without following links,
bounded in entries, removed without following links, and a killed daemon's removed at the next start."""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import resource
from collections.abc import Callable
from pathlib import Path

import structlog

from node.daemon.processes.bounds import held_in_no_folder
from node.daemon.processes.scratch import SCRATCH_MAX_DEPTH, Scratch, remove_stale, remove_tree

MIB = 1024 * 1024


def test_a_new_folder_is_private_named_for_this_daemon_and_empty(tmp_path: Path) -> None:
    scratch = Scratch.make(tmp_path / "scratch")
    assert scratch.path.parent == tmp_path / "scratch"
    assert scratch.path.name.startswith("exec-")
    assert scratch.path.stat().st_mode & 0o077 == 0 and (tmp_path / "scratch").stat().st_mode & 0o077 == 0
    assert scratch.usage().entries == 0 and scratch.overflow(MIB) is None
    assert Scratch.make(tmp_path / "scratch").path != scratch.path  # one per process


def test_usage_counts_what_is_written_at_any_depth(tmp_path: Path) -> None:
    scratch = Scratch.make(tmp_path)
    (scratch.path / "a" / "b").mkdir(parents=True)
    (scratch.path / "a" / "b" / "deep.bin").write_bytes(os.urandom(3 * MIB))
    (scratch.path / "top.bin").write_bytes(os.urandom(MIB))
    usage = scratch.usage()
    assert usage.entries == 4
    assert 4 * MIB <= usage.bytes < 5 * MIB
    assert scratch.overflow(8 * MIB) is None
    assert scratch.overflow(2 * MIB) == "4 MiB > 2 MiB"


def test_a_sparse_file_counts_what_it_fills(tmp_path: Path) -> None:
    scratch = Scratch.make(tmp_path)
    with open(scratch.path / "sparse", "wb") as sparse:
        sparse.truncate(1024 * MIB)  # no disk space taken
    assert scratch.overflow(MIB) is None


def test_past_the_entry_bound_the_walk_stops_and_says_so(tmp_path: Path) -> None:
    scratch = Scratch.make(tmp_path)
    for index in range(40):
        (scratch.path / str(index)).mkdir()
    assert scratch.usage(max_entries=10).entries == 11  # one past the bound: the walk stopped there
    assert scratch.overflow(MIB, max_entries=10) == "more than 10 files and folders"
    assert scratch.overflow(MIB, max_entries=40) is None


def _nest(top: Path, depth: int, name: str = "d") -> None:
    """Folders `depth` deep, each made relative to the last (the path grows past PATH_MAX)."""
    folder = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(depth):
        os.mkdir(name, dir_fd=folder)
        inner = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=folder)
        os.close(folder)
        folder = inner
    os.close(folder)


def test_folders_nested_past_the_bound_count_as_over_and_any_depth_is_removed(tmp_path: Path) -> None:
    """A process can nest folders past Python's recursion limit (shutil.rmtree's) and PATH_MAX in a moment."""
    scratch = Scratch.make(tmp_path)
    _nest(scratch.path, SCRATCH_MAX_DEPTH)
    assert scratch.overflow(MIB) is None
    (scratch.path / "deeper").mkdir()
    _nest(scratch.path / "deeper", SCRATCH_MAX_DEPTH)
    assert scratch.overflow(MIB) == f"folders nested past {SCRATCH_MAX_DEPTH}"
    _nest(scratch.path / "deeper", 3000, "e")
    scratch.remove()
    assert os.listdir(tmp_path) == []


def _walk_wide_with_few_descriptors() -> object:
    scratch = Scratch(Path("wide"))
    scratch.path.mkdir()
    for index in range(600):
        (scratch.path / str(index)).mkdir()
        (scratch.path / str(index) / "f").write_bytes(b"x" * 4096)
    resource.setrlimit(resource.RLIMIT_NOFILE, (48, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    usage = scratch.usage(max_entries=5000)
    remove_tree(scratch.path)
    return [usage.entries, usage.bytes >= 600 * 4096, usage.unmeasured, scratch.path.exists()]


def test_a_wide_tree_is_walked_and_removed_with_a_few_descriptors(tmp_path: Path) -> None:
    """The daemon's descriptors serve its connections: a walk holds one per level, never one per folder."""
    assert _as_an_unprivileged_owner(tmp_path, _walk_wide_with_few_descriptors) == [1200, True, None, False]


def test_a_link_out_of_the_folder_is_neither_measured_nor_followed_when_removed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "kept.bin").write_bytes(os.urandom(2 * MIB))
    scratch = Scratch.make(tmp_path / "scratch")
    (scratch.path / "folder-link").symlink_to(outside, target_is_directory=True)
    (scratch.path / "file-link").symlink_to(outside / "kept.bin")
    usage = scratch.usage()
    assert usage.entries == 2 and usage.bytes < MIB
    scratch.remove()
    assert not scratch.path.exists()
    assert (outside / "kept.bin").stat().st_size == 2 * MIB  # what the links led to is untouched


NOBODY = 65534


def _as_an_unprivileged_owner(folder: Path, work: Callable[[], object]) -> object:
    """`work`'s JSON result, run in `folder` by a forked process of an unprivileged user that owns the folder:
    the daemon's case (its execution processes run as its user, and file permissions bind them both); as
    root the fork takes the `nobody` uid, since root passes every permission check."""
    if os.getuid() == 0:
        os.chown(folder, NOBODY, NOBODY)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the forked process
        try:
            os.close(read)
            os.chdir(folder)  # relative paths from here: the folders above it stay root's
            if os.getuid() == 0:
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
            os.write(write, json.dumps(work()).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as answer:
        result = answer.read()
    os.waitpid(pid, 0)
    return json.loads(result)


def _hide_and_measure() -> object:
    """A process writes into a folder of its scratch, then takes the daemon's access to it away."""
    scratch = Scratch(Path("s"))
    (scratch.path / "hidden").mkdir(parents=True)
    (scratch.path / "hidden" / "fill.bin").write_bytes(os.urandom(2 * MIB))
    (scratch.path / "hidden").chmod(0o000)
    (scratch.path / "readable-only").mkdir()
    (scratch.path / "readable-only" / "f").write_text("x")
    (scratch.path / "readable-only").chmod(0o400)  # listed, but no entry in it can be looked at
    hidden = scratch.overflow(1024 * MIB)
    (scratch.path / "hidden").chmod(0o700)
    readable_only = scratch.overflow(1024 * MIB)
    scratch.path.chmod(0o000)
    top = scratch.overflow(1024 * MIB)
    remove_tree(scratch.path)
    return [hidden, readable_only, top, scratch.path.exists()]


def test_a_folder_the_daemon_may_not_read_counts_as_over_and_is_removed_all_the_same(tmp_path: Path) -> None:
    """A process owns its scratch folder and what is in it, so it can take the daemon's (the same user's) access
    to a folder away: what that holds cannot be measured, which is over the bound; removal gives access back."""
    hidden, readable_only, top, still_there = _as_an_unprivileged_owner(tmp_path, _hide_and_measure)  # type: ignore[misc]
    reason = "a folder the daemon may not read"
    assert [hidden, readable_only, top] == [reason, reason, reason]
    assert still_there is False
    assert os.listdir(tmp_path) == []


def test_removal_takes_everything_in_it(tmp_path: Path) -> None:
    scratch = Scratch.make(tmp_path)
    (scratch.path / "a" / "b").mkdir(parents=True)
    (scratch.path / "a" / "b" / "f").write_text("x")
    scratch.remove()
    assert not scratch.path.exists()
    scratch.remove()  # gone already: nothing to do


def test_a_killed_daemons_folders_are_removed_at_the_next_start_and_this_ones_kept(tmp_path: Path) -> None:
    """In a container every daemon is pid 1: the folders are told apart by which one the first process has."""
    root = tmp_path / "scratch"
    stale = Scratch.make(root)  # a killed daemon's, named as this one's are
    (stale.path / "inner").mkdir()
    mine = Scratch.make(root)  # the early process's, made before the pool starts
    (root / "stray-link").symlink_to(tmp_path)
    with structlog.testing.capture_logs() as logs:
        remove_stale(root, keep=mine.path)
    assert sorted(os.listdir(root)) == [mine.path.name]
    assert tmp_path.exists() and logs == []
    remove_stale(root)
    assert os.listdir(root) == []
    remove_stale(tmp_path / "none")  # no scratch folder yet: nothing to do


def _held(scratch: Scratch, per_file: int = 64 * MIB) -> int:
    return held_in_no_folder(os.getpid(), scratch.path, per_file).bytes


def test_files_held_open_in_no_folder_count_with_the_folder(tmp_path: Path) -> None:
    """Written, then removed while open, a file takes its space until closed, and no walk finds it; so does a
    memfd's memory."""
    scratch = Scratch.make(tmp_path)
    (scratch.path / "seen.bin").write_bytes(os.urandom(MIB))
    before = _held(scratch)
    hidden = os.open(scratch.path / "hidden.bin", os.O_RDWR | os.O_CREAT)
    memory = os.memfd_create("hidden")
    try:
        os.write(hidden, os.urandom(2 * MIB))
        os.unlink(scratch.path / "hidden.bin")
        os.write(memory, os.urandom(2 * MIB))
        again = os.dup(hidden)  # one file, however many descriptors
        assert scratch.usage().bytes < 2 * MIB  # the walk sees only seen.bin
        assert 4 * MIB <= _held(scratch) - before < 5 * MIB
        held = held_in_no_folder(os.getpid(), scratch.path, 64 * MIB)
        assert scratch.overflow(4 * MIB, held) is not None
        assert scratch.overflow(4 * MIB) is None  # the folder alone
        os.close(again)
    finally:
        os.close(hidden)
        os.close(memory)
    assert _held(scratch) == before


def _map_one_page(path: Path) -> int:
    """Map a page of `path` as native code would (mmap.mmap keeps a descriptor of its own), then close it: the
    mapping alone holds the file. Its address."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    fd = os.open(path, os.O_RDONLY)
    try:
        address = libc.mmap(None, mmap.PAGESIZE, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    finally:
        os.close(fd)
    assert address not in (None, ctypes.c_void_p(-1).value)
    return int(address)


def _unmap(address: int) -> None:
    libc = ctypes.CDLL(None)
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    assert libc.munmap(address, mmap.PAGESIZE) == 0


def test_a_file_held_only_by_a_mapping_counts_at_its_size_bound_and_once(tmp_path: Path) -> None:
    """Mapped (a single page is enough), then closed and removed, a file keeps its blocks, which the daemon cannot
    read: it counts at the bound of a file's size. A memfd mapped and still open counts its blocks, once. A
    removed file elsewhere (a library upgraded under a running process) is not the process's."""
    scratch = Scratch.make(tmp_path)
    before = _held(scratch)
    (scratch.path / "mapped.bin").write_bytes(os.urandom(2 * MIB))
    one_page = _map_one_page(scratch.path / "mapped.bin")
    os.unlink(scratch.path / "mapped.bin")
    memory = os.memfd_create("mapped")
    os.write(memory, os.urandom(MIB))
    mapped_memory = mmap.mmap(memory, MIB)  # open and mapped: counted once, at its blocks
    (tmp_path / "elsewhere.bin").write_bytes(os.urandom(MIB))
    elsewhere = _map_one_page(tmp_path / "elsewhere.bin")
    (tmp_path / "elsewhere.bin").unlink()
    try:
        assert scratch.usage().bytes == 0
        assert 65 * MIB <= _held(scratch, per_file=64 * MIB) - before < 66 * MIB
        assert held_in_no_folder(os.getpid(), scratch.path, MIB, max_read=1024).unmeasured == (
            "more than 0 MiB of memory mappings"
        )
    finally:
        _unmap(one_page)
        _unmap(elsewhere)
        mapped_memory.close()
        os.close(memory)
    assert _held(scratch) == before


def test_past_the_descriptor_bound_the_count_stops_and_says_so() -> None:
    assert held_in_no_folder(2**22 + 7, Path("/nowhere"), MIB).unmeasured is None  # no such process: nothing held
