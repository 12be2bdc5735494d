"""13. Soak: the node's memory under a long stream of tasks, each signed by a new publisher key.

The node is permissionless: any peer may send it work under as many keys as it likes. This
runs tiny tasks (one `sample` step, no model call) at IN_FLIGHT at a time for longer than the
longest window the daemon remembers anything for, each task signed by a key never seen before,
and samples the RSS of the daemon and of its execution process every SAMPLE_S.

What the daemon keeps per task or per key is bounded by a count or by a time window: task ids
until their deadline (60 s here), held validator verdicts, the journal's rows (on disk), the
activity window. The longest is gossip's seen cache: one message id per message for
SEEN_WINDOW_S (12 min, the protocol's replay window), so RSS rises for that long and must be
flat after it. The rows compare the later half of the samples taken after that window with
the earlier half: a ratio of 1.00 is no growth.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass, field

from benchmarks.options import BenchOptions
from benchmarks.peers import PeerProcess, node_process, tree_rss_bytes
from benchmarks.report import Row, Section
from benchmarks.stats import BenchmarkError, paired_ratio, summarize
from benchmarks.workloads import MODEL_NAME, sample_workflow
from node.p2p.handoff import GossipMessage
from node.p2p.host import P2PHost
from node.publisher.tasks import Task, task_body
from node.wire.envelope import seal
from node.wire.identity import Identity
from node.wire.inbound import decode
from node.wire.messages import ResultBody, encode_body
from node.wire.topics import RESULTS_TOPIC, SEEN_WINDOW_S, TASK_TOPIC

IN_FLIGHT = 8
SAMPLE_S = 10.0
TASK_TIMEOUT_S = 60.0  # the task's deadline, and how long its result is waited for
SETTLE_S = SEEN_WINDOW_S + 30  # the samples compared start after every window has filled
MESH_WAIT_S = 20.0
MiB = 1024 * 1024


@dataclass
class Sample:
    """RSS of the node's processes at `at` seconds into the run, after `answered` results."""

    at: float
    daemon_mib: float
    execution_mib: float
    answered: int


@dataclass
class Tally:
    """What came back: results, error results (by their first words) and tasks never answered."""

    sent: int = 0
    answered: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    unanswered: int = 0


class NewKeyPublisher:
    """A raw gossip peer that publishes each task under a fresh publisher key and matches the results."""

    def __init__(self, node: PeerProcess) -> None:
        self._node = node
        self._peer = P2PHost(Identity.generate().secret, ["/ip4/127.0.0.1/tcp/0"])
        self._waiting: dict[str, asyncio.Future[ResultBody]] = {}
        self._reader: asyncio.Task[None] | None = None
        self.tally = Tally()

    async def __aenter__(self) -> NewKeyPublisher:
        await self._peer.start()
        try:
            results = await self._peer.subscribe(RESULTS_TOPIC)
            await self._peer.subscribe(TASK_TOPIC)
            await self._peer.connect(self._node.multiaddr)
            if not await self._peer.wait_for_mesh(TASK_TOPIC, MESH_WAIT_S):
                raise BenchmarkError(f"the publisher never joined the node's '{TASK_TOPIC}' mesh")
        except BaseException:
            await self._peer.stop()
            raise
        self._reader = asyncio.create_task(self._read_results(results))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        await self._peer.stop()

    async def run_one(self) -> None:
        """One task from a new key, until its result or its deadline."""
        key = Identity.generate()
        body = task_body(
            Task(workflow=sample_workflow(), models=[MODEL_NAME]), TASK_TIMEOUT_S, key.public_key_compressed.hex()
        )
        future: asyncio.Future[ResultBody] = asyncio.get_running_loop().create_future()
        self._waiting[body.task_id] = future
        self.tally.sent += 1
        try:
            await self._peer.publish(TASK_TOPIC, seal(key, TASK_TOPIC, encode_body(body)))
            result = await asyncio.wait_for(future, TASK_TIMEOUT_S)
        except TimeoutError:
            self.tally.unanswered += 1
            return
        finally:
            self._waiting.pop(body.task_id, None)
        if result.error is not None:
            reason = result.error[:60]
            self.tally.errors[reason] = self.tally.errors.get(reason, 0) + 1
        else:
            self.tally.answered += 1

    async def _read_results(self, queue: asyncio.Queue[GossipMessage]) -> None:
        while True:
            message = await queue.get()
            body = decode(RESULTS_TOPIC, message.data).body
            if isinstance(body, ResultBody) and (future := self._waiting.get(body.task_id)) and not future.done():
                future.set_result(body)


def _sample(node: PeerProcess, started: float, answered: int) -> Sample:
    daemon, execution = tree_rss_bytes(node.pid)
    return Sample(time.monotonic() - started, daemon / MiB, execution / MiB, answered)


async def run(options: BenchOptions) -> Section:
    seconds = options.pick(full=SETTLE_S + 360, quick=180)
    settle = SETTLE_S if seconds > SETTLE_S else seconds / 3
    samples: list[Sample] = []
    with node_process(options.threads, max_concurrent=4, max_queue=64, extra_args=options.node_args) as node:
        async with NewKeyPublisher(node) as publisher:
            idle = _sample(node, time.monotonic(), 0)
            started = time.monotonic()

            async def keep_sending() -> None:
                while time.monotonic() - started < seconds:
                    await publisher.run_one()

            async def keep_sampling() -> None:
                while True:
                    await asyncio.sleep(SAMPLE_S)
                    samples.append(_sample(node, started, publisher.tally.answered))

            sampler = asyncio.create_task(keep_sampling())
            try:
                await asyncio.gather(*(keep_sending() for _ in range(IN_FLIGHT)))
            finally:
                sampler.cancel()
                await asyncio.gather(sampler, return_exceptions=True)
    return soak_section(options, idle, samples, publisher.tally, seconds, settle)


def _series(samples: list[Sample], attr: str) -> list[float]:
    return [float(getattr(sample, attr)) for sample in samples]


def soak_section(
    options: BenchOptions, idle: Sample, samples: list[Sample], tally: Tally, seconds: float, settle: float
) -> Section:
    """The rows and notes of a soak run; BenchmarkError when too few samples came after `settle` s."""
    after = [s for s in samples if s.at >= settle]
    half = len(after) // 2
    if half < 3:
        raise BenchmarkError(f"soak: {len(after)} samples after {settle:.0f} s, too few to compare")
    earlier, later = after[:half], after[half : 2 * half]
    what = "soak"
    rows = [
        Row(metric="daemon RSS, idle before the run (MiB)", node=summarize([idle.daemon_mib], "MiB", what=what)),
    ]
    for name, attr in (("daemon", "daemon_mib"), ("execution process", "execution_mib")):
        node, baseline = _series(later, attr), _series(earlier, attr)
        rows.append(
            Row(
                metric=f"{name} RSS after {settle / 60:.1f} min of tasks, later half of the samples",
                node=summarize(node, "MiB", what=what),
                baseline=summarize(baseline, "MiB", what=what),
                baseline_name="the same run's earlier half",
                ratio=paired_ratio(node, baseline, what=what),
            )
        )
    fill = [s for s in samples if s.at <= settle]
    growth = ""
    if len(fill) >= 2 and fill[-1].answered > fill[0].answered:
        per_task = (fill[-1].daemon_mib - fill[0].daemon_mib) * MiB / (fill[-1].answered - fill[0].answered)
        growth = f" While the windows filled ({fill[0].at:.0f}-{fill[-1].at:.0f} s) the daemon grew {per_task:.0f} bytes a task."
    rate = tally.answered / seconds
    window = (
        f"the gossip seen window, {SEEN_WINDOW_S} s, plus 30 s"
        if settle >= SETTLE_S
        else f"--quick: shorter than the gossip seen window of {SEEN_WINDOW_S} s, so the daemon's RSS still rises"
    )
    errors = ", ".join(f"{count} x {reason!r}" for reason, count in tally.errors.items()) or "none"
    return Section(
        name="soak",
        title="13. Soak",
        rows=rows,
        notes=[
            (
                f"{seconds / 60:.1f} min of tiny `sample` tasks, {IN_FLIGHT} in flight, each under a new publisher "
                f"key (default admission, no allow-list); node flags: --max-concurrent 4 --max-queue 64 "
                f"{' '.join(options.node_args)}; RSS every {SAMPLE_S:.0f} s."
            ),
            (
                f"{tally.sent} tasks from {tally.sent} keys: {tally.answered} answered ({rate:.0f} tasks/s), "
                f"error results: {errors}, unanswered: {tally.unanswered}."
            ),
            (
                f"compared: the {2 * half} samples after {settle:.0f} s ({window}), later half against earlier "
                f"half.{growth} Daemon RSS at its "
                f"highest: {max(s.daemon_mib for s in samples):.1f} MiB, median after the windows "
                f"{statistics.median(s.daemon_mib for s in after):.1f} MiB."
            ),
        ],
    )
