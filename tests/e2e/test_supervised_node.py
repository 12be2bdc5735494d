"""A live node's loops are supervised: a crashed loop restarts, a dead libp2p thread ends the node
non-zero, and the systemd watchdog (a fake NOTIFY_SOCKET) stops being pinged."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from node.daemon.server import NodeServer
from node.wire.topics import TASK_TOPIC
from tests.support.cluster import node_settings, running_node
from tests.support.live_hostile import live_publisher

pytestmark = pytest.mark.slow


async def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class FakeSystemd:
    """A unix datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        path = str(tmp_path / "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.setblocking(False)
        self.received: list[tuple[float, bytes]] = []
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        monkeypatch.setenv("WATCHDOG_USEC", "200000")  # a ping every 0.1 s
        monkeypatch.delenv("WATCHDOG_PID", raising=False)

    def listen(self) -> None:
        """Timestamp datagrams as they arrive (from the running event loop)."""
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self.read_all)

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()

    def read_all(self) -> list[tuple[float, bytes]]:
        while self.sock.fileno() >= 0:
            try:
                self.received.append((time.monotonic(), self.sock.recv(4096)))
            except BlockingIOError:
                break
        return self.received

    def pings(self, after: float = 0.0, before: float = float("inf")) -> int:
        return sum(1 for t, m in self.read_all() if m == b"WATCHDOG=1" and after < t < before)


async def test_a_crashed_intake_loop_restarts_and_the_node_keeps_serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    systemd = FakeSystemd(tmp_path, monkeypatch)
    systemd.listen()
    settings = node_settings(tmp_path / "node", n_ctx=512)
    with capture_logs() as logs:
        async with running_node(settings) as node, live_publisher(node) as run:
            node.supervisor.base_backoff_s = 2.0
            # One bad message cannot stop the intake (it catches per message), so the loop
            # itself is made to fail: its queue raises once.
            queue = node.running.host._gossip.queues[TASK_TOPIC]
            get = queue.get
            calls = 0
            marks: list[float] = []  # when the loop crashed, and when it ran again (its first get after the restart)

            async def poisoned() -> Any:
                nonlocal calls
                calls += 1
                if calls <= 2:
                    # The pings sent so far (from this event loop) are stamped now, before the mark: the window
                    # between the two marks holds the pings sent while the loop was down, and only those.
                    # (Marks taken when the test noticed the crash and the restart, 20 ms polls, raced the
                    # monitor's 0.1 s pings on a loaded machine: a ping just after the restart, seen late.)
                    systemd.read_all()
                    marks.append(time.monotonic())
                if calls == 1:
                    raise RuntimeError("injected intake failure")
                return await get()

            queue.get = poisoned  # type: ignore[method-assign]
            lost = asyncio.create_task(run.run_valid_task())
            await _wait_for(lambda: any(e["event"] == "loop crashed, restarting" for e in logs), 20, "the crash")
            report = node.running.parts.monitor.health()
            assert not report.ok and "intake (restarting: RuntimeError: injected intake failure)" in (
                report.reason or ""
            )
            await _wait_for(lambda: node.supervisor.failed() == [], 10, "the restart")
            await _wait_for(lambda: len(marks) == 2, 10, "the restarted loop's first get")
            crashed, restarted = marks
            assert systemd.pings(after=crashed, before=restarted) == 0  # no watchdog ping while the loop was down
            await _wait_for(lambda: systemd.pings(after=restarted) >= 2, 10, "the pings resumed")
            lost.cancel()
            outcome = await run.run_valid_task()
            assert outcome.error is None and (outcome.text or "").strip()
            assert [e.get("loop") for e in logs if e["event"] == "loop crashed, restarting"] == ["intake"]
            assert (
                node.running.parts.monitor.health().reason is None
                or "intake" not in node.running.parts.monitor.health().reason
            )  # type: ignore[operator]
            assert node.supervisor.fatal is None and node.exit_code == 0
    systemd.close()


async def test_the_libp2p_thread_dying_ends_the_node_non_zero_and_stops_the_watchdog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    systemd = FakeSystemd(tmp_path, monkeypatch)
    systemd.listen()
    server = NodeServer(node_settings(tmp_path / "node", n_ctx=512))
    serving = asyncio.create_task(server.serve())
    try:
        deadline = time.monotonic() + 60
        while systemd.pings() < 3:
            assert time.monotonic() < deadline and not serving.done(), "no watchdog pings from the node"
            await asyncio.sleep(0.05)
        killed_at = time.monotonic()
        server.running.host._trio.token.run_sync_soon(server.running.host._service.request_stop)  # the thread ends
        await asyncio.wait_for(serving, 60)
    finally:
        if not serving.done():
            server.request_exit()
            await asyncio.wait_for(serving, 60)
        systemd.read_all()
        systemd.close()
    assert server.exit_code == 1
    assert server.supervisor.fatal is not None and server.supervisor.fatal.startswith("p2p-thread")
    stopping = next(t for t, m in systemd.received if m == b"STOPPING=1")
    assert stopping >= killed_at
    # The watcher notices within its interval; after that no ping is sent.
    assert systemd.pings(after=killed_at + 0.7) == 0
