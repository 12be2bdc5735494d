"""The engine's error types and the one function that turns an error into public text.

`str(error)` is the human reason; `public_error_text` is what a node may send
back in an error result: errors that fail the same way on any node
(`deterministic`) start with `Invalid prompt: `, the others never contain that
phrase, and no text carries task data (prompt text, memory values, model
output, tool URLs): messages name causes and workflow structure only.
"""

from __future__ import annotations

import re
from typing import ClassVar, Literal

from models.requests import ModelError

INVALID_PROMPT = "Invalid prompt: "
MAX_ERROR_CHARS = 500
_PHRASE = re.compile(r"invalid\s+prompt", re.IGNORECASE)

Limit = Literal["max_steps", "max_time", "max_tokens", "memory"]


def max_time_exceeded(seconds: float) -> str:
    """The error text of a run stopped at its (capped) max_time; the engine and the daemon both say it."""
    return f"max_time exceeded: the workflow ran longer than {seconds:g} s"


class WorkflowError(Exception):
    """Base of every error the workflow engine raises."""

    # True when the same workflow fails the same way on any node (no retry helps).
    deterministic: ClassVar[bool] = False


class WorkflowValidationError(WorkflowError):
    """The workflow is malformed; the message names the field path at fault."""

    deterministic = True


class LimitExceededError(WorkflowError):
    """The run exceeded a budget: steps, time, tokens or memory."""

    def __init__(self, limit: Limit, message: str) -> None:
        super().__init__(message)
        self.limit = limit


class ResultTooLargeError(WorkflowError):
    """The result is larger than this node sends back."""


class StepError(WorkflowError):
    """One step failed (a bad model answer, an empty stack, ...)."""


class InvalidStepError(StepError):
    """A step cannot run as written (a missing required input, no message to send)."""

    deterministic = True


class ContextTooSmallError(InvalidStepError):
    """A generation's prompt plus max_tokens do not fit one slot of the model's context (refused before it ran)."""


class AnswerCutShortError(InvalidStepError):
    """A generation under a schema ended at the max_tokens the workflow itself set, its answer incomplete: the
    task asked for too few tokens, on any node (one whose lower cap cut it raises a plain StepError)."""


class UnsupportedSchemaError(InvalidStepError):
    """A step's JSON schema cannot be turned into a grammar."""


class ModelFailedError(StepError):
    """The model failed while running a step (transient: another node may succeed)."""


class ToolError(WorkflowError):
    """A tool is unavailable, refused by egress policy, or failed."""


class InvalidToolError(ToolError):
    """The workflow names an unknown tool or uses tools in a way no node can run."""

    deterministic = True


class EgressRefusedError(ToolError):
    """A tool HTTP request was refused before any connection was made."""


def public_error_text(error: BaseException) -> str:
    """The error text a node sends for `error` (see the module docstring)."""
    if isinstance(error, WorkflowError):
        text = str(error)
        if isinstance(error, WorkflowValidationError):
            text = f"invalid workflow: {text}"
    elif isinstance(error, ModelError):
        text = f"model error: {error}"
    else:
        text = f"internal error: {type(error).__name__}"
    # Workflow-chosen names (task ids, keys) must not forge the deterministic marker.
    text = _PHRASE.sub("invalid-prompt", text)
    if len(text) > MAX_ERROR_CHARS:
        text = text[: MAX_ERROR_CHARS - 3] + "..."
    if isinstance(error, WorkflowError) and error.deterministic:
        return INVALID_PROMPT + text
    return text
