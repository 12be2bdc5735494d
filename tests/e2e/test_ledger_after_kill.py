"""The ledger across a SIGKILL: the row of a task that finished in the seconds before the kill (the ledger
writes every 2 s from memory), and of a task the kill interrupted (answered at the restart).

Real `compute-node start` subprocesses and real signals; loopback only."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from pathlib import Path

import pytest

from node.publisher.client import Client, Task, TaskFailedError
from node.wire.identity import Identity
from tests.support.nodeproc import NodeProcess, free_port
from workflows import Simple

pytestmark = pytest.mark.slow


def ledger_rows(data_dir: Path) -> dict[str, tuple[str, int, str | None]]:
    """(outcome, completion tokens, error) by task id."""
    with sqlite3.connect(data_dir / "ledger.sqlite3") as db:
        rows = db.execute("SELECT task_id, outcome, completion_tokens, error FROM tasks").fetchall()
    return {task_id: (outcome, tokens, error) for task_id, outcome, tokens, error in rows}


async def test_a_task_finished_just_before_a_kill_and_one_the_kill_interrupted_both_get_their_rows(
    tmp_path: Path,
) -> None:
    data_dir, port, key = tmp_path / "node", free_port(), Identity.generate().secret
    node = NodeProcess(data_dir, port=port)
    try:
        address = node.wait_for_log("node started")["address"]
        async with Client(peers=[node.addr], secret_key=key) as client:
            endless = Simple().workflow(prompt="Count from one to a thousand.", max_tokens=900)
            interrupted = await client.submit(Task(workflow=endless, models=["*"], nodes=[address]), timeout=120)
            await asyncio.to_thread(node.wait_for_log, "task started", 30, task_id=interrupted)
            short = Simple().workflow(prompt="Say hi.", max_tokens=4)
            finished = await client.submit(Task(workflow=short, models=["*"], nodes=[address]), timeout=60)
            result = await client.wait(finished, timeout=60, nodes=[address])
            node.stop(signal.SIGKILL)  # within the ledger's 2 s: its row was only in memory
        assert result.completion_tokens
        node = NodeProcess(data_dir, port=port)
        async with Client(peers=[node.addr], secret_key=key) as client:
            with pytest.raises(TaskFailedError, match="interrupted: node restarted"):
                await client.wait(interrupted, timeout=30, nodes=[address])
        assert node.stop() == 0  # the ledger writes what it holds at a graceful stop
        rows = ledger_rows(data_dir)
        assert rows.get(finished, ("missing",))[:2] == ("ok", result.completion_tokens), rows
        assert rows.get(interrupted) == ("interrupted", 0, "interrupted: node restarted"), rows
        assert len(rows) == 2, rows
    finally:
        node.stop(signal.SIGKILL)
