"""`compute-node pause` / `resume` with no node answering on the HTTP port they were given."""

import os
import socket

from node.cli.main import main
from node.daemon.pause import PAUSE_FILE
from node.ops.data_lock import DataDirLock, lock_holder


def closed_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def test_with_no_node_running_pause_changes_the_kept_state(tmp_path, capsys) -> None:
    assert main(["pause", "--data-dir", str(tmp_path), "--http-port", closed_port()]) == 0
    assert "the kept state is changed" in capsys.readouterr().out and (tmp_path / PAUSE_FILE).exists()
    assert main(["resume", "--data-dir", str(tmp_path), "--http-port", closed_port()]) == 0
    assert not (tmp_path / PAUSE_FILE).exists()


def test_a_node_running_on_another_http_port_is_named_and_its_kept_state_left_alone(tmp_path, capsys) -> None:
    """A node started with --http-port 9191 and paused without it: the file changed, exit 0, and the running
    node went on taking tasks (it reads the file only at its next start, which it would then begin paused)."""
    with DataDirLock(tmp_path, "node"):
        assert lock_holder(tmp_path, "node") == str(os.getpid())
        for command in ("pause", "resume"):
            assert main([command, "--data-dir", str(tmp_path), "--http-port", closed_port()]) == 1
            err = capsys.readouterr().err
            assert f"a node is running on {tmp_path} (pid {os.getpid()})" in err and "--http-port" in err
            assert not (tmp_path / PAUSE_FILE).exists()
    assert lock_holder(tmp_path, "node") is None  # released: the file stays, nobody holds it
    assert lock_holder(tmp_path / "none", "node") is None
