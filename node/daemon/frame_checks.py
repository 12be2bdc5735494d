"""FrameChecks: the checks of a direct-delivery first frame, run in one worker thread of their own.

A first frame may be up to the 256 KiB message limit; its checks (base64, JSON and body
validation, signature recovery: `node.wire.inbound.decode`) cost about 1-2.5 ms there
(benchmarks/direct_decode.py). On the event loop, frames from many peers would each hold it that
long, one after another; in one worker thread they queue there in the order they arrived (their
number bounded by the stream limits), and the loop waits at most a GIL switch interval for the
GIL at each turn, not for the whole queue.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from node.wire.inbound import Inbound, decode
from node.wire.topics import TASK_TOPIC

THREAD_NAME = "direct-checks"


class FrameChecks:
    """Decodes and verifies task frames off the event loop, one at a time, first come first checked."""

    def __init__(self) -> None:
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=THREAD_NAME)

    async def task(self, frame: bytes, arrived_ns: int) -> Inbound:
        """The frame's task, checked as gossip checks it at `arrived_ns`; InboundError naming what is wrong."""
        return await asyncio.get_running_loop().run_in_executor(self._worker, decode, TASK_TOPIC, frame, arrived_ns)

    def close(self) -> None:
        """Drop the frames not yet checked; the one being checked finishes in the background."""
        self._worker.shutdown(wait=False, cancel_futures=True)
