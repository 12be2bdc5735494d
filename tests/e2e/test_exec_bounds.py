"""What an execution process holds beyond its RSS is bounded by the daemon: its scratch folder (files, files held
in no folder, mapped files), its threads, and no descriptor the daemon inherited reaches it.

Real nodes (in this test process, or the CLI's) with real execution processes on SmolLM2, the misbehaving
runtime of tests/support/exec_wrappers.py standing for a workflow that took the process over.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from node.daemon.processes import bounds
from tests.support.cluster import node_settings
from tests.support.exec_harness import alive, children, harness, misbehave
from tests.support.exec_wrappers import FILL_SCRATCH, HIDE_FILES, MAP_FILES, THREADS
from tests.support.nodeproc import NodeProcess

pytestmark = pytest.mark.slow


@pytest.fixture
def wrapped(monkeypatch: pytest.MonkeyPatch) -> None:
    misbehave(monkeypatch)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "marker", [FILL_SCRATCH, HIDE_FILES, MAP_FILES], ids=["files", "files-in-no-folder", "mapped-files-in-no-folder"]
)
async def test_a_process_that_fills_its_scratch_folder_is_killed_and_the_folder_removed(
    tmp_path: Path, wrapped: None, marker: str
) -> None:
    """The scratch folder is the one a process may write; past exec_scratch_mb (with what it holds open in no
    folder: files it removed, memfds) the daemon kills it, removes what it wrote, and the model serves again
    from a new, empty folder."""
    async with harness(node_settings(tmp_path, exec_scratch_mb=8)) as h:
        first = h.process().scratch.path
        assert first.parent == tmp_path / "scratch" and os.listdir(first) == []
        fill_id = await h.submit(f"{marker} now", timeout=120)
        pid = await h.running(1)
        reason = await h.failure(fill_id)  # killed past the bound, ran once more, killed again: poison
        assert reason.startswith("Invalid prompt: ") and "scratch" in reason
        assert h.crashes("scratch") == 2
        assert not alive(pid)
        await h.until(lambda: not first.exists())  # removed beside the restart
        await h.until(lambda: h.process() is not None and h.process().pid != pid and h.process().ready is not None)
        result = await h.wait(await h.submit("Say hello.", timeout=60, max_tokens=16))
        assert result.text.strip()
        folders = os.listdir(tmp_path / "scratch")
        assert folders == [h.process().scratch.path.name]  # the killed ones' are gone
        assert os.listdir(h.process().scratch.path) == []
    assert os.listdir(tmp_path / "scratch") == []  # and the last one's at the stop


@pytest.mark.asyncio
async def test_a_process_that_starts_threads_without_end_is_killed(
    tmp_path: Path, wrapped: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each thread holds kernel memory its RSS does not count, and counts against the user's process limit."""
    monkeypatch.setattr(bounds, "MAX_THREADS", 300)  # the test's hog stops at its first kill; 1024 in a node
    async with harness(node_settings(tmp_path)) as h:
        honest = bounds.thread_count(h.process().pid)
        assert 1 < honest < 300
        threads_id = await h.submit(f"{THREADS} now", timeout=120)
        pid = await h.running(1)
        reason = await h.failure(threads_id)  # killed past the bound, ran once more, killed again: poison
        assert reason.startswith("Invalid prompt: ") and "thread" in reason
        assert h.crashes("threads") == 2
        assert not alive(pid)
        await h.until(lambda: h.process() is not None and h.process().pid != pid and h.process().ready is not None)
        result = await h.wait(await h.submit("Say hello.", timeout=60, max_tokens=16))
        assert result.text.strip()


def test_a_descriptor_the_daemon_inherited_does_not_reach_its_execution_process(tmp_path: Path) -> None:
    """The daemon's event loop (uvloop) spawns without closing what the daemon inherited open (from a supervisor
    or a shell); the sandbox checks files when they are opened, so such a descriptor would pass it by."""
    inherited = tmp_path / "a-supervisors-file"
    fd = os.open(inherited, os.O_RDWR | os.O_CREAT, 0o600)
    os.set_inheritable(fd, True)
    try:
        node = NodeProcess(tmp_path / "node", pass_fds=(fd,))
    finally:
        os.close(fd)
    try:
        child = children(node.proc.pid)[0]

        def open_files(pid: int) -> set[str]:
            return {os.readlink(entry.path) for entry in os.scandir(f"/proc/{pid}/fd")}

        assert str(inherited) in open_files(node.proc.pid)  # the daemon has it...
        assert str(inherited) not in open_files(child)  # ...its execution process does not
    finally:
        node.stop()
