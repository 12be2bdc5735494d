"""`run-task` and `ledger` on bad input: one line naming the problem, a non-zero exit, no traceback, nothing sent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from node.cli.main import main
from node.wire.identity import Identity

ROOT = Path(__file__).resolve().parents[3]
# Nothing listens there: a test that dialled it would fail by timing out, not by the line it checks.
PEER = ["--peer", f"/ip4/127.0.0.1/tcp/9/p2p/{Identity.generate().peer_id}"]

BAD_FLAGS = [
    (["--verify", "2"], "--verify: must be within 0..1"),
    (["--verify", "-1"], "--verify: must be within 0..1"),
    (["--timeout", "inf"], "--timeout: must be a positive number of seconds"),
    (["--timeout", "nan"], "--timeout: must be a positive number of seconds"),
    (["--timeout", "-5"], "--timeout: must be a positive number of seconds"),
    (["--timeout", "0"], "--timeout: must be a positive number of seconds"),
    (["--max-tokens", "0"], "--max-tokens: must be a whole number of at least 1"),
    # No number at all: argparse named the function ("invalid _seconds value: 'abc'").
    (["--timeout", "abc"], "--timeout: must be a positive number of seconds, not 'abc'"),
    (["--max-tokens", "abc"], "--max-tokens: must be a whole number of at least 1, not 'abc'"),
    (["--max-tokens", "1.5"], "--max-tokens: must be a whole number of at least 1"),
    (["--max-tokens", "inf"], "--max-tokens: must be a whole number of at least 1"),
    (["--max-tokens", "1e3"], "--max-tokens: must be a whole number of at least 1"),
    (["--verify", "half"], "--verify: must be within 0..1, not 'half'"),
]


@pytest.mark.parametrize(("flags", "named"), BAD_FLAGS, ids=[" ".join(f) for f, _ in BAD_FLAGS])
def test_a_flag_out_of_range_is_a_usage_error(flags: list[str], named: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["run-task", *PEER, "--model", "m", "--prompt", "hi", *flags])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert named in err and "invalid _" not in err, err


@pytest.mark.parametrize("days", ["nan", "inf", "-1", "a week"])
def test_ledger_days_out_of_range_is_a_usage_error(days: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["ledger", "--days", days])
    assert exited.value.code == 2 and "--days: must be a number of days" in capsys.readouterr().err


def _one_line_error(argv: list[str]) -> str:
    # A child process: the command configures logging for the whole process, which would outlive this test.
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from node.cli.main import main; sys.exit(main(sys.argv[1:]))", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 1, done.stderr
    # A key given as a flag adds its warning line (test_key_files.py); the error is the one line after it.
    err = "\n".join(line for line in done.stderr.strip().splitlines() if not line.startswith(WARNING))
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


WARNING = "compute-node: warning: --key shows the key in `ps`"


def test_a_bad_key_is_named(tmp_path: Path) -> None:
    err = _one_line_error(
        ["run-task", *PEER, "--model", "m", "--prompt", "hi", "--key", "zz", "--data-dir", str(tmp_path)]
    )
    assert err.startswith("compute-node: --key: ")


def test_a_peer_address_without_its_peer_id_says_what_it_lacks(tmp_path: Path) -> None:
    # It said "The last protocol should be `P_P2P` (421) instead of `6`" (py-libp2p's words).
    argv = ["run-task", "--peer", "/ip4/127.0.0.1/tcp/9", "--model", "m", "--prompt", "hi", "--timeout", "5"]
    err = _one_line_error([*argv, "--data-dir", str(tmp_path)])
    assert "names no peer (expected /ip4/HOST/tcp/PORT/p2p/PEER_ID)" in err, err


def test_a_bad_node_address_or_model_names_the_flag(tmp_path: Path) -> None:
    base = ["run-task", *PEER, "--prompt", "hi", "--timeout", "1", "--data-dir", str(tmp_path)]
    assert _one_line_error([*base, "--model", "m", "--node", "notanaddress"]).startswith("compute-node: --node: ")
    assert _one_line_error([*base, "--model", ""]).startswith("compute-node: --model: ")


def test_a_workflow_file_nested_past_the_parser_is_named(tmp_path: Path) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    err = _one_line_error(["run-task", *PEER, "--model", "m", "--workflow", str(deep), "--data-dir", str(tmp_path)])
    assert "JSON nested too deeply" in err


def test_an_invalid_workflow_is_refused_here_before_any_node_is_asked(
    tmp_path: Path,
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"config": {"max_steps": 1, "max_time": 1}, "tasks": [{"id": "a", "operator": "dance"}]}))
    argv = ["run-task", *PEER, "--model", "m", "--workflow", str(bad), "--timeout", "600", "--data-dir", str(tmp_path)]
    assert _one_line_error(argv).startswith("compute-node: invalid workflow: ")  # at once, not after 600 s


# A node's failure, raised by a patched Client.execute in a child process (logging, as above): sys.argv[1] is its
# reason, sys.argv[2] its kind given ("" to read it from the reason, as for a node's error text).
_FAILING = """
import sys
from node.cli.main import main
from node.publisher.client import Client, TaskFailedError
from node.wire.error_kinds import ErrorKind

async def failing(self, task, timeout):
    raise TaskFailedError("t", sys.argv[1], "0xnode", ErrorKind[sys.argv[2]] if sys.argv[2] else None)

Client.execute = failing
sys.exit(main(sys.argv[3:]))
"""


@pytest.mark.parametrize(
    ("reason", "kind", "status"),
    [
        ("busy: model m has 1 running and 8 queued tasks", "", 2),  # every node busy: a script may try again
        ("busy: stream refused (reset)", "BUSY", 2),  # the last node declined, busy
        ("Invalid prompt: invalid workflow: tasks.0.operator: unknown operator 'x'", "", 1),
        ("interrupted: node shutting down", "", 1),
        ("ignored: not_picked", "FAILED", 1),
    ],
    ids=["busy", "declined-busy", "invalid-prompt", "interrupted", "declined-ignored"],
)
def test_a_failed_task_exits_as_its_kind_says(reason: str, kind: str, status: int, tmp_path: Path) -> None:
    argv = ["run-task", *PEER, "--model", "m", "--prompt", "hi", "--timeout", "5", "--data-dir", str(tmp_path)]
    done = subprocess.run(
        [sys.executable, "-c", _FAILING, reason, kind, *argv], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert done.returncode == status, done.stderr
    assert f"failed on node 0xnode: {reason}" in done.stderr
