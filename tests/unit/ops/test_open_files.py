"""The node raises its soft open-files limit to the hard one (at most 65,536) and never lowers it, in a
child process whose limits the test sets."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = """
import resource, sys
from node.ops.open_files import raise_open_files_limit
print(raise_open_files_limit(int(sys.argv[1])), *resource.getrlimit(resource.RLIMIT_NOFILE))
"""


def limits_after(soft: int, hard: int, wanted: int) -> list[int]:
    def set_limits() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(wanted)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        preexec_fn=set_limits,
        check=True,
    )
    return [int(value) for value in done.stdout.split()]


@pytest.mark.parametrize(
    ("soft", "hard", "wanted", "expected"),
    [
        (256, 8192, 65_536, [8192, 8192, 8192]),  # a shell's soft limit below what the system allows: raised to it
        (256, 8192, 4096, [4096, 4096, 8192]),  # at most what the node wants
        (6000, 8192, 4096, [6000, 6000, 8192]),  # never lowered
        (256, 256, 65_536, [256, 256, 256]),  # nothing to raise to: the launcher warns
    ],
)
def test_the_soft_limit_is_raised_to_the_hard_one(soft: int, hard: int, wanted: int, expected: list[int]) -> None:
    _, current_hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if current_hard != resource.RLIM_INFINITY and hard > current_hard:
        pytest.skip(f"this process may not raise its hard limit to {hard} (it is {current_hard})")
    assert limits_after(soft, hard, wanted) == expected
