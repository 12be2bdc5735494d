"""Execution processes' scratch folders (node/daemon/processes/scratch.py): measured without following links,
bounded in entries, removed without following links, and a killed daemon's removed at the next start."""

from __future__ import annotations

import json
import mmap
import os
import resource
from collections.abc import Callable
from pathlib import Path

import structlog

from node.daemon.processes.scratch import (
    SCRATCH_MAX_DEPTH,
    Scratch,
    remove_stale,
    remove_tree,
    unlinked_files,
    unlinked_mappings,
)

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


def test_files_held_open_in_no_folder_count_with_the_folder(tmp_path: Path) -> None:
    """Written, then removed while open, a file takes its space until closed, and no walk finds it; so does a
    memfd's memory."""
    scratch = Scratch.make(tmp_path)
    (scratch.path / "seen.bin").write_bytes(os.urandom(MIB))
    before = unlinked_files(os.getpid()).bytes
    hidden = os.open(scratch.path / "hidden.bin", os.O_RDWR | os.O_CREAT)
    memory = os.memfd_create("hidden")
    try:
        os.write(hidden, os.urandom(2 * MIB))
        os.unlink(scratch.path / "hidden.bin")
        os.write(memory, os.urandom(2 * MIB))
        assert scratch.usage().bytes < 2 * MIB  # the walk sees only seen.bin
        assert unlinked_files(os.getpid()).bytes - before >= 4 * MIB
        assert scratch.overflow(4 * MIB, os.getpid()) is not None
        assert scratch.overflow(4 * MIB) is None  # without the process's descriptors
    finally:
        os.close(hidden)
        os.close(memory)
    assert unlinked_files(os.getpid()).bytes == before


def test_past_the_descriptor_bound_the_count_stops_and_says_so() -> None:
    held = unlinked_files(os.getpid(), max_files=3)
    assert held.unmeasured == "more than 3 open files" and held.entries == 4
    assert unlinked_files(2**22 + 7).unmeasured is None  # no such process: nothing held


def test_a_file_held_only_by_a_mapping_counts_and_so_does_a_mapped_memfd(tmp_path: Path) -> None:
    """Mapped, then closed and removed, a file keeps its blocks while mapped (and MADV_PAGEOUT takes its pages out
    of the RSS); a memfd mapped and closed likewise. A removed library elsewhere is not the process's to count."""
    scratch = Scratch.make(tmp_path)
    with open(scratch.path / "mapped.bin", "w+b") as file:
        file.write(os.urandom(2 * MIB))
        file.flush()
        mapped = mmap.mmap(file.fileno(), 2 * MIB)
    os.unlink(scratch.path / "mapped.bin")
    memory = os.memfd_create("mapped")
    os.write(memory, os.urandom(MIB))
    mapped_memory = mmap.mmap(memory, MIB)
    os.close(memory)
    elsewhere = tmp_path / "elsewhere.bin"
    elsewhere.write_bytes(os.urandom(MIB))
    with open(elsewhere, "r+b") as file:
        mapped_elsewhere = mmap.mmap(file.fileno(), MIB)
    elsewhere.unlink()
    try:
        held = unlinked_mappings(os.getpid(), scratch.path)
        assert held.entries == 2 and held.bytes == 3 * MIB
        assert scratch.usage().bytes == 0 and scratch.overflow(2 * MIB) is None  # no walk finds them
        assert scratch.overflow(2 * MIB, os.getpid()) is not None  # with this process's mappings
        assert (
            unlinked_mappings(os.getpid(), scratch.path, max_read=1024).unmeasured
            == "more than 0 MiB of memory mappings"
        )
    finally:
        for mapping in (mapped, mapped_memory, mapped_elsewhere):
            mapping.close()
    assert unlinked_mappings(os.getpid(), scratch.path).bytes == 0
