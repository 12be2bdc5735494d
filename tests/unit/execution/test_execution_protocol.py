"""The daemon's side of execution processes without a process: the JSON-lines messages and exit descriptions."""

from __future__ import annotations

import signal

import pytest

from node.daemon.processes.handle import describe_exit
from node.execution.protocol import (
    Pong,
    Probe,
    ProtocolError,
    RunTask,
    TaskDone,
    decode_from_child,
    decode_to_child,
    encode,
)


def test_messages_round_trip_as_json_lines() -> None:
    run = RunTask(task_id="t1", workflow={"a": [1, "x\ny"]}, prompt="p", deadline_ns=5)
    line = encode(run)
    assert line.endswith(b"\n") and line.count(b"\n") == 1  # newlines inside strings are escaped
    assert decode_to_child(line) == run
    done = TaskDone(task_id="t1", text="hi", steps=1, prompt_tokens=3, completion_tokens=2)
    assert decode_from_child(encode(done)) == done
    with pytest.raises(Exception, match="bad message"):
        decode_from_child(encode(Probe(probe_id=1)))  # a daemon-side message is not a child's answer


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
