"""The workflow engine: validates and runs workflow programs on a model backend.

It knows nothing of the network; models are reached only through `ModelBackend`.

schema.py         Workflow: the pydantic models of the workflow format, `parse_workflow`
schema_limits.py  caps on the JSON schemas a workflow hands to constrained decoding
engine.py         `run_workflow`: walks the graph (steps, conditions, fallbacks, loops, limits)
operators.py      `run_step`: one step's operator (generation, function calling, search, ...)
score_operator.py the `score` operator: log-probabilities of given token ids (verifying another node)
conditions.py     the edge-condition expressions
inputs.py         resolving inputs against memory, writing a step's outputs
placeholders.py   filling `{{name}}` / `{name}` placeholders
memory.py         a run's memory: cache, stacks, vector file store
key_sources.py    which memory keys a workflow can ever fill (a miss on the others is deterministic)
return_value.py   the run's result string from the return value specification
streamed_step.py  which step's generation is the result's text (the one that may stream progress)
tool_calls.py     asking a model for a tool call and parsing it
tools/            the tools a workflow may offer the model (built-in and custom)
tool_http.py      a tool's HTTP request and answer, and `ToolHttp`, the channel they travel (`fetch`)
allowance.py      an amount that refills at a rate up to a burst (CPU seconds, requests)
cpu_meter.py      coroutines metered against an allowance of CPU (egress.py: a hostile answer's parse)
egress.py         safe outbound HTTP for tools: the network side (the daemon runs it; allow-list, secrets)
response_text.py  an answer's body as text: decompressed under the cap, its charset found (where the workflow runs)
meta_charset.py   the charset an HTML page names in a <meta> tag, found as browsers find it (response_text.py)
backend.py        ModelBackend: the interface through which the engine calls models
options.py        EngineOptions, ToolSettings: the operator's configuration of the engine (allow-list parsed once)
errors.py         the engine's error types and their public text
strict_json.py    json.loads hooks that refuse what is not JSON (NaN, Infinity, numbers past a float's range)
builders.py       publisher-side builders of common workflows (`Simple`)
"""

from workflows.backend import ModelBackend
from workflows.builders import Simple
from workflows.engine import WorkflowResult, run_workflow
from workflows.errors import (
    EgressRefusedError,
    LimitExceededError,
    ResultTooLargeError,
    StepError,
    ToolError,
    WorkflowError,
    WorkflowValidationError,
    public_error_text,
)
from workflows.options import EngineOptions, SearchProvider, ToolSettings
from workflows.schema import Workflow, parse_workflow
from workflows.tool_calls import arguments_error

__all__ = [
    "EgressRefusedError",
    "EngineOptions",
    "LimitExceededError",
    "ModelBackend",
    "ResultTooLargeError",
    "SearchProvider",
    "Simple",
    "StepError",
    "ToolError",
    "ToolSettings",
    "Workflow",
    "WorkflowError",
    "WorkflowResult",
    "WorkflowValidationError",
    "arguments_error",
    "parse_workflow",
    "public_error_text",
    "run_workflow",
]
