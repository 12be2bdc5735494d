"""TaskRunner._finish never loses a result: stats clamped to the wire's int64, and a result
that cannot be built is replaced by an error result, which is journalled for the outbox.

Real journal, real outbox on a real (peerless) libp2p host: the result stays in the journal.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from config.settings import Settings
from node.daemon.admission import AcceptedTask
from node.daemon.journal import Journal, TaskState
from node.daemon.outbox import ResultOutbox
from node.daemon.processes.pool import ExecutionPool
from node.daemon.runner import RESULT_NOT_BUILT, TaskRunner
from node.ops.metrics import NodeMetrics
from node.p2p.host import P2PHost
from node.wire.ecies import decrypt
from node.wire.identity import Identity
from node.wire.messages import TaskBody, TaskInput
from node.wire.results import Output
from node.wire.wire_time import INT64_MAX
from workflows.options import DEFAULT_MAX_TIME_S

PUBLISHER = Identity.from_hex("33" * 32)


@pytest_asyncio.fixture
async def runner(tmp_path: Path) -> AsyncIterator[tuple[TaskRunner, Journal]]:
    node = Identity.generate()
    journal = Journal.open(tmp_path / "journal.sqlite3")
    host = P2PHost(node.secret, ["/ip4/127.0.0.1/tcp/0"])
    await host.start()
    try:
        outbox = ResultOutbox(node, host, journal)
        metrics = NodeMetrics()
        pool = ExecutionPool(Settings.load(data_dir=tmp_path), metrics)
        yield TaskRunner(pool, outbox, metrics, DEFAULT_MAX_TIME_S, cancel_grace_s=1.0), journal
    finally:
        await host.stop()
        journal.close()


def _accepted(journal: Journal, task_id: str, public_key: str | None = None) -> AcceptedTask:
    deadline = time.time_ns() + 60 * 10**9
    key = PUBLISHER.public_key_compressed.hex()
    task = TaskBody(task_id=task_id, deadline=deadline, input=TaskInput(workflow={}, model=["m"]), public_key=key)
    if public_key is not None:  # what no valid task holds: only a bug elsewhere could bring it here
        task = task.model_copy(update={"public_key": public_key})
    journal.record_accepted(task_id, PUBLISHER.address, deadline, "m", b"{}", time.time_ns())
    return AcceptedTask(task=task, publisher=PUBLISHER.address, model="m", received_at_ns=time.time_ns())


def _kept(journal: Journal, task_id: str) -> dict[str, object]:
    entry = journal.get(task_id)
    assert entry is not None and entry.state == TaskState.FINISHED and entry.result_body is not None
    body: dict[str, object] = json.loads(entry.result_body)
    return body


@pytest.mark.asyncio
async def test_token_counts_past_int64_or_below_zero_are_clamped_and_the_result_is_kept(
    runner: tuple[TaskRunner, Journal],
) -> None:
    task_runner, journal = runner
    accepted = _accepted(journal, "huge")
    output = Output("hello \ud800 world", accepted.task.public_key, prompt_tokens=2**80, completion_tokens=-3)
    await task_runner._finish(accepted, time.time_ns(), output=output)
    body = _kept(journal, "huge")
    assert "error" not in body
    stats = body["stats"]
    assert isinstance(stats, dict)
    assert stats["promptTokens"] == INT64_MAX and stats["completionTokens"] == 0
    text = decrypt(PUBLISHER.secret, bytes.fromhex(str(body["ciphertext"]))).decode("utf-8")
    assert text == "hello ? world"  # a lone surrogate cannot be UTF-8: replaced, not a lost result


@pytest.mark.asyncio
async def test_a_result_that_cannot_be_built_is_replaced_by_an_error_result(
    runner: tuple[TaskRunner, Journal],
) -> None:
    task_runner, journal = runner
    off_curve = "02" + "ff" * 32  # x past the field prime: no point, nothing can be encrypted to it
    accepted = _accepted(journal, "broken", public_key=off_curve)
    await task_runner._finish(accepted, time.time_ns(), output=Output("text", off_curve, 2, 3))
    body = _kept(journal, "broken")
    assert "ciphertext" not in body
    assert body["error"] == f"{RESULT_NOT_BUILT} (EciesError)"
