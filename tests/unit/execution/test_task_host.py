"""The execution process's TaskHost: every line logged while a task runs names that task.

An operator follows one task through the daemon's log by its `task_id`; the lines the workflow engine, the
model and the tools log inside the execution process must carry it too, and never another task's (tasks run
concurrently in one process).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

import structlog

from node.execution.model_setup import ServedModel
from node.execution.protocol import Message, RunTask, TaskDone
from node.execution.task_host import TaskHost
from workflows import EngineOptions, ToolSettings
from workflows.backend import ModelBackend
from workflows.tool_http import ToolHttp

# The first step fails (its input is missing) and the engine logs that it takes its fallback; no model is called.
FALLING_BACK: dict[str, Any] = {
    "config": {"max_steps": 5, "max_time": 30},
    "external_memory": {"colours": ["red"]},
    "tasks": [
        {
            "id": "bad",
            "messages": [{"role": "user", "content": "{{x}}"}],
            "inputs": [{"name": "x", "value": {"type": "pop", "key": "nothing"}, "required": True}],
            "operator": "generation",
        },
        {
            "id": "pick",
            "messages": [{"role": "user", "content": "Colour"}],
            "inputs": [{"name": "c", "value": {"type": "string", "key": "colours"}, "required": True}],
            "operator": "sample",
            "outputs": [{"type": "write", "key": "out", "value": "__result"}],
        },
        {"id": "_end", "operator": "end"},
    ],
    "steps": [{"source": "bad", "target": "_end", "fallback": "pick"}, {"source": "pick", "target": "_end"}],
    "return_value": {"input": {"type": "read", "key": "out"}},
}


class _NoModel:
    """A model no step of FALLING_BACK calls."""

    name = "stub-model"


async def test_each_tasks_lines_carry_its_own_id_and_model() -> None:
    sent: list[Message] = []
    host = TaskHost(
        cast(ServedModel, _NoModel()),
        cast(ModelBackend, _NoModel()),
        ToolSettings(),
        EngineOptions(),
        sent.append,
        cast(ToolHttp, None),
    )
    deadline = time.time_ns() + 30 * 10**9
    with structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars]) as lines:
        for task_id in ("task-a", "task-b"):
            host.start(RunTask(task_id=task_id, workflow=FALLING_BACK, deadline_ns=deadline))
        await asyncio.wait_for(host.idle.wait(), 30)
        structlog.get_logger("after").info("outside any task")
    assert sorted(m.task_id for m in sent if isinstance(m, TaskDone)) == ["task-a", "task-b"]
    fallbacks = [(line.get("task_id"), line.get("model")) for line in lines if line["event"].startswith("step failed")]
    assert sorted(fallbacks) == [("task-a", "stub-model"), ("task-b", "stub-model")]
    assert "task_id" not in next(line for line in lines if line["event"] == "outside any task")
