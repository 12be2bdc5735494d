"""2. Node overhead: publish -> verified result latency of a workflow that makes no model
call (one `sample` step), next to a bare gossipsub publish -> receive -> reply round
trip between the same kind of two hosts (benchmarks.echo_peer).

Both are sequential (one message in flight) and run in alternating blocks.
The difference is what the node adds: signing, validation, intake, admission,
the workflow engine, ECIES encryption and the client's verification.
"""

from __future__ import annotations

import statistics

from benchmarks.echo_peer import EchoClient, echo_process
from benchmarks.options import BenchOptions, Publisher
from benchmarks.peers import node_process
from benchmarks.report import Row, Section
from benchmarks.stats import BenchmarkError, alternate, paired_ratio, summarize
from benchmarks.workloads import sample_workflow

BLOCK = 10
WARMUP = 5


async def run(options: BenchOptions) -> Section:
    total = options.pick(full=200, quick=100)
    blocks = total // BLOCK
    node_ms: list[float] = []
    echo_ms: list[float] = []
    workflow = sample_workflow()
    with node_process(options.threads, extra_args=options.node_args) as node, echo_process() as echo:
        async with Publisher(node) as publisher, EchoClient(echo.multiaddr) as pinger:
            for _ in range(WARMUP):
                await publisher.run(workflow)
                await pinger.round_trip()

            async def node_block(_: int) -> None:
                for _ in range(BLOCK):
                    result, seconds = await publisher.run(workflow, timeout=30)
                    if not any(colour in result.text for colour in ("red", "green", "blue")):
                        raise BenchmarkError(f"sample workflow answered {result.text!r}")
                    node_ms.append(seconds * 1000)

            async def echo_block(_: int) -> None:
                for _ in range(BLOCK):
                    echo_ms.append(await pinger.round_trip() * 1000)

            await alternate(blocks, node_block, echo_block)
    what = "overhead"
    # Ratio per block pair (medians of each block of 10), so drift between blocks cancels.
    node_blocks = [statistics.median(node_ms[i : i + BLOCK]) for i in range(0, len(node_ms), BLOCK)]
    echo_blocks = [statistics.median(echo_ms[i : i + BLOCK]) for i in range(0, len(echo_ms), BLOCK)]
    node_summary = summarize(node_ms, "ms", what=what, percentiles=True)
    bare = summarize(echo_ms, "ms", what=what, percentiles=True)
    return Section(
        name="overhead",
        title="2. Node overhead",
        rows=[
            Row(
                metric=f"sample task publish -> verified result (n={len(node_ms)})",
                node=node_summary,
                baseline=bare,
                baseline_name="bare gossipsub ping -> pong",
                ratio=paired_ratio(node_blocks, echo_blocks, what=what),
            ),
        ],
        notes=[
            (
                f"{blocks} alternating blocks of {BLOCK} sequential messages per side, after {WARMUP} warm-up each; "
                "the ratio is the median over block pairs of (node block median / echo block median)."
            ),
            (
                f"the node adds {node_summary.median - bare.median:.1f} ms at p50 and {(node_summary.p95 or 0) - (bare.p95 or 0):.1f} ms at p95 "
                "over the bare P2P round trip (signing, validation, intake, admission, workflow, ECIES, verification)."
            ),
            (
                "bare round trip: two node.p2p.P2PHost peers (py-libp2p TCP+Noise+Yamux+gossipsub, same asyncio<->Trio "
                "bridge as the node) in two processes, 64-byte payloads."
            ),
        ],
    )
