"""systemd socket activation (sd_listen_fds): the socket on fd 3 is taken only when it is meant for
this process and is a listening TCP socket. Each case runs in a child process that puts a real
socket on fd 3, as systemd does between fork and exec."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from node.ops.systemd import SocketActivationError, inherited_listener

ROOT = Path(__file__).resolve().parents[3]

CHILD = """
import json, os, socket, sys
from node.ops.systemd import SocketActivationError, inherited_listener
os.dup2(int(sys.argv[1]), 3)
os.environ.update(LISTEN_FDS=sys.argv[2], LISTEN_PID=str(os.getpid()) if sys.argv[3] == "self" else "1")
try:
    sock = inherited_listener()
except SocketActivationError as exc:
    print(json.dumps({"error": str(exc)}))
else:
    print(json.dumps({
        "port": sock.getsockname()[1] if sock else None,
        "env_left": [n for n in ("LISTEN_FDS", "LISTEN_PID") if n in os.environ],
        "inheritable": sock.get_inheritable() if sock else None,
    }))
"""


def in_child(sock: socket.socket, fds: str = "1", pid: str = "self") -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(sock.fileno()), fds, pid],
        pass_fds=(sock.fileno(),),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
        check=True,
    )
    answer: dict[str, object] = json.loads(out.stdout.splitlines()[-1])
    return answer


def test_a_listening_tcp_socket_is_taken_and_the_variables_are_cleared() -> None:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        assert in_child(sock) == {"port": sock.getsockname()[1], "env_left": [], "inheritable": False}


def test_sockets_meant_for_another_process_or_none_passed_are_left_alone() -> None:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        assert in_child(sock, pid="other")["port"] is None
        assert in_child(sock, fds="0")["port"] is None


@pytest.mark.parametrize("kind", ["udp", "unbound-tcp"])
def test_a_socket_that_cannot_serve_http_is_refused_with_a_clear_error(kind: str) -> None:
    if kind == "udp":
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # not listening
    with sock:
        error = in_child(sock)["error"]
    assert "fd 3 from systemd is no listening TCP socket" in str(error) and "ListenStream" in str(error)


def test_a_malformed_count_is_an_error_and_no_variables_means_no_socket() -> None:
    pid = str(os.getpid())
    with pytest.raises(SocketActivationError, match="LISTEN_FDS='two' is not a number"):
        inherited_listener({"LISTEN_PID": pid, "LISTEN_FDS": "two"})
    assert inherited_listener({}) is None
