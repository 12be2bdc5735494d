"""An operator's node: pause and resume through the CLI, kept across a restart, and the ledger."""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from node.daemon.pause import PAUSE_FILE
from node.p2p.host import P2PHost
from node.wire.direct import decode_answer
from node.wire.envelope import seal
from node.wire.identity import Identity
from node.wire.messages import TaskBody, TaskInput, encode_body
from node.wire.topics import TASK_TOPIC
from tests.support.nodeproc import CLI, ROOT, NodeProcess, cli_env, free_port
from workflows import Simple

pytestmark = pytest.mark.slow
MODEL = "smollm2:135m"


def cli(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *map(str, args)], capture_output=True, text=True, env=cli_env(), cwd=ROOT, timeout=timeout
    )


async def stream_answer(addr: str) -> tuple[str, str]:
    """What the node answers a valid task sent on a direct-delivery stream."""
    publisher = Identity.generate()
    body = TaskBody(
        task_id=secrets.token_urlsafe(16),
        deadline=time.time_ns() + 60 * 10**9,
        input=TaskInput(workflow=Simple().workflow("Hi", max_tokens=4), model=[MODEL]),
        public_key=publisher.public_key_compressed.hex(),
    )
    host = P2PHost(Identity.generate().secret, ["/ip4/127.0.0.1/tcp/0"])
    await host.start()
    try:
        stream = await host.open_stream([addr], seal(publisher, TASK_TOPIC, encode_body(body)))
        frame = await stream.receive(15)
        await stream.close()
    finally:
        await host.stop()
    assert frame is not None, "no answer on the stream"
    answer = decode_answer(frame)
    return answer.status.value, answer.reason


def status_of(port: int) -> dict:
    return httpx.get(f"http://127.0.0.1:{port}/status", timeout=10).json()


async def test_paused_node_takes_nothing_stays_paused_across_restart_and_the_ledger_counts(tmp_path: Path) -> None:
    data, port = tmp_path / "node", free_port()
    env = cli_env(COMPUTE_NODE_HTTP_ENABLED="true", COMPUTE_NODE_HTTP_PORT=str(port))
    node = NodeProcess(data, env=env)
    try:
        done = cli("run-task", "--peer", node.addr, "--model", MODEL, "--prompt", "Hi", "--max-tokens", "8")
        assert done.returncode == 0, done.stderr
        paused = cli("pause", "--data-dir", data, "--http-port", port)
        assert paused.returncode == 0 and "paused: true (operator)" in paused.stdout, paused.stderr
        status = status_of(port)
        assert status["paused"]["paused"] and status["paused"]["operator"]
        assert status["capacity"]["free"] == 0
        [recent] = status["activity"]["recent_tasks"]
        assert recent["ok"] and recent["model"] == MODEL and recent["completion_tokens"] > 0
        assert sum(m["tasks"] for m in status["activity"]["minutes"]) == 1
        assert await stream_answer(node.addr) == ("busy", "paused")
        assert node.stop() == 0

        node = NodeProcess(data, env=env)  # a restart keeps the operator's pause
        assert status_of(port)["paused"]["paused"]
        assert await stream_answer(node.addr) == ("busy", "paused")
        busy = cli("run-task", "--peer", node.addr, "--model", MODEL, "--prompt", "Hi", "--timeout", "20")
        assert busy.returncode == 2 and "busy: paused" in busy.stderr, busy.stderr  # as no node: a script retries
        resumed = cli("resume", "--data-dir", data, "--http-port", port)
        assert resumed.returncode == 0 and "paused: false" in resumed.stdout, resumed.stderr
        assert status_of(port)["capacity"]["free"] > 0
        done = cli("run-task", "--peer", node.addr, "--model", MODEL, "--prompt", "Hey", "--max-tokens", "8")
        assert done.returncode == 0, done.stderr
        assert node.stop() == 0
    finally:
        if node.proc.poll() is None:
            node.stop()

    report = cli("ledger", "--data-dir", data, "--json")
    assert report.returncode == 0, report.stderr
    totals = json.loads(report.stdout)
    assert [(t["key"], t["tasks"], t["ok"]) for t in totals["model"]] == [(MODEL, 2, 2)]
    assert [t["key"] for t in totals["outcome"]] == ["ok"] and len(totals["publisher"]) == 2
    table = cli("ledger", "--data-dir", data)
    assert table.returncode == 0 and "BY PUBLISHER" in table.stdout and MODEL in table.stdout

    # With no node running, pause changes the kept state: the next start is paused.
    offline = cli("pause", "--data-dir", data, "--http-port", free_port())
    assert offline.returncode == 0 and "no node answered" in offline.stdout
    assert (data / PAUSE_FILE).exists()
    (tmp_path / "a-file").write_text("")  # a data dir that cannot hold the kept state: said, never claimed kept
    nowhere = cli("pause", "--data-dir", tmp_path / "a-file", "--http-port", free_port())
    assert nowhere.returncode == 1 and "is not a directory" in nowhere.stderr and "paused" not in nowhere.stdout
