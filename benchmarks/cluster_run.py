"""One batch on a running cluster: P publisher processes, an optional fault mid-batch,
and what it measured (a BatchResult).

Before the batch, every node's CPU and bytes are read over an idle window (the
publishers joined, nothing sent): that is the cost of heartbeats and gossip upkeep.
During the batch the same readings give each node's cost; for the nodes no task
can pick (bootstrap, observers) everything above the idle rate is traffic that is
not for them.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from benchmarks.cluster_nodes import Cluster, ClusterNode, Usage
from benchmarks.cluster_publisher import Outcome, PublisherPlan, PublisherReport
from benchmarks.stats import BenchmarkError

Fault = Literal["none", "kill", "drain", "stop"]
ROOT = Path(__file__).resolve().parent.parent


class BatchSpec(BaseModel):
    label: str
    delivery: str
    publishers: int
    tasks: int  # in all, over the publishers
    in_flight: int  # per publisher
    attempt_timeout: float = 8.0
    attempts: int = 4
    fault: Fault = "none"
    fault_at: float = 0.4  # share of the batch completed when the fault starts
    workload: str = "sample"
    idle_s: float = 6.0
    heartbeat_interval: float = 5.0


class NodeCost(BaseModel):
    name: str
    role: str
    tasks: int
    cpu_per_s: float  # during the batch
    idle_cpu_per_s: float
    bytes_per_s: float
    idle_bytes_per_s: float


class BatchResult(BaseModel):
    spec: BatchSpec
    delivery_used: str
    serving: int  # serving nodes alive when the batch started
    members: int = 0  # nodes alive when the batch started (they all heartbeat)
    members_mean: float = 0.0  # nodes heartbeating, averaged over the batch (a fault removes some for a while)
    seconds: float
    completed: int
    lost: int
    duplicates: int
    wire_duplicates: int
    abandoned_results: int
    retried: int
    tasks_per_s: float
    p50_ms: float
    p99_ms: float
    retried_p50_ms: float = 0.0
    retried_max_ms: float = 0.0
    balance: dict[str, int]  # serving node -> tasks completed (nodes alive all batch)
    costs: list[NodeCost]
    fault_notes: list[str] = []
    drain_late_picks: int | None = None
    rejoined: bool | None = None
    result_bytes: float = 0.0
    heartbeat_bytes: float = 0.0
    heartbeat_lag_p50_s: float = 0.0  # signing to arrival at a publisher's node table
    heartbeat_lag_p99_s: float = 0.0
    heartbeats_refused: float = 0.0  # share of heartbeats the publishers' tables ignored (stale or overtaken)

    @property
    def balance_ratio(self) -> float:
        counts = list(self.balance.values())
        return max(counts) / max(min(counts), 1) if counts else 0.0

    def non_target(self) -> list[NodeCost]:
        return [c for c in self.costs if c.role == "observer"]


class _Publishers:
    """The publisher processes of one batch."""

    def __init__(self, cluster: Cluster, spec: BatchSpec, workdir: Path) -> None:
        self.spec = spec
        self.procs: list[asyncio.subprocess.Process] = []
        self.progress = [0] * spec.publishers
        self.outs = [workdir / f"publisher-{i}.json" for i in range(spec.publishers)]
        self.plans = [
            PublisherPlan(
                index=i,
                peers=cluster.peers_for_publisher(i),
                tasks=spec.tasks // spec.publishers + (1 if i < spec.tasks % spec.publishers else 0),
                in_flight=spec.in_flight,
                attempt_timeout=spec.attempt_timeout,
                attempts=spec.attempts,
                heartbeat_interval=cluster.config.heartbeat_interval,
                expect_nodes=len([n for n in cluster.serving if n.alive]),
                out=self.outs[i],
                delivery=spec.delivery,
                workload=spec.workload,
            )
            for i in range(spec.publishers)
        ]
        self.workdir = workdir

    async def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        for plan in self.plans:
            stderr = open(self.workdir / f"publisher-{plan.index}.log", "w")  # noqa: SIM115 - lives with the process
            self.procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "benchmarks.cluster_publisher",
                    plan.model_dump_json(),
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=stderr,
                    env=env,
                    cwd=ROOT,
                )  # fmt: skip
            )
        async with asyncio.timeout(180):
            for proc in self.procs:
                await self._expect(proc, "ready")

    async def _expect(self, proc: asyncio.subprocess.Process, word: str) -> None:
        assert proc.stdout is not None
        line = (await proc.stdout.readline()).decode().strip()
        if line != word:
            raise BenchmarkError(f"publisher said {line!r} (exit {proc.returncode}), not {word!r}; see its log")

    def go(self) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")

    async def follow(self, index: int) -> None:
        """Track `progress <n>` lines until `done`."""
        stdout = self.procs[index].stdout
        assert stdout is not None
        async for raw in stdout:
            line = raw.decode().strip()
            if line.startswith("progress "):
                self.progress[index] = int(line.split()[1])
            elif line == "done":
                break
        await self.procs[index].wait()

    def kill(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                proc.kill()


def _rates(before: dict[str, Usage], after: dict[str, Usage], seconds: float) -> dict[str, tuple[float, float]]:
    return {
        name: ((after[name] - before[name]).cpu / seconds, (after[name] - before[name]).received / seconds)
        for name in after
    }


async def run_batch(cluster: Cluster, spec: BatchSpec, workdir: Path, seed: int = 0) -> BatchResult:
    """Run one batch and measure it; the publishers are stopped whatever happens."""
    workdir.mkdir(parents=True, exist_ok=True)
    pubs = _Publishers(cluster, spec, workdir)
    try:
        await pubs.start()
        present = [n for n in cluster.nodes if n.alive]
        idle0, t0 = cluster.usage(), time.perf_counter()
        await asyncio.sleep(spec.idle_s)
        idle1, t1 = cluster.usage(), time.perf_counter()
        idle = _rates(idle0, idle1, t1 - t0)
        followers = [asyncio.create_task(pubs.follow(i)) for i in range(spec.publishers)]
        start_usage, started, wall0 = cluster.usage(), time.perf_counter(), time.time()
        pubs.go()
        fault = _FaultRunner(cluster, spec, random.Random(seed))
        while not all(f.done() for f in followers):
            if not fault.started and sum(pubs.progress) >= spec.fault_at * spec.tasks:
                await fault.start()
            await fault.tick()
            await asyncio.sleep(0.05)
        await fault.finish()
        for f in followers:
            f.result()
        ended, wall1 = time.perf_counter(), time.time()
        end_usage = cluster.usage()
    finally:
        pubs.kill()
    reports = [PublisherReport.model_validate_json(out.read_text()) for out in pubs.outs]
    busy = _rates(start_usage, end_usage, ended - started)
    result = _result(present, spec, reports, idle, busy, started, ended, fault)
    result.members_mean = _members_mean(result.members, fault, wall0, wall1)
    return result


def _members_mean(members: int, fault: _FaultRunner, wall0: float, wall1: float) -> float:
    """Nodes heartbeating, averaged over the batch: a killed or drained node counts until the fault,
    a frozen one except while it was stopped."""
    if not fault.victims:
        return float(members)
    if fault.spec.fault == "stop":
        away = max(min(fault.resumed_at or wall1, wall1) - fault.at, 0.0)
    else:
        away = max(wall1 - fault.at, 0.0)
    return members - len(fault.victims) * min(away / max(wall1 - wall0, 1e-9), 1.0)


class _FaultRunner:
    def __init__(self, cluster: Cluster, spec: BatchSpec, rng: random.Random) -> None:
        self.cluster, self.spec, self.rng = cluster, spec, rng
        self.started = False
        self.victims: list[ClusterNode] = []
        self.at = 0.0  # wall clock (time.time) of the fault
        self.resume_at: float | None = None
        self.resumed_at = 0.0

    async def start(self) -> None:
        self.started = True
        alive = [n for n in self.cluster.serving if n.alive]
        self.at = time.time()
        if self.spec.fault == "kill":
            self.victims = self.rng.sample(alive, max(1, len(alive) // 3))
            for node in self.victims:
                node.signal(signal.SIGKILL)
        elif self.spec.fault in ("drain", "stop"):
            self.victims = [self.rng.choice(alive)]
            if self.spec.fault == "drain":
                self.victims[0].signal(signal.SIGTERM)
                self.victims[0].alive = False  # it leaves; stop() reaps it
            else:
                self.victims[0].signal(signal.SIGSTOP)
                self.resume_at = time.perf_counter() + 2.5 * self.cluster.config.heartbeat_interval

    async def tick(self) -> None:
        if self.resume_at is not None and time.perf_counter() >= self.resume_at:
            self.victims[0].signal(signal.SIGCONT)
            self.resume_at = None
            self.resumed_at = time.time()

    async def finish(self) -> None:
        if self.resume_at is not None:  # the batch ended while it was frozen
            self.resume_at = time.perf_counter()
            await self.tick()


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def _result(
    present: list[ClusterNode],
    spec: BatchSpec,
    reports: list[PublisherReport],
    idle: dict[str, tuple[float, float]],
    busy: dict[str, tuple[float, float]],
    started: float,
    ended: float,
    fault: _FaultRunner,
) -> BatchResult:
    outcomes: list[Outcome] = [o for r in reports for o in r.outcomes]
    done = [o for o in outcomes if o.ok]
    latencies = [(o.ended - o.started) * 1000 for o in done]
    retried = [(o.ended - o.started) * 1000 for o in done if o.attempts > 1 or o.sends > 1]
    victims = {n.address for n in fault.victims}
    lags = [lag for r in reports for lag in r.heartbeat_lags]
    per_node: dict[str, int] = {}
    for o in done:
        per_node[o.node] = per_node.get(o.node, 0) + 1
    balance = {n.name: per_node.get(n.address, 0) for n in present if n.role == "serving" and n.address not in victims}
    addresses = {n.name: n.address for n in present}
    costs = [
        NodeCost(
            name=name,
            role=name.split("-")[0],
            tasks=per_node.get(addresses.get(name, ""), 0),
            cpu_per_s=busy[name][0],
            idle_cpu_per_s=idle[name][0],
            bytes_per_s=busy[name][1],
            idle_bytes_per_s=idle[name][1],
        )
        for name in busy
        if name in addresses or name.startswith("bootstrap")
    ]
    result = BatchResult(
        spec=spec,
        delivery_used=reports[0].delivery,
        serving=len([n for n in present if n.role == "serving"]),
        members=len(costs),
        seconds=ended - started,
        completed=len(done),
        lost=len(outcomes) - len(done) + (spec.tasks - len(outcomes)),
        duplicates=sum(n - 1 for r in reports for n in r.completions.values() if n > 1),
        wire_duplicates=sum(r.wire_duplicates for r in reports),
        abandoned_results=sum(r.abandoned_results for r in reports),
        retried=len(retried),
        tasks_per_s=len(done) / (ended - started),
        p50_ms=_percentile(latencies, 50),
        p99_ms=_percentile(latencies, 99),
        retried_p50_ms=_percentile(retried, 50),
        retried_max_ms=max(retried, default=0.0),
        balance=balance,
        costs=costs,
        result_bytes=statistics.fmean([b for r in reports for b in r.result_bytes] or [0]),
        heartbeat_bytes=statistics.fmean([b for r in reports for b in r.heartbeat_bytes] or [0]),
        heartbeat_lag_p50_s=_percentile(lags, 50),
        heartbeat_lag_p99_s=_percentile(lags, 99),
        heartbeats_refused=sum(r.heartbeats_refused for r in reports) / max(len(lags), 1),
    )
    _fault_notes(result, reports, fault)
    return result


def _fault_notes(result: BatchResult, reports: list[PublisherReport], fault: _FaultRunner) -> None:
    spec = result.spec
    if spec.fault == "none" or not fault.victims:
        return
    names = ", ".join(n.name for n in fault.victims)
    picks = [s for r in reports for s in r.submissions if s.node in {n.address for n in fault.victims}]
    if spec.fault == "kill":
        result.fault_notes.append(
            f"kill -9 of {len(fault.victims)} serving nodes ({names}) at {spec.fault_at:.0%} of the batch; "
            f"{result.retried} tasks needed a retry: p50 {result.retried_p50_ms:.0f} ms, "
            f"max {result.retried_max_ms:.0f} ms (all tasks: p50 {result.p50_ms:.0f} ms)"
        )
    elif spec.fault == "drain":
        address = fault.victims[0].address
        leaving = [r.leaving[address] for r in reports if address in r.leaving]
        if leaving:
            late = [
                s
                for r in reports
                for s in r.submissions
                if s.node == address and r.leaving.get(address, float("inf")) + 1.0 < s.at
            ]
            result.drain_late_picks = len(late)
            result.fault_notes.append(
                f"SIGTERM drain of {names}: `leaving` heartbeat reached {len(leaving)}/{len(reports)} publishers "
                f"{min(leaving) - fault.at:.2f} s after the signal; {len(late)} tasks sent to it more than 1 s "
                "after its `leaving` heartbeat"
            )
        else:
            after = [s.at - fault.at for s in picks if s.at > fault.at]
            result.fault_notes.append(
                f"SIGTERM drain of {names}: no `leaving` heartbeat (protocol 0.4 not in this tree); "
                f"{len(after)} tasks sent to it after the signal, the last {max(after, default=0):.1f} s after"
            )
    else:
        address = fault.victims[0].address
        during = [s for s in picks if fault.at <= s.at <= fault.resumed_at]
        done_after = [
            o for r in reports for o in r.outcomes if o.ok and o.node == address and o.ended > fault.resumed_at
        ]
        heard = [r for r in reports if r.last_heartbeat.get(address, 0.0) > fault.resumed_at]
        result.rejoined = len(heard) == len(reports)
        result.fault_notes.append(
            f"SIGSTOP of {names} for {fault.resumed_at - fault.at:.1f} s: {len(during)} tasks sent to it while "
            f"frozen; {result.retried} tasks retried; {result.duplicates} duplicates reached a caller; "
            f"{len(heard)}/{len(reports)} publishers heard its heartbeat after SIGCONT "
            f"({'rejoined' if result.rejoined else 'NOT rejoined'}), {len(done_after)} tasks completed on it after"
        )
