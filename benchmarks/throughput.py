"""4. Network throughput: how many tiny tasks per second one node accepts and answers when
the publisher keeps K tasks in flight, and the CPU seconds per gossip message.

K grows until the node's capacity is the limit (tasks/s stops rising). Each window
runs for a fixed time; node windows alternate with windows of the bare gossipsub
echo at the same K. CPU per message is the process's user+system CPU over the
window divided by the gossip messages it handled (each task or ping is one
received and one published message). The echo peer is nothing but the P2P layer,
so its number is the P2P layer's cost; the node's adds everything else. The P2P (Trio)
threads are also compared alone, per round trip: the node's against the echo peer's, and this
process's (the publisher's) against the echo client's.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections.abc import Awaitable, Callable

from pydantic import BaseModel

from benchmarks.echo_peer import EchoClient, echo_process
from benchmarks.options import BenchOptions, Publisher
from benchmarks.peers import PeerProcess, node_process
from benchmarks.report import Row, Section
from benchmarks.stats import BenchmarkError, paired_ratio, summarize
from benchmarks.workloads import sample_workflow
from node.publisher.client import TaskFailedError

# Enough slots that refusals ("busy") do not cap the rate before the P2P path does.
NODE_MAX_CONCURRENT = 8
NODE_MAX_QUEUE = 256


class Window(BaseModel):
    """What one fixed-time window with K messages in flight achieved."""

    done: int
    refused: int
    seconds: float
    peer_cpu: float
    publisher_cpu: float
    # The peer's CPU seconds by where they ran: main thread (event loop), other threads, execution processes.
    peer_split: tuple[float, float, float] = (0.0, 0.0, 0.0)
    # CPU seconds of this process's own P2P host thread (the publisher's or the echo client's Trio thread).
    publisher_p2p_cpu: float = 0.0

    @property
    def rate(self) -> float:
        return self.done / self.seconds

    def cpu_per_message(self) -> float:
        return self.peer_cpu / (2 * self.done) if self.done else 0.0


def p2p_threads() -> dict[str, int]:
    """This process's P2P host threads (node.p2p.host.P2PHost runs Trio in `p2p-trio-<peer id>`): name -> ident."""
    return {t.name: t.ident for t in threading.enumerate() if t.name.startswith("p2p-trio-") and t.ident is not None}


def thread_cpu_seconds(ident: int | None) -> float:
    """CPU seconds so far of the thread `ident` of this process (0.0 for None or a thread that ended)."""
    if ident is None:
        return 0.0
    try:
        return time.clock_gettime(time.pthread_getcpuclockid(ident))
    except (OSError, ProcessLookupError):
        return 0.0


def _new_p2p_thread(before: dict[str, int]) -> int | None:
    """The P2P host thread started since `before` was taken (None if not exactly one)."""
    new = [ident for name, ident in p2p_threads().items() if name not in before]
    return new[0] if len(new) == 1 else None


async def _window(
    in_flight: int,
    seconds: float,
    peer: PeerProcess,
    one: Callable[[], Awaitable[bool]],
    own_p2p_thread: int | None = None,
) -> Window:
    """Keep `in_flight` calls of `one` running for `seconds`; count successes (True) and refusals.

    `own_p2p_thread`: the ident of this process's P2P host thread that `one` goes through."""
    done = refused = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done, refused
        while time.perf_counter() < deadline:
            if await one():
                done += 1
            else:
                refused += 1

    cpu0, own0, started = peer.cpu_seconds(), time.process_time(), time.perf_counter()
    split0, p2p0 = peer.cpu_split(), thread_cpu_seconds(own_p2p_thread)
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    elapsed = time.perf_counter() - started
    split1, p2p1 = peer.cpu_split(), thread_cpu_seconds(own_p2p_thread)
    return Window(
        publisher_p2p_cpu=p2p1 - p2p0,
        peer_split=(split1[0] - split0[0], split1[1] - split0[1], split1[2] - split0[2]),
        done=done,
        refused=refused,
        seconds=elapsed,
        peer_cpu=peer.cpu_seconds() - cpu0,
        publisher_cpu=time.process_time() - own0,
    )


async def run(options: BenchOptions) -> Section:
    levels = [1, 4, 16] if options.quick else [1, 4, 16, 32]
    rounds = options.pick(full=2, quick=1)
    seconds = options.pick(full=4, quick=2)
    workflow = sample_workflow()
    node_windows: dict[int, list[Window]] = {k: [] for k in levels}
    echo_windows: dict[int, list[Window]] = {k: [] for k in levels}
    with (
        node_process(
            options.threads, max_concurrent=NODE_MAX_CONCURRENT, max_queue=NODE_MAX_QUEUE, extra_args=options.node_args
        ) as node,
        echo_process() as echo,
    ):
        before = p2p_threads()
        async with Publisher(node) as publisher:
            publisher_thread = _new_p2p_thread(before)
            before = p2p_threads()
            async with EchoClient(echo.multiaddr) as pinger:
                client_thread = _new_p2p_thread(before)

                async def one_task() -> bool:
                    try:
                        await publisher.run(workflow, timeout=60)
                    except TaskFailedError as exc:
                        if "busy" in exc.reason:
                            return False
                        raise
                    return True

                async def one_ping() -> bool:
                    await pinger.round_trip(timeout=60)
                    return True

                await _window(2, 0.5, node, one_task)  # warm-up
                await _window(2, 0.5, echo, one_ping)
                for _ in range(rounds):
                    for k in levels:
                        node_windows[k].append(await _window(k, seconds, node, one_task, publisher_thread))
                        echo_windows[k].append(await _window(k, seconds, echo, one_ping, client_thread))
    return _section(options, levels, rounds, seconds, node_windows, echo_windows)


def _section(
    options: BenchOptions,
    levels: list[int],
    rounds: int,
    seconds: float,
    node_windows: dict[int, list[Window]],
    echo_windows: dict[int, list[Window]],
) -> Section:
    what = "throughput"
    rows: list[Row] = []
    for k in levels:
        node_rates = [w.rate for w in node_windows[k]]
        echo_rates = [w.rate for w in echo_windows[k]]
        rows.append(
            Row(
                metric=f"tasks/s with {k} in flight",
                node=summarize(node_rates, "tasks/s", what=what),
                baseline=summarize(echo_rates, "msg/s", what=what),
                baseline_name="bare gossipsub echo",
                ratio=paired_ratio(node_rates, echo_rates, what=what),
            )
        )
    all_node = [w for ws in node_windows.values() for w in ws]
    all_echo = [w for ws in echo_windows.values() for w in ws]
    if not all(w.done for w in all_node + all_echo):
        raise BenchmarkError("a throughput window completed no message")
    node_cpu = [w.cpu_per_message() * 1000 for w in all_node]
    echo_cpu = [w.cpu_per_message() * 1000 for w in all_echo]
    rows.append(
        Row(
            metric="CPU per gossip message (process user+sys)",
            node=summarize(node_cpu, "ms", what=what),
            baseline=summarize(echo_cpu, "ms", what=what),
            baseline_name="bare gossipsub echo = P2P layer",
            ratio=paired_ratio(node_cpu, echo_cpu, what=what),
        )
    )
    best = max(levels, key=lambda k: summarize([w.rate for w in node_windows[k]], "", what=what).median)
    refused = sum(w.refused for w in all_node)
    publisher_share = max(w.publisher_cpu / w.seconds for w in all_node)
    loop_ms, threads_ms, exec_ms = (
        statistics.median(w.peer_split[i] / w.done * 1000 for w in all_node) for i in range(3)
    )
    return Section(
        name="throughput",
        title="4. Network throughput",
        rows=rows,
        notes=[
            (
                f"{rounds} round(s) of {seconds:g} s windows per K, node and echo alternately; one-step `sample` "
                f"workflow; node with max_concurrent {NODE_MAX_CONCURRENT}, max_queue {NODE_MAX_QUEUE}."
            ),
            f"highest node rate at K={best}; {refused} tasks refused as busy over all windows.",
            (
                f"node CPU per task (two gossip messages), median over windows: event loop thread {loop_ms:.2f} ms "
                f"(intake, journal, runner, ECIES, signing, logs), other threads {threads_ms:.2f} ms (the P2P "
                f"host's Trio thread: gossip, the validator's decode), execution process {exec_ms:.2f} ms."
            ),
            p2p_thread_note(all_node, all_echo),
            (
                f"the publisher (this process: client, signing, decryption) used up to {publisher_share:.0%} of one "
                "core; on a 2-core machine publisher and node share the CPU, so the rate is a lower bound for the node."
            ),
        ],
    )


def p2p_thread_note(node_windows: list[Window], echo_windows: list[Window]) -> str:
    """The P2P (Trio) threads per round trip, node against echo peer and publisher against echo client.

    Windows are paired in the order they ran (node and echo alternate). A peer's P2P thread is its
    "other threads" (the echo peer has no other busy thread; the node's Trio thread is most of them).
    """
    what = "throughput"
    node_p2p = [w.peer_split[1] / w.done * 1000 for w in node_windows]
    echo_p2p = [w.peer_split[1] / w.done * 1000 for w in echo_windows]
    ratio = paired_ratio(node_p2p, echo_p2p, what=what)
    text = (
        f"P2P (Trio) thread CPU per round trip, median over windows: node {statistics.median(node_p2p):.2f} ms, "
        f"echo peer {statistics.median(echo_p2p):.2f} ms (paired ratio {ratio.text()})"
    )
    publisher_p2p = [w.publisher_p2p_cpu / w.done * 1000 for w in node_windows]
    client_p2p = [w.publisher_p2p_cpu / w.done * 1000 for w in echo_windows]
    if all(publisher_p2p) and all(client_p2p):
        ratio = paired_ratio(publisher_p2p, client_p2p, what=what)
        text += (
            f"; publisher {statistics.median(publisher_p2p):.2f} ms, echo client "
            f"{statistics.median(client_p2p):.2f} ms (paired ratio {ratio.text()})"
        )
    return text + "."
