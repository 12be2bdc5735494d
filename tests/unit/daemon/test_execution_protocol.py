"""The daemon's side of execution processes without a process: the JSON-lines messages and exit descriptions."""

from __future__ import annotations

import signal

import pytest

from node.daemon.execution.handle import describe_exit
from node.daemon.execution.protocol import Probe, RunTask, TaskDone, decode_from_child, decode_to_child, encode


def test_messages_round_trip_as_json_lines() -> None:
    run = RunTask(task_id="t1", workflow={"a": [1, "x\ny"]}, prompt="p", deadline_ns=5)
    line = encode(run)
    assert line.endswith(b"\n") and line.count(b"\n") == 1  # newlines inside strings are escaped
    assert decode_to_child(line) == run
    done = TaskDone(task_id="t1", text="hi", steps=1, prompt_tokens=3, completion_tokens=2)
    assert decode_from_child(encode(done)) == done
    with pytest.raises(Exception, match="bad message"):
        decode_from_child(encode(Probe(probe_id=1)))  # a daemon-side message is not a child's answer


def test_exit_descriptions_name_the_signal() -> None:
    assert describe_exit(-signal.SIGSEGV) == "SIGSEGV"
    assert describe_exit(-signal.SIGKILL) == "SIGKILL"
    assert describe_exit(3) == "exit code 3"
