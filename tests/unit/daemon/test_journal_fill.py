"""A fill attempt on the journal with 10,000 keys, through the real intake: an honest task is still accepted.

The parts are the node's own, in this process: real signed envelopes (a fresh key per task)
verified by `node.wire.inbound.decode`, `Acceptance`, `Admission`, `TaskIntake`, `TaskRunner`,
`ResultOutbox` and a real SQLite `Journal` with the default settings. The model's execution
process is not started, so every admitted task fails at once (`model ... is not served here`),
as the attacker's tasks did in the issue; the libp2p host has no peers, so no result can be
published and every result waits in the journal: the worst case for its size.

Byte math, default settings (one model, parallel 4 -> max_concurrent 4, max_queue 8):

- live rows (accepted or running) hold the signed task only for a task admission lets run:
  at most 4 + 8 = 12 bodies of at most ~192 KiB (a 256 KiB envelope holds base64 of the body),
  so 12 x (196,608 + 256) ~= 2.3 MiB; a task refused as busy keeps a 256-byte row only;
- waiting rows (finished, not published) hold the result only: at most `journal_max_bytes`
  (64 MiB) plus the newest result; past it the oldest waiting result is dropped;
- records (published or dropped) hold no body, ~0.44 KB each on disk with a 128-character id
  (~0.24 KB with a 40-character one), at most `journal_max_records` (100,000): ~44 MB.

Worst case ~2.3 MiB + 64.2 MiB + 44 MB ~= 113 MB, whatever the number of keys, and no row
kind refuses a task: the honest task from key 10,001 is admitted as soon as the flood's tasks
have left the queue. Here the flood is 100 tasks of 180 KB and 9,900 of 8 KB (~97 MB of
bodies); every one waits as a ~580-byte error result, ~5.8 MB in all, far below its cap. The
old journal kept every body until deadline + 24 h and refused all tasks past 256 MiB.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import structlog

from config.settings import Settings
from node.daemon.acceptance import Acceptance, SeenTasks
from node.daemon.admission import Admission
from node.daemon.intake import TaskIntake
from node.daemon.journal import ROW_OVERHEAD_BYTES, Journal, JournalUsage
from node.daemon.outbox import ResultOutbox
from node.daemon.processes.pool import ExecutionPool
from node.daemon.runner import TaskRunner
from node.ops.metrics import NodeMetrics
from node.p2p.host import P2PHost
from node.wire.envelope import seal
from node.wire.identity import Identity
from node.wire.inbound import decode
from node.wire.topics import RESULTS_TOPIC, TASK_TOPIC
from workflows import Simple

MODEL = "smollm2:135m"
LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]
KEYS = 10_000
LARGE = 100  # the first tasks carry the 180 KB prompt; the rest 8 KB
CONCURRENCY, MAX_QUEUE = 4, 8
MAX_BODY_BYTES = 256 * 1024 * 3 // 4  # a body's base64 fills at most the 256 KiB envelope
LIVE_BOUND = (CONCURRENCY + MAX_QUEUE) * (MAX_BODY_BYTES + ROW_OVERHEAD_BYTES)


def signed_task(key: Identity, task_id: str, prompt: str, node_address: str) -> bytes:
    body = {
        "taskId": task_id,
        "deadline": time.time_ns() + 600 * 10**9,
        "input": {"workflow": Simple().workflow(prompt=prompt, max_tokens=8), "model": [MODEL]},
        "pickedNodes": [node_address],
        "publicKey": key.public_key_compressed.hex(),
    }
    return seal(key, TASK_TOPIC, json.dumps(body).encode("utf-8"))


def bodies_held(journal: Journal) -> tuple[int, int]:
    """(how many, bytes) of signed tasks the journal holds now."""
    held = [len(entry.task_message) for entry in journal.interrupted() if entry.task_message]
    return len(held), sum(held)


def used_bytes(journal: Journal) -> int:
    """Bytes of the SQLite file's pages in use (freed pages are reused, so the file does not shrink)."""
    pages, free, size = (
        journal._conn.execute(f"PRAGMA {name}").fetchone()[0] for name in ("page_count", "freelist_count", "page_size")
    )
    return int((pages - free) * size)


def describe(journal: Journal, usage: JournalUsage) -> str:
    return (
        f"journal: live {usage.live_rows} rows/{usage.live_bytes} B, waiting {usage.waiting_rows} rows/"
        f"{usage.waiting_bytes} B, records {usage.records}; {used_bytes(journal)} B of pages in use"
    )


async def test_ten_thousand_keys_cannot_fill_the_journal_and_an_honest_task_is_accepted(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, models=[MODEL], max_concurrent=CONCURRENCY, max_queue=MAX_QUEUE)
    node = Identity.generate()
    journal = Journal.open(settings.journal_path, settings.journal_max_bytes, settings.journal_max_records)
    host = P2PHost(node.secret, LOOPBACK)
    await host.start()
    await host.subscribe(RESULTS_TOPIC)  # subscribed, with no peer: a result has nowhere to go
    metrics = NodeMetrics()
    outbox = ResultOutbox(node, host, journal, grace_s=settings.result_grace)
    pool = ExecutionPool(settings, metrics)  # not started: every task fails at once
    runner = TaskRunner(pool, outbox, metrics, settings.max_time_cap, settings.exec_cancel_grace)
    admission = Admission(runner.run, runner.abandon, {MODEL: CONCURRENCY}, MAX_QUEUE)
    acceptance = Acceptance(node.address, [MODEL], seen=SeenTasks(settings.journal_max_records))
    intake = TaskIntake(acceptance, admission, journal, runner, metrics, settings.reject_log_window)
    started = time.monotonic()
    try:
        with structlog.testing.capture_logs() as logs:
            most_bodies = 0
            for i in range(KEYS):
                prompt = ("a" if i < LARGE else "b") * (180_000 if i < LARGE else 8_000)
                intake.receive(decode(TASK_TOPIC, signed_task(Identity.generate(), f"flood-{i}", prompt, node.address)))
                await asyncio.sleep(0)  # gossip delivers one at a time: admitted tasks run (and fail) meanwhile
                if i % 100 == 0:
                    count, size = bodies_held(journal)
                    assert size <= (CONCURRENCY + MAX_QUEUE) * MAX_BODY_BYTES
                    most_bodies = max(most_bodies, count)
            for _ in range(500):  # the queue drains: the flood's last tasks fail
                if journal.usage().waiting_rows == KEYS:
                    break
                await asyncio.sleep(0.02)
            flood_s = time.monotonic() - started

            honest = Identity.generate()
            since = len(logs)
            intake.receive(decode(TASK_TOPIC, signed_task(honest, "honest", "Say hi.", node.address)))
            accepted = [e for e in logs[since:] if e["event"] == "task accepted"]
            assert [e["task_id"] for e in accepted] == ["honest"]
            entry = journal.get("honest")
            assert entry is not None and entry.task_message != b""  # journalled to run, not refused as busy
            assert not [e for e in logs if e.get("reason") in ("journal_full", "journal_error")]

            for _ in range(500):  # the honest task fails as the flood's did; its result waits too
                if journal.usage().waiting_rows == KEYS + 1:
                    break
                await asyncio.sleep(0.02)

        usage = journal.usage()
        print(f"\n{KEYS} keys in {flood_s:.1f} s; most bodies held {most_bodies}; {describe(journal, usage)}")
        assert most_bodies <= CONCURRENCY + MAX_QUEUE
        assert usage.waiting_rows == KEYS + 1  # no peers: every result waits...
        assert usage.waiting_bytes <= settings.journal_max_bytes  # ...within its cap
        assert usage.live_bytes <= LIVE_BOUND
        assert usage.bytes < LIVE_BOUND + settings.journal_max_bytes
        assert used_bytes(journal) < 32 * 1024 * 1024  # 97 MB of task bodies leave a few MB on disk

    finally:
        await intake.close()
        await admission.drain(1.0)
        await host.stop()
        journal.close()
