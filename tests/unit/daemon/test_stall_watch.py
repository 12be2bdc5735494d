"""The stall watchdog's verdicts (processes/stall.py) and the gate suspects rerun through (rerun_gate.py)."""

from __future__ import annotations

import asyncio

import pytest

from node.daemon.processes.stall import STEP_MULTIPLE, UNMEASURED_STEP_S, StallWatch
from node.daemon.rerun_gate import RerunGate
from node.execution.protocol import Progress


def test_bounds_sampling_gets_the_floor_a_decode_gets_its_expected_time_on_top() -> None:
    watch = StallWatch(floor_s=5.0, step_s=0.5)
    assert watch.bound("sample") == watch.bound("start") == 5.0
    assert watch.bound("decode", 8) == watch.bound(None) == 5.0 + STEP_MULTIPLE * 0.5  # the benchmark's step
    # Decodes measured slower than the benchmark: a big batch expects its tokens at that speed.
    watch.observe(Progress(calls_done=1, busy=1, seconds_per_token=0.01), now=0.0)
    assert watch.bound("decode", 512) == 5.0 + STEP_MULTIPLE * 5.12
    assert watch.bound("decode", 8) == 5.0 + STEP_MULTIPLE * 0.5
    # Nothing measured at all (no benchmark, no decode yet): a generous guess.
    assert StallWatch(floor_s=5.0, step_s=None).bound("decode", 512) == 5.0 + STEP_MULTIPLE * UNMEASURED_STEP_S


def test_a_restarted_process_starts_from_what_the_last_one_measured() -> None:
    old = StallWatch(floor_s=5.0, step_s=None)
    old.observe(Progress(calls_done=4, busy=1, seconds_per_token=0.02), now=0.0)
    new = StallWatch(floor_s=5.0, step_s=None, seconds_per_token=old.seconds_per_token)
    new.observe(Progress(calls_done=0, busy=1), now=1.0)  # nothing measured yet: keeps the inherited speed
    assert new.bound("decode", 100) == 5.0 + STEP_MULTIPLE * 2.0
    new.observe(Progress(calls_done=3, busy=1, seconds_per_token=0.001), now=2.0)  # its own measure wins
    assert new.bound("decode", 100) == 5.0 + STEP_MULTIPLE * 0.1


def test_a_sampling_call_past_the_floor_is_its_task_alone() -> None:
    watch = StallWatch(floor_s=5.0, step_s=1.0)
    progress = Progress(calls_done=10, busy=2, call="sample", task_ids=["a"], call_seconds=1.0)
    assert watch.observe(progress, now=100.0) is None
    assert not watch.lagging(101.4) and watch.lagging(101.6)  # past half its bound: out of the heartbeats
    assert watch.observe(progress.model_copy(update={"call_seconds": 4.9}), now=103.9) is None
    stall = watch.observe(progress.model_copy(update={"call_seconds": 5.1}), now=104.1)
    assert stall is not None and stall.call == "sample" and stall.task_ids == {"a"} and stall.sole


def test_a_decode_call_suspects_every_task_in_the_batch_none_alone() -> None:
    watch = StallWatch(floor_s=5.0, step_s=1.0)
    progress = Progress(calls_done=3, busy=3, call="decode", task_ids=["a", "b"], call_seconds=8.5, call_tokens=9)
    assert watch.observe(progress, now=0.0) is None  # 8.5 s < 5 + 4 x 1 s
    stall = watch.observe(progress.model_copy(update={"call_seconds": 9.5}), now=1.0)
    assert stall is not None and stall.task_ids == {"a", "b"} and not stall.sole
    alone = watch.observe(progress.model_copy(update={"task_ids": ["a"], "call_seconds": 9.5}), now=1.0)
    assert alone is not None and not alone.sole  # a batch decode's cost is not one task's own


def test_no_finished_call_with_sequences_running_is_a_stall_with_no_suspect() -> None:
    watch = StallWatch(floor_s=1.0, step_s=2.0)  # bound: 1 + 4 x 2 = 9 s
    assert watch.observe(Progress(calls_done=7, busy=1), now=0.0) is None
    assert watch.observe(Progress(calls_done=8, busy=1), now=4.0) is None  # progress: the clock restarts
    assert watch.observe(Progress(calls_done=8, busy=1), now=12.9) is None
    stall = watch.observe(Progress(calls_done=8, busy=1), now=13.1)
    assert stall is not None and stall.call is None and stall.task_ids == frozenset() and not stall.sole


def test_an_idle_loop_never_stalls_and_a_backend_without_progress_is_never_judged() -> None:
    watch = StallWatch(floor_s=5.0, step_s=None)
    assert watch.observe(Progress(calls_done=1, busy=0), now=0.0) is None
    assert watch.observe(Progress(calls_done=1, busy=0), now=600.0) is None
    assert not watch.lagging(1200.0)
    assert watch.observe(Progress(calls_done=1, busy=1), now=601.0) is None  # work began: the clock starts now
    assert watch.observe(None, now=5000.0) is None and not watch.busy


@pytest.mark.asyncio
async def test_a_suspect_waits_for_running_tasks_and_runs_alone_while_others_wait() -> None:
    gate = RerunGate()
    order: list[str] = []
    first_done = asyncio.Event()
    suspect_done = asyncio.Event()

    async def shared(name: str, until: asyncio.Event | None = None) -> None:
        async with gate.shared():
            order.append(f"{name} in")
            if until is not None:
                await until.wait()
            order.append(f"{name} out")

    async def suspect() -> None:
        async with gate.alone():
            order.append("suspect in")
            await suspect_done.wait()
            order.append("suspect out")

    running = asyncio.create_task(shared("first", first_done))
    await asyncio.sleep(0.01)
    waiting_suspect = asyncio.create_task(suspect())
    await asyncio.sleep(0.01)
    beside = asyncio.create_task(shared("beside"))  # a suspect waiting holds nobody back
    await asyncio.sleep(0.01)
    assert order == ["first in", "beside in", "beside out"]
    first_done.set()
    await asyncio.sleep(0.01)
    assert order[-2:] == ["first out", "suspect in"]
    later = asyncio.create_task(shared("later"))  # while the suspect runs, others wait
    await asyncio.sleep(0.01)
    assert order[-1] == "suspect in"
    suspect_done.set()
    await asyncio.gather(running, waiting_suspect, beside, later)
    assert order[-3:] == ["suspect out", "later in", "later out"]
