"""systemd sees the node's life: its start extended, READY, then WATCHDOG pings, then STOPPING on SIGTERM.

A real `compute-node start` subprocess and a real unix datagram socket acting as systemd."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import pytest

from tests.support.nodeproc import NodeProcess, cli_env

pytestmark = pytest.mark.slow


def test_systemd_sees_ready_then_watchdog_then_stopping(tmp_path: Path) -> None:
    notify_path = tmp_path / "notify.sock"
    systemd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    systemd.bind(str(notify_path))
    systemd.settimeout(0.5)
    received: list[str] = []

    def collect_until(wanted: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not any(m.startswith(wanted) for m in received):
            try:
                received.extend(systemd.recv(4096).decode().splitlines())
            except TimeoutError:
                pass
        assert any(m.startswith(wanted) for m in received), received

    node = NodeProcess(tmp_path / "node", env=cli_env(NOTIFY_SOCKET=str(notify_path), WATCHDOG_USEC="1000000"))
    try:
        collect_until("WATCHDOG=1", timeout=30)
        assert node.stop(signal.SIGTERM) == 0
        collect_until("STOPPING=1", timeout=5)
    finally:
        node.stop(signal.SIGKILL)
        systemd.close()
    first = {
        kind: next(i for i, m in enumerate(received) if m.startswith(kind))
        for kind in ("EXTEND_TIMEOUT_USEC=", "READY=1", "WATCHDOG=1", "STOPPING=1")
    }
    assert first["EXTEND_TIMEOUT_USEC="] < first["READY=1"] < first["WATCHDOG=1"] < first["STOPPING=1"], received
    # the start may last each model's exec_start_timeout (600 s by default), whatever TimeoutStartSec says
    assert int(received[first["EXTEND_TIMEOUT_USEC="]].split("=")[1]) >= 600_000_000, received
    assert any(m.startswith("STATUS=") for m in received)
