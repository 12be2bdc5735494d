"""Decode progress on the real batched runtime: every native call is counted and names whose it is."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from models.batching import BatchedLlamaModel
from models.options import RuntimeOptions
from models.progress import ProgressSnapshot, request_owner
from models.requests import ChatMessage, GenerationRequest
from tests.support.model_file import loaded_smollm2


@pytest.fixture(scope="module")
def model() -> Iterator[BatchedLlamaModel]:
    with loaded_smollm2(RuntimeOptions(n_ctx=512, n_threads=1), parallel=2) as loaded:
        yield loaded


async def _generate_as(model: BatchedLlamaModel, owner: str, text: str) -> None:
    request_owner.set(owner)  # this task's context only, as the execution process does per task
    messages = [ChatMessage(role="user", content=text)]
    await model.generate(GenerationRequest(messages=messages, max_tokens=12, ignore_eos=True))


async def test_calls_are_counted_and_each_names_the_tasks_inside_it(
    model: BatchedLlamaModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = model.progress()
    assert before is not None and before.busy == 0 and before.call is None
    seen: list[ProgressSnapshot] = []  # what another thread saw while calls ran
    # What the snapshot said inside every call: a sample lasts ~0.1 ms, so polling alone may miss it.
    inside: list[ProgressSnapshot] = []
    stop = threading.Event()
    progress = model._decode_loop._progress
    native_call = progress.native_call

    @contextmanager
    def recorded_call(*args: object, **kwargs: object) -> Iterator[None]:
        with native_call(*args, **kwargs):  # type: ignore[arg-type]
            snapshot = model.progress()
            assert snapshot is not None
            inside.append(snapshot)
            yield

    monkeypatch.setattr(progress, "native_call", recorded_call)

    def sample() -> None:  # another thread, as the execution process's probe answers are
        while not stop.is_set():
            snapshot = model.progress()
            assert snapshot is not None
            if snapshot.call is not None:
                seen.append(snapshot)
            stop.wait(0.0005)

    watcher = threading.Thread(target=sample)
    watcher.start()
    try:
        await asyncio.gather(_generate_as(model, "task-a", "Say one."), _generate_as(model, "task-b", "Say two."))
    finally:
        stop.set()
        watcher.join()
    after = model.progress()
    for _ in range(100):  # the last result is delivered from inside its sampling call, which then ends
        if after is not None and after.call is None:
            break
        await asyncio.sleep(0.01)
        after = model.progress()
    assert after is not None and after.busy == 0 and after.call is None
    # Per request: one start, one sample per token, plus the decodes they share.
    assert after.calls_done - before.calls_done >= 2 * (1 + 12)
    assert after.seconds_per_token > 0
    assert {snapshot.call for snapshot in inside} == {"start", "decode", "sample"}
    assert sum(snapshot.call == "sample" for snapshot in inside) >= 2 * 12
    assert "decode" in {snapshot.call for snapshot in seen}  # the probe's view from another thread
    for snapshot in inside + seen:
        assert set(snapshot.owners) <= {"task-a", "task-b"} and snapshot.owners
        if snapshot.call == "sample":
            assert len(snapshot.owners) == 1  # one sequence's own sampler
        if snapshot.call == "decode":
            assert snapshot.call_tokens >= 1
