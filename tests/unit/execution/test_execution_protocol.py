"""The daemon's side of execution processes without a process: the JSON-lines messages and exit descriptions."""

from __future__ import annotations

import asyncio
import signal
from datetime import UTC, datetime
from pathlib import Path

import pytest

from models.benchmark import MEASURE_BEFORE_READY, CacheFile
from node.daemon.processes.exits import describe_exit
from node.daemon.processes.handle import ExecutionProcess
from node.daemon.processes.strays import MAX_STRAYS
from node.execution.protocol import (
    MAX_PROVISIONAL_SPEEDS,
    Benchmarked,
    Measured,
    Pong,
    Probe,
    ProtocolError,
    Ready,
    RunTask,
    TaskDone,
    TaskFailed,
    decode_from_child,
    decode_to_child,
    encode,
)
from node.execution.task_host import sendable_text
from tests.support.spawned_child import SpawnedChild


def test_messages_round_trip_as_json_lines() -> None:
    run = RunTask(task_id="t1", workflow={"a": [1, "x\ny"]}, prompt="p", deadline_ns=5)
    line = encode(run)
    assert line.endswith(b"\n") and line.count(b"\n") == 1  # newlines inside strings are escaped
    assert decode_to_child(line) == run
    done = TaskDone(task_id="t1", text="hi", steps=1, prompt_tokens=3, completion_tokens=2)
    assert decode_from_child(encode(done)) == done
    with pytest.raises(Exception, match="bad message"):
        decode_from_child(encode(Probe(probe_id=1)))  # a daemon-side message is not a child's answer


def test_a_done_message_carries_the_result_generation_s_finish_reason() -> None:
    done = TaskDone(task_id="t", text="hi", steps=1, prompt_tokens=1, completion_tokens=1, finish_reason="length")
    assert decode_from_child(encode(done)) == done
    assert decode_from_child(
        b'{"kind":"done","task_id":"t","text":"hi","steps":1,"prompt_tokens":1,"completion_tokens":1}\n'
    ) == done.model_copy(update={"finish_reason": None})
    with pytest.raises(ProtocolError):
        decode_from_child(encode(done).replace(b'"length"', b'"banana"'))


def test_pongs_carry_decode_progress_and_old_pongs_still_decode() -> None:
    line = (
        b'{"kind":"pong","probe_id":4,'
        b'"progress":{"calls_done":12,"busy":1,"call":"sample","task_ids":["t1"],"call_seconds":0.5}}\n'
    )
    pong = decode_from_child(line)
    assert isinstance(pong, Pong) and pong.progress is not None
    assert pong.progress.call == "sample" and pong.progress.task_ids == ["t1"] and pong.progress.calls_done == 12
    assert decode_from_child(encode(pong)) == pong
    plain = decode_from_child(b'{"kind":"pong","probe_id":5}\n')
    assert isinstance(plain, Pong) and plain.progress is None  # a remote engine's process reports none
    with pytest.raises(ProtocolError):
        decode_from_child(line.replace(b'"sample"', b'"elsewhere"'))  # only the decode loop's calls


def test_exit_descriptions_name_the_signal() -> None:
    assert describe_exit(-signal.SIGSEGV) == "SIGSEGV"
    assert describe_exit(-signal.SIGKILL) == "SIGKILL"
    assert describe_exit(3) == "exit code 3"


@pytest.mark.parametrize(
    ("what", "line"),
    [
        (
            "a million empty traces",
            b'{"kind":"done","task_id":"t","text":"","steps":1,"prompt_tokens":1,'
            b'"completion_tokens":1,"traces":[' + b",".join([b"{}"] * 1_000_000) + b"]}",
        ),
        (
            "a trace of unknown fields",
            b'{"kind":"done","task_id":"t","text":"","steps":1,"prompt_tokens":1,'
            b'"completion_tokens":1,"traces":[{"x":[' + b",".join([b"{}"] * 100_000) + b"]}]}",
        ),
        ("an error of a million characters", b'{"kind":"failed","task_id":"t","error":"' + b"e" * 1_000_000 + b'"}'),
        ("an infinite speed", b'{"kind":"ready","model":"m","parallel":1,"generation_tps":Infinity}'),
        ("a million slots", b'{"kind":"ready","model":"m","parallel":1000000}'),
        ("a task id of a million characters", b'{"kind":"failed","task_id":"' + b"t" * 1_000_000 + b'","error":"e"}'),
        (
            "a probe answer naming a million tasks",
            b'{"kind":"pong","probe_id":1,"progress":{"calls_done":1,"busy":0,'
            b'"task_ids":[' + b",".join([b'"t"'] * 1_000_000) + b"]}}",
        ),
        ("a speed past what publishers read", b'{"kind":"ready","model":"m","parallel":1,"generation_tps":1e7}'),
        ("a measured speed of nothing", b'{"kind":"benchmarked","model":"m","generation_tps":0}'),
        ("an infinite measured speed", b'{"kind":"benchmarked","model":"m","generation_tps":Infinity}'),
        ("a measured speed past what publishers read", b'{"kind":"benchmarked","model":"m","generation_tps":2e6}'),
        ("a negative step", b'{"kind":"benchmarked","model":"m","generation_tps":5,"step_seconds":-1}'),
        ("a step of ages", b'{"kind":"benchmarked","model":"m","generation_tps":5,"step_seconds":1e300}'),
        ("a ready step of ages", b'{"kind":"ready","model":"m","parallel":1,"step_seconds":1e300}'),
        (
            "a cache key that is a path",
            b'{"kind":"measured","key":"../identity.key","model":"m","prompt_tps":1,"generation_tps":1,'
            b'"measured_at":"2026-12-06T00:00:00Z"}',
        ),
        (
            "a cached speed past what publishers read",
            b'{"kind":"measured","key":"ab","model":"m","prompt_tps":1,"generation_tps":1e7,'
            b'"measured_at":"2026-12-06T00:00:00Z"}',
        ),
        (
            "an infinite decode time",
            b'{"kind":"pong","probe_id":1,"progress":{"calls_done":1,"busy":0,"seconds_per_token":1e999}}',
        ),
    ],
)
def test_what_a_compromised_child_sends_is_bounded_field_by_field(what: str, line: bytes) -> None:
    """A hostile workflow may own the child: no line costs the daemon more than its bytes, whatever it holds."""
    with pytest.raises(ProtocolError):
        decode_from_child(line)


def test_a_result_with_a_lone_surrogate_still_travels() -> None:
    """A remote engine's JSON may hold a lone surrogate, which UTF-8 cannot carry: it becomes "?", the
    result is kept (it was lost to `internal error: PydanticSerializationError`)."""
    done = TaskDone(task_id="t", text=sendable_text("a\ud800b"), steps=1, prompt_tokens=1, completion_tokens=1)
    assert decode_from_child(encode(done)).text == "a?b"  # type: ignore[union-attr]


async def test_a_stream_of_answers_for_tasks_it_was_not_given_ends_the_process_as_broken() -> None:
    """A few strays follow a cancel; hundreds a minute are a child sending what it likes, each line a parse."""
    process = ExecutionProcess("m", {}, on_exit=lambda _: None)
    stray = TaskFailed(task_id="never-sent", error="x" * 100)
    for _ in range(MAX_STRAYS):
        process._dispatch(decode_from_child(encode(stray)))
    with pytest.raises(ProtocolError, match="for tasks it was not given"):
        process._dispatch(decode_from_child(encode(stray)))


def _ready_process(benchmark_later: bool) -> tuple[ExecutionProcess, list[ExecutionProcess]]:
    seen: list[ExecutionProcess] = []
    process = ExecutionProcess("m", {}, on_exit=lambda _: None)
    process.on_benchmarked = seen.append
    process.ready = Ready(model="m", parallel=1, benchmark_later=benchmark_later)
    return process, seen


def test_a_speed_measured_after_ready_reaches_the_owner_provisional_then_clean_and_no_more() -> None:
    process, seen = _ready_process(benchmark_later=True)
    provisional = Benchmarked(model="m", generation_tps=20.0, step_seconds=3.0, provisional=True)
    process._dispatch(decode_from_child(encode(provisional)))
    assert seen == [process] and process.benchmarked == provisional
    clean = Benchmarked(model="m", generation_tps=42.5, step_seconds=2.0)
    process._dispatch(decode_from_child(encode(clean)))
    assert seen == [process, process] and process.benchmarked == clean
    for late in (clean, provisional):  # after the clean figure: a child saying what it likes
        with pytest.raises(ProtocolError, match="unexpected Benchmarked"):
            process._dispatch(decode_from_child(encode(late)))
    assert process.benchmarked == clean and len(seen) == 2


def test_provisional_speeds_past_their_bound_end_the_child_as_broken() -> None:
    process, seen = _ready_process(benchmark_later=True)
    for tps in range(1, MAX_PROVISIONAL_SPEEDS + 1):
        process._dispatch(decode_from_child(encode(Benchmarked(model="m", generation_tps=tps, provisional=True))))
    assert len(seen) == MAX_PROVISIONAL_SPEEDS
    with pytest.raises(ProtocolError, match="unexpected Benchmarked"):
        process._dispatch(decode_from_child(encode(Benchmarked(model="m", generation_tps=1e6, provisional=True))))
    assert process.benchmarked is not None and process.benchmarked.generation_tps == MAX_PROVISIONAL_SPEEDS


@pytest.mark.parametrize(
    ("benchmark_later", "model"), [(False, "m"), (True, "another-model")], ids=["not announced", "another model"]
)
def test_a_measured_speed_the_child_did_not_announce_ends_it_as_broken(benchmark_later: bool, model: str) -> None:
    """Only a child whose `ready` said its speed comes later may send one, for its own model: a child whose
    speed was read from the cache cannot replace it (one that measures after `ready` reports what it
    measures, which the daemon cannot check; a restarted process's cached figure replaces it)."""
    process, seen = _ready_process(benchmark_later)
    with pytest.raises(ProtocolError, match="unexpected Benchmarked"):
        process._dispatch(decode_from_child(encode(Benchmarked(model=model, generation_tps=1e6))))
    assert seen == [] and process.benchmarked is None


def _measured(tps: float) -> bytes:
    return encode(
        Measured(
            key="ab12", model="m", prompt_tps=tps, generation_tps=tps, measured_at=datetime(2026, 12, 6, tzinfo=UTC)
        )
    )


async def test_the_daemon_keeps_a_measured_speed_only_from_a_process_it_had_sent_no_task(tmp_path: Path) -> None:
    """The speed cache is the daemon's: a figure measured while loading is kept; once a task went to the process,
    a workflow may own it, and what it reports is not kept for the next process (nor the next start)."""
    speeds = CacheFile(tmp_path / "speeds.json")
    speeds.put("cd34", {"model": "m", "prompt_tps": 1.0, "generation_tps": 2.0, "measured_at": "2026-12-01T00:00:00Z"})
    process = ExecutionProcess("m", {}, on_exit=lambda _: None, speeds=speeds)
    process._proc = SpawnedChild()  # type: ignore[assignment]
    reader = process._reader = asyncio.StreamReader()
    sent: list[bytes] = []
    process._send = lambda message: sent.append(encode(message))  # type: ignore[method-assign]
    starting = asyncio.ensure_future(process.start(60.0))
    reader.feed_data(_measured(50.0) + b'{"kind":"ready","model":"m","parallel":1,"benchmark_later":true}\n')
    assert (await starting).parallel == 1
    assert "cd34" in decode_to_child(sent[0]).speeds  # type: ignore[union-attr]  # the cache, in `configure`
    assert speeds.entries()["ab12"]["generation_tps"] == 50.0  # measured before any task: kept

    running = asyncio.ensure_future(process.run(RunTask(task_id="t", workflow={}, deadline_ns=0)))
    await asyncio.sleep(0)
    reader.feed_data(_measured(99_999.0))  # after a task went to it: what a taken-over process would say
    reader.feed_data(encode(TaskDone(task_id="t", text="", steps=1, prompt_tokens=1, completion_tokens=1)))
    assert isinstance(await running, TaskDone)
    assert speeds.entries()["ab12"]["generation_tps"] == 50.0  # and a figure it holds is not replaced by a request
    assert process.alive  # one such line is no broken protocol: an honest process's idle measurement can follow a task
    reader.feed_eof()
    assert process._reader_task is not None
    await process._reader_task


async def test_a_speed_measured_after_a_task_asks_the_next_start_to_measure_before_it_serves(tmp_path: Path) -> None:
    """A busy node's first figure comes after its first task: not kept, and without a figure for the model the
    store asks the next start to measure before `ready`, when no task can have reached the process."""
    for case, (ready, expected) in enumerate(
        [
            (b'{"kind":"ready","model":"m","parallel":1,"benchmark_later":true,"speed_key":"cd56"}\n', True),
            (b'{"kind":"ready","model":"m","parallel":1}\n', False),  # it named no key: none a child names later
        ]
    ):
        speeds = CacheFile(tmp_path / f"speeds-{case}.json")
        speeds.put("cd56", {"model": "m", "generation_tps": "fast"})  # no valid figure: to be measured again
        process = ExecutionProcess("m", {}, on_exit=lambda _: None, speeds=speeds)
        process._proc = SpawnedChild()  # type: ignore[assignment]
        reader = process._reader = asyncio.StreamReader()
        process._send = lambda message: None  # type: ignore[method-assign]
        starting = asyncio.ensure_future(process.start(60.0))
        reader.feed_data(ready)
        await starting
        running = asyncio.ensure_future(process.run(RunTask(task_id="t", workflow={}, deadline_ns=0)))
        await asyncio.sleep(0)
        reader.feed_data(_measured(99_999.0) + _measured(1.0))  # after a task, for a key of the child's choice
        reader.feed_data(encode(TaskDone(task_id="t", text="", steps=1, prompt_tokens=1, completion_tokens=1)))
        await running
        reader.feed_eof()
        assert process._reader_task is not None
        await process._reader_task
        assert "ab12" not in speeds.entries()  # no figure of the child's, under no key it named
        assert (speeds.entries()["cd56"] == {"model": "m", MEASURE_BEFORE_READY: True}) is expected
