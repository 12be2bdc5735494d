"""The workflow engine: validates and runs workflow programs on a model backend.

It knows nothing of the network; models are reached only through `ModelBackend`.
"""

from workflows.backend import ModelBackend
from workflows.builders import Simple
from workflows.errors import (
    EgressRefusedError,
    LimitExceededError,
    ResultTooLargeError,
    TaskError,
    ToolError,
    WorkflowError,
    WorkflowValidationError,
    public_error_text,
)
from workflows.executor import WorkflowResult, run_workflow
from workflows.options import EngineOptions, SearchProvider, ToolSettings
from workflows.schema import Workflow, parse_workflow

__all__ = [
    "EgressRefusedError",
    "EngineOptions",
    "LimitExceededError",
    "ModelBackend",
    "ResultTooLargeError",
    "SearchProvider",
    "Simple",
    "TaskError",
    "ToolError",
    "ToolSettings",
    "Workflow",
    "WorkflowError",
    "WorkflowResult",
    "WorkflowValidationError",
    "parse_workflow",
    "public_error_text",
    "run_workflow",
]
