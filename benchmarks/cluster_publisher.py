"""One publisher of the cluster harness, in a process of its own:
`python -m benchmarks.cluster_publisher '<PublisherPlan JSON>'`.

It joins the network through `peers`, waits until it has heard `expect_nodes`
serving nodes, prints `ready`, and starts its batch when a line `go` arrives on
stdin. It keeps `in_flight` tasks running with the project's `Client`; a caller's
task that fails (timeout, busy, node gone) is sent again, to another node, as a
new attempt, at most `attempts` times. Every `progress_every` completions it
prints `progress <n>`; at the end it writes a PublisherReport (JSON) to `out`.

It counts at the caller: a task completed twice is a duplicate, a task that never
completed is lost. On the wire it counts results for one task id that arrive
more than once, and results of abandoned attempts that arrive anyway (the work
was done twice, but the caller got it once).
"""

from __future__ import annotations

import asyncio
import inspect
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from benchmarks.workloads import MODEL_NAME, sample_workflow, simple_workflow
from node.publisher.client import Client, ClientError, Task, TaskFailedError
from node.publisher.node_table import NodeTable
from node.wire.envelope import Envelope, sealed_size
from node.wire.inbound import Inbound
from node.wire.messages import HeartbeatBody, ResultBody


class PublisherPlan(BaseModel):
    index: int
    peers: list[str]
    tasks: int
    in_flight: int
    attempt_timeout: float
    attempts: int
    heartbeat_interval: float
    expect_nodes: int
    out: Path
    delivery: str | None = None  # passed to Client only when it takes `delivery`
    workload: str = "sample"  # or "generate": a short real generation
    progress_every: int = 20


class Outcome(BaseModel):
    """One caller's task: when it was asked for, when it completed, where, after how many attempts."""

    key: int
    started: float
    ended: float
    ok: bool
    attempts: int  # calls of Client.execute (the harness's own retries)
    sends: int = 0  # tasks sent over all attempts (the Client's retries included)
    node: str = ""
    error: str = ""


class Submission(BaseModel):
    at: float
    task_id: str
    node: str | None


class HeartbeatLag(NodeTable):
    """The Client's node table, noting how old each heartbeat was when it reached the table
    (arrival - its signed timestamp), accepted or not: the freshness the publisher could judge."""

    def __init__(self, ttl: float) -> None:
        super().__init__(ttl=ttl)
        self.lags: list[float] = []
        self.refused = 0

    def update(
        self, sender: str, heartbeat: HeartbeatBody, now: float | None = None, envelope: Envelope | None = None
    ) -> bool:
        now = time.time() if now is None else now
        self.lags.append(now - heartbeat.timestamp / 1e9)
        accepted = super().update(sender, heartbeat, now, envelope)
        self.refused += not accepted
        return accepted


class PublisherReport(BaseModel):
    index: int
    delivery: str  # what the Client actually used
    outcomes: list[Outcome]
    submissions: list[Submission]
    completions: dict[int, int]  # caller task -> times it completed (must be 1)
    wire_duplicates: int  # results for one task id seen more than once
    abandoned_results: int  # results of attempts already given up on
    leaving: dict[str, float]  # node address -> when its `leaving` heartbeat arrived
    last_heartbeat: dict[str, float]  # node address -> when its latest heartbeat arrived
    cpu_seconds: float
    result_bytes: list[int]
    heartbeat_bytes: list[int]
    heartbeat_lags: list[float] = []  # seconds from a heartbeat's signing to its arrival, every one seen
    heartbeats_refused: int = 0  # heartbeats the node table ignored (stale, replayed, overtaken)


def supports_delivery() -> bool:
    """Whether this tree's Client takes `delivery=` (protocol 0.4)."""
    return "delivery" in inspect.signature(Client).parameters


class Publisher:
    def __init__(self, plan: PublisherPlan) -> None:
        self.plan = plan
        self.submissions: list[Submission] = []
        self.results_seen: dict[str, int] = {}
        self.attempt_of: dict[str, int] = {}  # task id -> caller task
        self.sends: dict[int, int] = {}  # caller task -> tasks sent for it
        self.completions: dict[int, int] = {}
        self.leaving: dict[str, float] = {}
        self.last_heartbeat: dict[str, float] = {}
        self.result_bytes: list[int] = []
        self.heartbeat_bytes: list[int] = []
        kwargs: dict[str, Any] = {}
        self.delivery = "gossip"
        if plan.delivery is not None and supports_delivery():
            kwargs["delivery"] = plan.delivery
            self.delivery = plan.delivery
        self.table = HeartbeatLag(ttl=2 * plan.heartbeat_interval)
        self.client = Client(
            peers=plan.peers,
            connect_timeout=60.0,
            node_table=self.table,
            on_message=self._observe,
            **kwargs,
        )

    def _observe(self, inbound: Inbound) -> None:
        body = inbound.body
        size = sealed_size(inbound.signed.topic, inbound.signed.body)
        if isinstance(body, ResultBody):
            self.results_seen[body.task_id] = self.results_seen.get(body.task_id, 0) + 1
            self.result_bytes.append(size)
        elif isinstance(body, HeartbeatBody):
            self.heartbeat_bytes.append(size)
            self.last_heartbeat[inbound.sender] = time.time()
            if getattr(body, "leaving", False) and inbound.sender not in self.leaving:
                self.leaving[inbound.sender] = time.time()

    def _task(self, key: int) -> Task:
        if self.plan.workload == "generate":
            workflow = simple_workflow(f"Name one colour. ({self.plan.index}-{key})", max_tokens=8)
        else:
            workflow = sample_workflow()
        return Task(workflow=workflow, models=[MODEL_NAME])

    def _submitted(self, key: int, task_id: str, node: str | None) -> None:
        self.attempt_of[task_id] = key
        self.sends[key] = self.sends.get(key, 0) + 1
        self.submissions.append(Submission(at=time.time(), task_id=task_id, node=node))

    async def one(self, key: int) -> Outcome:
        started = time.time()
        error = ""
        for attempt in range(1, self.plan.attempts + 1):
            try:
                result = await self.client.execute(
                    self._task(key),
                    timeout=self.plan.attempt_timeout,
                    on_submit=lambda task_id, node: self._submitted(key, task_id, node),
                )
            except TaskFailedError as exc:
                if not exc.retryable:
                    error = str(exc)
                    break
                error = str(exc)
            except ClientError as exc:  # timeout, no node
                error = str(exc)
            else:
                self.completions[key] = self.completions.get(key, 0) + 1
                return Outcome(key=key, started=started, ended=time.time(), ok=True, attempts=attempt, node=result.node)
        sends = self.sends.get(key, 0)
        return Outcome(
            key=key, started=started, ended=time.time(), ok=False, attempts=attempt, sends=sends, error=error[:300]
        )

    async def run(self) -> PublisherReport:
        await self.client.start()
        patience = time.monotonic() + 60.0  # then go with the nodes heard so far (a loaded machine)
        while len([n for n in self.client.nodes.live() if n.serves([MODEL_NAME])]) < self.plan.expect_nodes:
            if time.monotonic() > patience and self.client.nodes.live():
                break
            await asyncio.sleep(0.2)
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        cpu0 = time.process_time()
        keys = iter(range(self.plan.tasks))
        outcomes: list[Outcome] = []

        async def worker() -> None:
            for key in keys:
                outcomes.append(await self.one(key))
                if len(outcomes) % self.plan.progress_every == 0:
                    print(f"progress {len(outcomes)}", flush=True)

        await asyncio.gather(*(worker() for _ in range(self.plan.in_flight)))
        await asyncio.sleep(2 * self.plan.heartbeat_interval)  # late results of abandoned attempts
        winners = {o.key for o in outcomes if o.ok}
        done_ids = {tid for tid, k in self.attempt_of.items() if k in winners}
        abandoned = sum(1 for tid in self.results_seen if tid in self.attempt_of and tid in done_ids) - len(winners)
        report = PublisherReport(
            index=self.plan.index,
            delivery=self.delivery,
            outcomes=sorted(outcomes, key=lambda o: o.key),
            submissions=self.submissions,
            completions=self.completions,
            wire_duplicates=sum(n - 1 for n in self.results_seen.values() if n > 1),
            abandoned_results=max(abandoned, 0),
            leaving=self.leaving,
            last_heartbeat=self.last_heartbeat,
            cpu_seconds=time.process_time() - cpu0,
            result_bytes=self.result_bytes[:200],
            heartbeat_bytes=self.heartbeat_bytes[:200],
            heartbeat_lags=[round(lag, 3) for lag in self.table.lags],
            heartbeats_refused=self.table.refused,
        )
        await self.client.close()
        return report


async def _main(plan: PublisherPlan) -> None:
    report = await Publisher(plan).run()
    plan.out.write_text(report.model_dump_json())
    print("done", flush=True)


if __name__ == "__main__":
    from node.ops.log import configure_logging

    configure_logging("warning", "console")
    asyncio.run(_main(PublisherPlan.model_validate_json(sys.argv[1])))
