"""sd_notify datagrams reach a real unix datagram socket standing in for systemd."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from node.ops.systemd import SystemdNotifier


def receive_all(sock: socket.socket, count: int) -> list[bytes]:
    sock.settimeout(2.0)
    return [sock.recv(4096) for _ in range(count)]


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    yield sock, path
    sock.close()


def test_messages_arrive_in_order_on_a_path_socket(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = SystemdNotifier.from_env({"NOTIFY_SOCKET": path})
    notifier.extend_timeout(630)
    notifier.ready()
    notifier.status("serving 2 models\nsecond line")
    notifier.watchdog()
    notifier.stopping()
    notifier.close()
    assert receive_all(sock, 5) == [
        b"EXTEND_TIMEOUT_USEC=630000000",
        b"READY=1",
        b"STATUS=serving 2 models second line",
        b"WATCHDOG=1",
        b"STOPPING=1",
    ]


def test_abstract_socket_address() -> None:
    name = f"compute-node-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    try:
        notifier = SystemdNotifier.from_env({"NOTIFY_SOCKET": "@" + name})
        notifier.ready()
        notifier.close()
        assert receive_all(sock, 1) == [b"READY=1"]
    finally:
        sock.close()


def test_disabled_without_notify_socket() -> None:
    notifier = SystemdNotifier.from_env({})
    assert notifier.watchdog_interval() is None
    notifier.ready()  # a no-op, not an error


def test_send_failure_is_logged_not_raised(tmp_path: Path) -> None:
    notifier = SystemdNotifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    with capture_logs() as logs:
        notifier.ready()
    notifier.close()
    assert [(e["event"], e["message"]) for e in logs] == [("systemd notify failed", "READY=1")]


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    env = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "60000000"}
    assert SystemdNotifier.from_env(env).watchdog_interval() == 30.0
    ours = env | {"WATCHDOG_PID": str(os.getpid())}
    assert SystemdNotifier.from_env(ours).watchdog_interval() == 30.0
    other = env | {"WATCHDOG_PID": str(os.getpid() + 1)}
    assert SystemdNotifier.from_env(other).watchdog_interval() is None
    assert SystemdNotifier.from_env({"WATCHDOG_USEC": "junk"}).watchdog_interval() is None
