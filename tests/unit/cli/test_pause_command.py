"""`compute-node pause` / `resume` with no node answering on the HTTP port they were given (run as processes:
the command configures logging for the process)."""

import os
import subprocess
from pathlib import Path

from node.daemon.pause import PAUSE_FILE
from node.ops.data_lock import DataDirLock, lock_holder
from tests.support.nodeproc import CLI, ROOT, cli_env, free_port


def cli(*args: str | Path | int) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, env=cli_env(), cwd=ROOT, timeout=60)


def test_with_no_node_running_pause_changes_the_kept_state(tmp_path: Path) -> None:
    paused, resumed = free_port(), free_port()
    pause = cli("pause", "--data-dir", tmp_path, "--http-port", paused)
    assert pause.returncode == 0 and (tmp_path / PAUSE_FILE).exists(), pause.stderr
    resume = cli("resume", "--data-dir", tmp_path, "--http-port", resumed)
    assert resume.returncode == 0 and not (tmp_path / PAUSE_FILE).exists(), resume.stderr
    # Only what the command did: the node's log lines ("node paused by the operator: it takes no task until
    # resumed", a warning, while resuming) said the opposite of the outcome.
    assert (pause.stdout + resume.stdout).splitlines() == [
        f"no node answered on http://127.0.0.1:{paused}/pause (ConnectError): "
        f"the kept state is changed in {tmp_path / PAUSE_FILE}",
        f"paused: true (a node started from {tmp_path} starts so)",
        f"no node answered on http://127.0.0.1:{resumed}/resume (ConnectError): "
        f"the kept state is changed in {tmp_path / PAUSE_FILE}",
        f"paused: false (a node started from {tmp_path} starts so)",
    ]
    assert not pause.stderr and not resume.stderr


def test_a_node_running_on_another_http_port_is_named_and_its_kept_state_left_alone(tmp_path: Path) -> None:
    """A node started with --http-port 9191 and paused without it: the file changed, exit 0, and the running
    node went on taking tasks (it reads the file only at its next start, which it would then begin paused)."""
    with DataDirLock(tmp_path, "node"):
        assert lock_holder(tmp_path, "node") == str(os.getpid())
        for command in ("pause", "resume"):
            done = cli(command, "--data-dir", tmp_path, "--http-port", free_port())
            assert done.returncode == 1 and not done.stdout
            assert (
                f"a node is running on {tmp_path} (pid {os.getpid()})" in done.stderr and "--http-port" in done.stderr
            )
            assert not (tmp_path / PAUSE_FILE).exists()
    assert lock_holder(tmp_path, "node") is None  # released: the file stays, nobody holds it
    assert lock_holder(tmp_path / "none", "node") is None
