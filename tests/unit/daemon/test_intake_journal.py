"""What the intake journals for a task it lets run: the body as its publisher signed it, which recovery decodes.

The node's own parts in this process: a real signed envelope verified by `node.wire.inbound.decode`,
`Acceptance`, `Admission`, `TaskIntake`, `TaskRunner`, `ResultOutbox` and a real SQLite `Journal`.
The model's execution process is not started and the libp2p host has no peers.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from config.settings import Settings
from node.daemon.acceptance import Acceptance, SeenTasks
from node.daemon.admission import Admission
from node.daemon.intake import ACCEPTED, TaskIntake
from node.daemon.journal import Journal, TaskState
from node.daemon.outbox import ResultOutbox
from node.daemon.processes.pool import ExecutionPool
from node.daemon.runner import TaskRunner
from node.ops.metrics import NodeMetrics
from node.p2p.host import P2PHost
from node.wire.envelope import seal
from node.wire.identity import Identity
from node.wire.inbound import decode
from node.wire.messages import decode_task
from node.wire.topics import RESULTS_TOPIC, TASK_TOPIC
from workflows import Simple

MODEL = "smollm2:135m"


async def test_a_task_that_runs_is_journalled_with_its_body_as_signed(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, models=[MODEL])
    node, publisher = Identity.generate(), Identity.generate()
    journal = Journal.open(settings.journal_path)
    host = P2PHost(node.secret, ["/ip4/127.0.0.1/tcp/0"])
    await host.start()
    await host.subscribe(RESULTS_TOPIC)
    metrics = NodeMetrics()
    outbox = ResultOutbox(node, host, journal, grace_s=settings.result_grace)
    runner = TaskRunner(ExecutionPool(settings, metrics), outbox, metrics, settings.max_time_cap, 1.0)
    admission = Admission(runner.run, runner.abandon, {MODEL: 1}, 0)
    acceptance = Acceptance(node.address, [MODEL], seen=SeenTasks(100))
    intake = TaskIntake(acceptance, admission, journal, runner, metrics, settings.reject_log_window)
    try:
        # Not as the node would encode it: spaced JSON, fields in another order, a null field.
        body = {
            "publicKey": publisher.public_key_compressed.hex(),
            "pickedNodes": [node.address],
            "input": {"model": [MODEL], "workflow": Simple().workflow(prompt="Hi", max_tokens=8)},
            "deadline": time.time_ns() + 600 * 10**9,
            "taskId": "as-signed",
            "stream": None,
        }
        inbound = decode(TASK_TOPIC, seal(publisher, TASK_TOPIC, json.dumps(body, indent=1).encode("utf-8")))

        assert intake.take(inbound) == ACCEPTED
        entry = journal.get("as-signed")
        assert entry is not None and entry.state is TaskState.ACCEPTED
        assert entry.task_message == inbound.signed.body  # the signed bytes, not a re-encoding
        assert decode_task(entry.task_message) == inbound.body  # what recovery reads is the task taken

        # A second task finds no room (1 running, no queue): journalled without its body.
        body["taskId"] = "busy"
        busy = decode(TASK_TOPIC, seal(publisher, TASK_TOPIC, json.dumps(body).encode("utf-8")))
        intake.take(busy)
        kept = journal.get("busy")
        assert kept is not None and kept.task_message == b""
    finally:
        await intake.close()
        await admission.drain(1.0)
        await host.stop()
        journal.close()
