"""A gateway restarted on a socket systemd holds refuses no connection: requests made while no
gateway process runs wait in the socket's backlog and are answered by the next one.

Real `compute-node gateway` processes, each given the listening socket as fd 3 with
$LISTEN_FDS / $LISTEN_PID (the sd_listen_fds protocol, as a `.socket` unit passes it), a real
node in this process, and a client that opens a new connection per request (as Dria's SDK does).
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.support.cluster import dialable, node_settings, running_node
from tests.support.nodeproc import CLI, ROOT, cli_env

pytestmark = pytest.mark.slow

# What systemd does between fork and exec: the socket on fd 3, the two variables naming this pid.
ACTIVATE = (
    "import os, sys; os.dup2(int(sys.argv[1]), 3); "
    "os.environ.update(LISTEN_FDS='1', LISTEN_PID=str(os.getpid())); os.execv(sys.argv[2], sys.argv[2:])"
)


def activated_gateway(listener: socket.socket, data_dir: Path, peer: str, log: Path) -> subprocess.Popen[bytes]:
    """`compute-node gateway` on `listener`; `--port` names the listener's own port, which the
    gateway could not bind itself: it serves only if it took the socket it was given."""
    port = listener.getsockname()[1]
    with log.open("ab") as stderr:
        return subprocess.Popen(
            [sys.executable, "-c", ACTIVATE, str(listener.fileno()), *CLI]
            + ["gateway", "--peer", peer, "--data-dir", str(data_dir), "--port", str(port)],
            pass_fds=(listener.fileno(),),
            env=cli_env(),
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )


async def test_requests_during_a_restart_wait_for_the_next_gateway_instead_of_being_refused(tmp_path: Path) -> None:
    async with running_node(node_settings(tmp_path / "node")) as node:
        with socket.create_server(("127.0.0.1", 0)) as listener:
            port = listener.getsockname()[1]
            url = f"http://127.0.0.1:{port}/healthz"
            answers: list[tuple[float, int | str]] = []  # (sent at, status or error)
            stop = asyncio.Event()

            async def poll() -> None:
                while not stop.is_set():
                    sent = time.monotonic()
                    try:  # a new client per request: a new connection, as the SDK makes
                        async with httpx.AsyncClient(timeout=60) as http:
                            answers.append((sent, (await http.get(url)).status_code))
                    except httpx.HTTPError as exc:
                        answers.append((sent, repr(exc)))
                    await asyncio.sleep(0.02)

            log = tmp_path / "gateway.log"
            first = activated_gateway(listener, tmp_path / "gw", dialable(node), log)
            poller = asyncio.create_task(poll())
            second: subprocess.Popen[bytes] | None = None
            try:
                await wait_for(lambda: any(status == 200 for _, status in answers), 60, first, log)
                first.send_signal(signal.SIGTERM)
                assert await asyncio.to_thread(first.wait, 30) == 0, log.read_text()[-3000:]
                gone = time.monotonic()
                second = activated_gateway(listener, tmp_path / "gw", dialable(node), log)
                await wait_for(lambda: any(s > gone and status == 200 for s, status in answers), 60, second, log)
                await asyncio.sleep(0.3)
                stop.set()
                await poller  # before the second one stops: a request after that would wait forever
                second.send_signal(signal.SIGTERM)
                assert await asyncio.to_thread(second.wait, 30) == 0, log.read_text()[-3000:]
            finally:
                stop.set()
                poller.cancel()
                for proc in (first, second):
                    if proc is not None and proc.poll() is None:
                        proc.kill()
    refused = [(sent, status) for sent, status in answers if status != 200]
    assert not refused, refused[:5]
    # The request sent first after the old gateway left was made while none ran, and answered.
    assert any(sent > gone for sent, _ in answers), "no request was made while no gateway ran"


async def wait_for(condition: Callable[[], bool], seconds: float, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"gateway exited {proc.returncode}: {log.read_text()[-3000:]}")
        assert time.monotonic() < deadline, f"not within {seconds} s: {log.read_text()[-3000:]}"
        await asyncio.sleep(0.05)


def test_a_public_socket_without_api_keys_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with socket.create_server(("0.0.0.0", 0)) as listener:
        log = tmp_path / "gateway.log"
        proc = activated_gateway(listener, tmp_path / "gw", "/ip4/127.0.0.1/tcp/9/p2p/" + "16Uiu2HAm" + "x" * 44, log)
        assert proc.wait(60) == 1
    error = log.read_text()
    assert "the socket systemd passed: '0.0.0.0' is not a loopback address and no api_keys are set" in error
