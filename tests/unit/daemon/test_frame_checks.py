"""A direct first frame's checks off the event loop (node/daemon/frame_checks.py): the same verdicts as
gossip's `decode`, in the order the frames arrived, and the loop runs while a burst of 256 KiB frames is checked."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from benchmarks.direct_decode import largest_frame
from node.daemon.frame_checks import FrameChecks
from node.wire.identity import Identity
from node.wire.inbound import InboundError, decode
from node.wire.messages import TaskBody
from node.wire.topics import MAX_MESSAGE_BYTES, TASK_TOPIC
from tests.support.hostile_scene import task_envelope

BURST = 32


@pytest.fixture
def checks() -> Iterator[FrameChecks]:
    checks = FrameChecks()
    yield checks
    checks.close()


async def test_a_frame_gets_the_verdict_gossip_gives_it(checks: FrameChecks) -> None:
    identity = Identity.generate()
    frame = task_envelope(identity)
    checked = await checks.task(frame, time.time_ns())
    assert checked.body == decode(TASK_TOPIC, frame).body and isinstance(checked.body, TaskBody)
    assert checked.signed.sender == identity.address
    with pytest.raises(InboundError) as bad:
        await checks.task(b'{"not": "an envelope"}', time.time_ns())
    assert bad.value.reason == decode_reason(b'{"not": "an envelope"}')
    stale = task_envelope(identity)
    with pytest.raises(InboundError):  # checked at its arrival time, not when the worker got to it
        await checks.task(stale, time.time_ns() + 3600 * 10**9)


def decode_reason(frame: bytes) -> str:
    with pytest.raises(InboundError) as error:
        decode(TASK_TOPIC, frame)
    return error.value.reason


async def test_frames_are_checked_in_the_order_they_arrived(checks: FrameChecks) -> None:
    identity = Identity.generate()
    frames = [task_envelope(identity, prompt=f"task {i}") for i in range(BURST)]
    done: list[int] = []

    async def check(i: int) -> None:
        await checks.task(frames[i], time.time_ns())
        done.append(i)

    await asyncio.gather(*(check(i) for i in range(BURST)))
    assert done == list(range(BURST))


async def test_the_event_loop_runs_while_a_burst_of_the_largest_frames_is_checked(checks: FrameChecks) -> None:
    frame = largest_frame(Identity.generate())
    assert len(frame) > MAX_MESSAGE_BYTES - 1024
    ticks = 0
    burst_done = False

    async def tick() -> None:
        nonlocal ticks
        while not burst_done:
            await asyncio.sleep(0)
            ticks += 1

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0)
    before = ticks
    checked = await asyncio.gather(*(checks.task(frame, time.time_ns()) for _ in range(BURST)))
    burst_done = True
    await ticker
    assert all(isinstance(c.body, TaskBody) for c in checked)
    # On the loop, the burst's checks would run back to back in one turn: no tick between them.
    assert ticks - before > BURST, ticks - before
