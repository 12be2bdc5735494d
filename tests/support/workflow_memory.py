"""A workflow memory holding the entries the workflow engine's tests read."""

from __future__ import annotations

from workflows.backend import ModelBackend
from workflows.memory import Memory


def sample_memory(model: ModelBackend) -> Memory:
    return Memory.create(
        model,
        {"name": "Ada", "num": "42", "obj": '{"a": 1}', "s": ["x", "y", "z"], "colours": ["red"]},
        prompt="the prompt",
    )
