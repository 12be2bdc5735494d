"""The engine's error types. `str(error)` is the human reason given back to the publisher."""

from __future__ import annotations

from typing import Literal


class WorkflowError(Exception):
    """Base of every error the workflow engine raises."""


class WorkflowValidationError(WorkflowError):
    """The workflow is malformed; the message names the field path at fault."""


class LimitExceededError(WorkflowError):
    """The run exceeded `max_steps` or `max_time`."""

    def __init__(self, limit: Literal["max_steps", "max_time"], message: str) -> None:
        super().__init__(message)
        self.limit = limit


class TaskError(WorkflowError):
    """One task failed (a missing required input, a bad model answer, ...)."""


class ToolError(WorkflowError):
    """A tool is unknown, unavailable, refused by egress policy, or failed."""


class EgressRefusedError(ToolError):
    """A tool HTTP request was refused before any connection was made."""
