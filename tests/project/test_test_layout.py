"""The tests' own layout rule (tests/README.md): every e2e test is `slow`, no unit test is."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _collected(folder: str, marker: str) -> list[str]:
    """Test ids pytest collects under `folder` with `-m marker`."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-m", marker, folder],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode in (0, 5), done.stdout + done.stderr  # 5: nothing collected
    return [line for line in done.stdout.splitlines() if "::" in line]


@pytest.mark.parametrize(("folder", "marker"), [("tests/e2e", "not slow"), ("tests/unit", "slow")])
def test_slow_marks_follow_the_folders(folder: str, marker: str) -> None:
    assert _collected(folder, marker) == []


def test_the_check_sees_tests() -> None:
    # The same collection does find tests, so an empty list above means what it says.
    assert len(_collected("tests/e2e", "slow")) > 20 and len(_collected("tests/unit", "not slow")) > 500
