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


def run_limited(script: str, argument: str, soft: int, hard: int) -> list[int]:
    """The numbers `script` prints, run in a child whose open-files limits are (soft, hard)."""

    def set_limits() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    done = subprocess.run(
        [sys.executable, "-c", script, argument],
        capture_output=True,
        text=True,
        cwd=ROOT,
        preexec_fn=set_limits,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return [int(value) for value in done.stdout.split()]


def limits_after(soft: int, hard: int, wanted: int) -> list[int]:
    return run_limited(SCRIPT, str(wanted), soft, hard)


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


GATEWAY_SCRIPT = """
import argparse, resource
import node.gateway.server
from node.cli.gateway import add_gateway_command, run_gateway

async def serve(settings):  # what the gateway's limit is once it serves
    print(*resource.getrlimit(resource.RLIMIT_NOFILE))

node.gateway.server.serve = serve
parser = argparse.ArgumentParser()
add_gateway_command(parser.add_subparsers())
run_gateway(parser.parse_args(["gateway", "--data-dir", __import__("sys").argv[1], "--peer", "/ip4/127.0.0.1/tcp/1/p2p/16Uiu2HAmVbL5FcqBYb7Kgzu1QmeucDPxLuEffwaYkaBVNNngdFJP"]))
"""


def test_the_gateway_raises_its_limit_too(tmp_path: Path) -> None:
    # Each HTTP client and libp2p peer is a descriptor: the gateway kept a shell's 1,024.
    _, current_hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if current_hard != resource.RLIM_INFINITY and current_hard < 8192:
        pytest.skip(f"this process may not set a hard limit of 8192 (it is {current_hard})")
    assert run_limited(GATEWAY_SCRIPT, str(tmp_path), 256, 8192) == [8192, 8192]
