"""A node run as a real `compute-node start` subprocess, for lifecycle tests."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "node.cli"]


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a test node: one thread, small context, no HTTP, no benchmark."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPUTE_NODE_")}
    env.update(
        PYTHONPATH=str(ROOT),
        COMPUTE_NODE_N_THREADS="1",
        COMPUTE_NODE_N_CTX="1024",
        COMPUTE_NODE_HTTP_ENABLED="false",
        COMPUTE_NODE_STARTUP_BENCHMARK="false",
        COMPUTE_NODE_LOG_FORMAT="json",
        # Every test peer dials from 127.0.0.1, one host to the per-IP connection limits.
        COMPUTE_NODE_INBOUND_CONNECTIONS_PER_IP="100000",
        COMPUTE_NODE_INBOUND_CONNECTIONS_PER_IP_PER_MINUTE="100000",
    )
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class NodeProcess:
    """`compute-node start` on 127.0.0.1; collects its JSON log lines from stderr."""

    def __init__(
        self,
        data_dir: Path,
        *extra: str,
        port: int = 0,
        env: dict[str, str] | None = None,
        own_group: bool = False,
        pass_fds: tuple[int, ...] = (),
    ) -> None:
        """`own_group`: the node leads a new process group (and session), as under a
        terminal or a service manager, so a test can signal the whole group. `pass_fds`: descriptors it
        inherits, as from a supervisor or a shell that leaves some open."""
        self.proc = subprocess.Popen(
            [*CLI, "start", "--listen", f"/ip4/127.0.0.1/tcp/{port}", "--data-dir", str(data_dir), *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env or cli_env(),
            cwd=ROOT,
            start_new_session=own_group,
            pass_fds=pass_fds,
        )
        self.logs: list[dict] = []
        self._stderr_tail: list[str] = []
        threading.Thread(target=self._read_stderr, daemon=True).start()
        self.addr = self._wait_for_listen_line()

    @property
    def peer_id(self) -> str:
        return self.addr.split("/p2p/")[1]

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr_tail = (self._stderr_tail + [line])[-200:]
            try:
                self.logs.append(json.loads(line))
            except json.JSONDecodeError:
                pass

    def _wait_for_listen_line(self, timeout: float = 90) -> str:
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            match = re.match(r"listening on (/ip4/127\.0\.0\.1/tcp/\d+/p2p/16Uiu2\w+)", line.strip())
            if match:
                return match.group(1)
        self.proc.kill()
        raise AssertionError("node did not print its address; stderr:\n" + "".join(self._stderr_tail)[-3000:])

    def wait_for_log(self, event: str, timeout: float = 60, **fields: object) -> dict:
        """The first log line with this event (and these fields), waiting up to `timeout` s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for entry in list(self.logs):
                if entry.get("event") == event and all(entry.get(k) == v for k, v in fields.items()):
                    return entry
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no {event!r} {fields} log line; tail:\n" + "".join(self._stderr_tail)[-3000:])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
