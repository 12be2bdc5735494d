"""12. Direct frame checks: what a burst of largest first frames costs the node's event loop.

A direct-delivery first frame may be as large as the message limit (256 KiB); its checks
(`node.wire.inbound.decode`: base64, JSON and body validation, signature recovery) are CPU work.
The node runs them in `FrameChecks`' worker thread (node/daemon/frame_checks.py); the baseline
runs them on the event loop, each frame in a task of its own, as the node did before. Measured:
one frame's checks, and the event loop's worst lag (a 1 ms ticker's largest delay past its
deadline) while a burst of such frames, all arrived at once, is checked.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Awaitable, Callable

from benchmarks.options import BenchOptions
from benchmarks.report import Row, Section
from benchmarks.stats import BenchmarkError, alternate, paired_ratio, summarize
from benchmarks.workloads import MODEL_NAME, simple_workflow
from node.daemon.frame_checks import FrameChecks
from node.wire.envelope import EnvelopeError, seal
from node.wire.identity import Identity
from node.wire.inbound import Inbound, decode
from node.wire.topics import MAX_MESSAGE_BYTES, TASK_TOPIC

BURST = 64
TICK_S = 0.001


def largest_frame(identity: Identity, model: str = MODEL_NAME) -> bytes:
    """A valid task envelope for `model` as near the message limit as a prompt of newlines makes it (slow JSON)."""

    def sealed(chars: int) -> bytes:
        body = {
            "taskId": secrets.token_urlsafe(12),
            "deadline": time.time_ns() + 600 * 10**9,
            "input": {"workflow": simple_workflow("\n" * chars, max_tokens=8), "model": [model]},
            "publicKey": identity.public_key_compressed.hex(),
        }
        return seal(identity, TASK_TOPIC, json.dumps(body).encode())

    low, high = 1, MAX_MESSAGE_BYTES
    while low < high:
        middle = (low + high + 1) // 2
        try:
            sealed(middle)
            low = middle
        except EnvelopeError:
            high = middle - 1
    return sealed(low)


async def worst_lag_ms(check_burst: Callable[[], Awaitable[None]]) -> float:
    """The largest delay of a 1 ms ticker past its deadline while `check_burst()` runs."""
    worst = 0.0
    done = asyncio.Event()

    async def tick() -> None:
        nonlocal worst
        while not done.is_set():
            due = time.perf_counter() + TICK_S
            await asyncio.sleep(TICK_S)
            worst = max(worst, time.perf_counter() - due)

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0.01)
    try:
        await check_burst()
    finally:
        done.set()
        await ticker
    return worst * 1000


async def run(options: BenchOptions) -> Section:
    rounds = options.pick(full=10, quick=3)
    frame = largest_frame(Identity.generate())
    checks = FrameChecks()

    async def on_loop() -> Inbound:
        return decode(TASK_TOPIC, frame, time.time_ns())

    async def burst(check: Callable[[], Awaitable[Inbound]]) -> None:
        results: list[Inbound] = await asyncio.gather(*(check() for _ in range(BURST)))  # each a task of its own
        if len(results) != BURST:
            raise BenchmarkError("direct checks: a frame of the burst was not checked")

    async def in_worker(_: int) -> float:
        return await worst_lag_ms(lambda: burst(lambda: checks.task(frame, time.time_ns())))

    async def inline(_: int) -> float:
        return await worst_lag_ms(lambda: burst(on_loop))

    try:
        one = []
        for _ in range(rounds * 5):
            started = time.perf_counter()
            decode(TASK_TOPIC, frame, time.time_ns())
            one.append((time.perf_counter() - started) * 1000)
        await alternate(1, in_worker, inline)  # warm-up
        worker_lag, inline_lag = await alternate(rounds, in_worker, inline)
    finally:
        checks.close()
    what = "direct checks"
    return Section(
        name="direct_decode",
        title="12. Direct frame checks",
        rows=[
            Row(metric=f"checks of one {len(frame) // 1024} KiB first frame", node=summarize(one, "ms", what=what)),
            Row(
                metric=f"event loop's worst lag during a burst of {BURST} such frames (ms)",
                node=summarize(worker_lag, "ms", what=what),
                baseline=summarize(inline_lag, "ms", what=what),
                baseline_name="checks on the event loop",
                ratio=paired_ratio(worker_lag, inline_lag, what=what),
            ),
        ],
        notes=[
            f"{rounds} alternating rounds; each burst is {BURST} frames arrived at once, each checked in a task "
            "of its own. The node column checks them in FrameChecks' one worker thread, the baseline on the "
            f"event loop. Lag: how late a {TICK_S * 1000:g} ms ticker woke at worst.",
        ],
    )
