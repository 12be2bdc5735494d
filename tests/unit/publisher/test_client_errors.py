"""Which error results a publisher retries on another node."""

from __future__ import annotations

import pytest

from node.publisher.client import TaskFailedError

NODE_SIDE = [
    "busy: model m has 4 running and 8 queued tasks",
    "interrupted: node shutting down",
    "internal error: KeyError",
    "model error: context overflow",
    "model runtime crashed (SIGSEGV)",
    "model runtime stopped answering (5 s without a health probe answer)",
    "model runtime exceeded its memory limit (900 MiB RSS > 800 MiB)",
]
TASK_SIDE = [
    "Invalid prompt: the task crashed the model runtime twice (SIGSEGV)",
    "Invalid prompt: unknown operator 'x'",
    "max_time exceeded: the workflow ran longer than 2 s",
    "result too large",
]


@pytest.mark.parametrize("reason", NODE_SIDE)
def test_node_side_failures_are_retried(reason: str) -> None:
    assert TaskFailedError("t", reason, "0xnode").retryable


@pytest.mark.parametrize("reason", TASK_SIDE)
def test_task_side_failures_are_not(reason: str) -> None:
    assert not TaskFailedError("t", reason, "0xnode").retryable
