"""A node that cannot start says why in one line; a failure that is a bug also leaves its traceback in the log.

An operator's mistake (a setting, a locked data directory, a port taken) needs no traceback: the message names
it. Anything else (an AttributeError in startup code) is useless without one, and a node run by systemd or
Docker has no other place to keep it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import structlog

from config.layered import ConfigError
from config.settings import Settings
from node.daemon import server
from node.ops.data_lock import DataDirLockedError


@pytest.mark.parametrize(
    ("failure", "traceback"),
    [
        (ConfigError("listen_port: 99999 is out of range"), False),
        (DataDirLockedError("/data is used by another node (pid 7)"), False),
        (OSError(98, "Address already in use"), False),
        (AttributeError("'NoneType' object has no attribute 'close'"), True),
        (KeyError("model"), True),
    ],
)
async def test_a_failed_start_is_one_line_and_a_bug_keeps_its_traceback(
    failure: Exception,
    traceback: bool,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async def failing_serve(self: server.NodeServer, early_stops: object = None) -> None:
        raise failure

    monkeypatch.setattr(server.NodeServer, "serve", failing_serve)
    with structlog.testing.capture_logs() as lines:
        code = await server.serve_node(Settings(data_dir=tmp_path))
    assert code == 1
    failed = next(line for line in lines if line["event"] == "node failed")
    assert failed["error_type"] == type(failure).__name__ and failed["exc_info"] is traceback
    assert capsys.readouterr().err == f"compute-node: {failure}\n"
