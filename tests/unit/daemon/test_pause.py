"""Pause state: the operator's pause kept in the data dir; admission takes nothing while paused."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from node.daemon.admission import Admission, BusyError
from node.daemon.pause import PAUSE_FILE, PauseFileError, PauseState
from tests.unit.daemon.test_admission import Recorder, accepted


def test_operator_pause_survives_a_new_state_until_resumed(tmp_path: Path) -> None:
    state = PauseState(tmp_path)
    assert not state.paused
    view = state.pause()
    assert view.paused and view.operator and view.since is not None
    assert (tmp_path / PAUSE_FILE).exists()
    with capture_logs() as logs:
        again = PauseState(tmp_path)  # as after a restart: it says so (only /status did)
    assert [e["log_level"] for e in logs if e["event"].startswith("node paused by the operator")] == ["warning"]
    assert again.paused and again.view().reason == "operator"
    assert not again.resume().paused
    assert not (tmp_path / PAUSE_FILE).exists()
    assert not PauseState(tmp_path).paused


def test_a_damaged_pause_file_still_means_paused(tmp_path: Path) -> None:
    (tmp_path / PAUSE_FILE).write_text("{not json")
    assert PauseState(tmp_path).paused
    for since in ("1e20", "-1e20", "Infinity", "NaN"):  # a start that logs it must not fail on it (a reviewer's find)
        (tmp_path / PAUSE_FILE).write_text(f'{{"since": {since}}}')
        state = PauseState(tmp_path)
        assert state.paused and 0 < (state.view().since or 0) < 2**33  # /status writes it as JSON


def test_a_pause_file_of_bytes_that_are_no_text_still_means_paused(tmp_path: Path) -> None:
    (tmp_path / PAUSE_FILE).write_bytes(b"\xff\xfe\x00garbage")
    assert PauseState(tmp_path).paused  # it started (it raised UnicodeDecodeError), and paused


def test_a_pause_that_cannot_be_kept_says_so_and_leaves_nothing_behind(tmp_path: Path) -> None:
    (tmp_path / PAUSE_FILE).mkdir()  # os.replace onto it fails, as on a full disk the write does
    (tmp_path / PAUSE_FILE / "x").write_text("")
    state = PauseState(tmp_path)  # unreadable: paused, kept by no file of ours
    assert state.paused
    with pytest.raises(PauseFileError, match=f"cannot remove the pause file {tmp_path / PAUSE_FILE}"):
        state.resume()
    assert state.paused  # the file stays, so a start from here would be paused: not resumed in memory only
    (tmp_path / PAUSE_FILE / "x").unlink()
    (tmp_path / PAUSE_FILE).rmdir()
    fresh = PauseState(tmp_path)
    (tmp_path / PAUSE_FILE).mkdir()
    (tmp_path / PAUSE_FILE / "x").write_text("")
    with pytest.raises(PauseFileError, match=f"cannot write the pause file {tmp_path / PAUSE_FILE}"):
        fresh.pause()
    assert not fresh.paused and sorted(p.name for p in tmp_path.iterdir()) == [PAUSE_FILE]  # no paused.tmp left


def test_machine_busy_pauses_and_ends_by_itself_but_not_the_operators(tmp_path: Path) -> None:
    state = PauseState(tmp_path)
    state.set_machine_busy("other processes use 90% of the CPUs")
    assert state.paused and state.view().idle_only and not state.view().operator
    state.set_machine_busy(None)
    assert not state.paused
    state.pause()
    state.set_machine_busy(None)
    assert state.paused


async def test_paused_admission_has_no_free_capacity_and_finishes_what_it_has(tmp_path: Path) -> None:
    state = PauseState(tmp_path)
    rec = Recorder()
    admission = Admission(rec.run, rec.abandon, {"m": 2}, max_queue=1, paused=lambda: state.paused)
    admission.admit(accepted("a"))
    await asyncio.sleep(0.01)
    state.pause()
    assert admission.capacity() == (0, 3)
    assert not admission.would_admit("m")
    with pytest.raises(BusyError, match="busy: node is paused"):
        admission.admit(accepted("b"))
    rec.release.set()
    await asyncio.sleep(0.01)
    assert rec.finished == ["a"]
    state.resume()
    assert admission.capacity() == (3, 3)
