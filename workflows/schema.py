"""Pydantic models of the workflow format: config, steps (JSON `tasks`), edges (JSON `steps`), return value.

Null-dumped and omitted optional fields mean the same thing: every model drops
`null` values before validation so defaults apply.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from models.grammar import GrammarError, json_schema_grammar, regex_grammar
from workflows.errors import WorkflowValidationError
from workflows.schema_limits import check_schema
from workflows.strict_json import no_constant

InputType = Literal["input", "read", "pop", "peek", "get_all", "size", "string", "search"]
OutputType = Literal["write", "push", "insert"]
# `score` is this engine's addition (workflows/score_operator.py): engines that do not know it refuse it.
Operator = Literal["generation", "function_calling", "function_calling_raw", "search", "score", "sample", "end"]
Expression = Literal[
    "Equal",
    "NotEqual",
    "Contains",
    "NotContains",
    "GreaterThan",
    "LessThan",
    "GreaterThanOrEqual",
    "LessThanOrEqual",
    "HaveSimilar",
]
ProcessType = Literal["replace", "append", "prepend", "trim", "trim_start", "trim_end", "to_lower", "to_upper"]
END_NODES = frozenset({"_end", "__end"})
MAX_POST_PROCESS = 16
RESULT_VALUE = "__result"


class _Model(BaseModel):
    """Base: `null` fields are treated as absent."""

    model_config = ConfigDict(populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _drop_nulls(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None}
        return data


class InputValue(_Model):
    """Where a value comes from: memory, a literal, or a file-store search."""

    type: InputType
    key: str = ""
    index: int | None = Field(default=None, ge=0)
    search_query: InputValue | None = None

    @model_validator(mode="after")
    def _search_needs_query(self) -> InputValue:
        if self.type == "search" and self.search_query is None:
            raise ValueError("type 'search' needs a search_query")
        return self


class StepInput(_Model):
    """A named input of a step, rendered into its messages as a placeholder."""

    name: str
    value: InputValue
    required: bool = True


class StepOutput(_Model):
    """Where a step's result (or a literal) goes after the step succeeds."""

    type: OutputType
    key: str
    value: str = RESULT_VALUE


class Message(_Model):
    """A chat message."""

    role: Literal["system", "user", "assistant"]
    content: str = ""


@dataclass(frozen=True)
class RegexSchema:
    """A `schema` given as base64 of a regex the answer must match (Dria's SDK, Ollama/OpenRouter models)."""

    pattern: str


class Step(_Model):
    """One node of the graph: an operator applied to filled-in messages."""

    id: str = Field(min_length=1)
    name: str = ""
    description: str = ""
    messages: list[Message] = Field(default_factory=list)
    inputs: list[StepInput] = Field(default_factory=list)
    operator: Operator
    outputs: list[StepOutput] = Field(default_factory=list)
    json_schema: dict[str, Any] | RegexSchema | None = Field(default=None, alias="schema")

    @model_validator(mode="before")
    @classmethod
    def _legacy_prompt(cls, data: Any) -> Any:
        # Older workflows carry a single `prompt` string instead of `messages`.
        if isinstance(data, dict) and data.get("prompt") is not None and not data.get("messages"):
            data = {**data, "messages": [{"role": "user", "content": data["prompt"]}]}
        return data

    @field_validator("json_schema", mode="before")
    @classmethod
    def _parse_schema(cls, raw: Any) -> Any:
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            return None  # "" (a builder's zero value) means no schema, like null; never an empty regex
        if isinstance(raw, str):
            raw = _decode_schema(raw)
        elif not isinstance(raw, dict):
            raise ValueError("must be a JSON schema given as a string")  # noqa: TRY004 (pydantic wants ValueError)
        if isinstance(raw, dict):
            check_schema(raw)  # grammar bombs stop here, before the batched runtime sees them
        try:  # a constraint the grammar engine refuses fails here, the same way on every node
            regex_grammar(raw.pattern) if isinstance(raw, RegexSchema) else json_schema_grammar(raw)
        except GrammarError as exc:
            raise ValueError(f"unsupported schema: {exc}") from None
        return raw


def _decode_schema(raw: str) -> dict[str, Any] | RegexSchema:
    """A JSON-schema string, or the base64 of a JSON schema or of a regex."""
    try:
        try:
            parsed = json.loads(raw, parse_constant=no_constant)
        except json.JSONDecodeError:
            try:
                decoded = base64.b64decode(raw, validate=True).decode("utf-8")
            except (binascii.Error, ValueError):
                raise ValueError("is neither a JSON schema string nor base64 of a JSON schema or regex") from None
            try:
                parsed = json.loads(decoded, parse_constant=no_constant)
            except json.JSONDecodeError:
                return RegexSchema(decoded)
    except RecursionError:
        raise ValueError("nests too deeply to be a JSON schema") from None
    if not isinstance(parsed, dict):
        raise ValueError("must be a JSON object schema")  # noqa: TRY004 (pydantic wants ValueError)
    return parsed


class CustomFunctionTool(_Model):
    """A tool the model may name (meaningful for `function_calling_raw`)."""

    mode: Literal["custom"]
    name: str = Field(min_length=1, max_length=64)
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})

    @field_validator("parameters")
    @classmethod
    def _bounded(cls, value: dict[str, Any]) -> dict[str, Any]:
        check_schema(value)
        return value


class HttpRequestTool(_Model):
    """A tool that calls an HTTP endpoint; the body keys are string parameters."""

    mode: Literal["http_request"]
    name: str = Field(min_length=1, max_length=64)
    description: str = ""
    url: str
    method: Literal["GET", "POST", "PUT", "DELETE"] = "GET"
    headers: dict[str, str] = Field(default_factory=dict)
    body: dict[str, str] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _fetchable(cls, value: str) -> str:
        from urllib.parse import urlsplit

        try:
            parts = urlsplit(value)
            port = parts.port  # ValueError when out of range
        except ValueError:
            raise ValueError("is not a valid URL") from None
        if parts.scheme not in ("http", "https") or not parts.hostname or port == 0:
            raise ValueError("must be an http(s) URL with a host")  # no URL quoted: error texts carry no task data
        return value


CustomTool = Annotated[CustomFunctionTool | HttpRequestTool, Field(discriminator="mode")]


class WorkflowConfig(_Model):
    """The workflow's limits and tools."""

    max_steps: int = Field(ge=1)
    max_time: float = Field(gt=0, allow_inf_nan=False)
    tools: list[str] = Field(default_factory=list)
    custom_tools: list[CustomTool] = Field(default_factory=list)
    max_tokens: int | None = Field(default=None, ge=1)


class Condition(_Model):
    """A test on an input; when it fails, the run goes to `target_if_not`."""

    input: InputValue
    expected: str
    expression: Expression
    target_if_not: str


class Edge(_Model):
    """A step from one task to the next; with a condition, taken only when it holds."""

    source: str
    target: str
    condition: Condition | None = None
    fallback: str | None = None


class PostProcess(_Model):
    """A change to the result text: replace, append, prepend, trim or change case."""

    process_type: ProcessType
    lhs: str | None = None
    rhs: str | None = None

    @model_validator(mode="after")
    def _operands(self) -> PostProcess:
        if self.process_type in ("replace", "prepend") and self.lhs is None:
            raise ValueError(f"{self.process_type} needs lhs")
        if self.process_type == "append" and self.rhs is None:
            raise ValueError("append needs rhs")
        return self


class ReturnValue(_Model):
    """What the workflow returns, and the changes made to it."""

    input: InputValue | list[InputValue]
    to_json: bool = False
    # Each step rewrites the whole result synchronously: a few are all any workflow needs.
    post_process: list[PostProcess] = Field(default_factory=list, max_length=MAX_POST_PROCESS)


class Workflow(_Model):
    """A whole workflow; unknown top-level keys are ignored."""

    # The JSON names stay the format's (WORKFLOWS.md): `tasks` holds the steps, `steps` the edges.
    model_config = ConfigDict(extra="ignore", populate_by_name=False)

    name: str = ""
    description: str = ""
    config: WorkflowConfig
    external_memory: dict[str, Any] = Field(default_factory=dict)
    steps: list[Step] = Field(min_length=1, alias="tasks")
    edges: list[Edge] = Field(min_length=1, alias="steps")
    return_value: ReturnValue

    @field_validator("external_memory")
    @classmethod
    def _not_too_deep(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            json.dumps(value, allow_nan=False)
        except RecursionError:
            raise ValueError("nests too deeply") from None
        except ValueError:
            raise ValueError("holds a number that is not JSON (NaN or Infinity)") from None
        return value

    @model_validator(mode="after")
    def _graph(self) -> Workflow:
        ids: set[str] = set()
        for i, step in enumerate(self.steps):
            if step.id in ids:
                raise _GraphError(f"tasks[{i}].id: duplicate task id {step.id!r}")
            ids.add(step.id)
        known = ids | END_NODES

        def check(ref: str, path: str, allow_end: bool = True) -> None:
            if ref not in (known if allow_end else ids):
                raise _GraphError(f"{path}: no task with id {ref!r}")

        for i, edge in enumerate(self.edges):
            check(edge.source, f"steps[{i}].source", allow_end=False)
            check(edge.target, f"steps[{i}].target")
            if edge.fallback is not None:
                check(edge.fallback, f"steps[{i}].fallback")
            if edge.condition is not None:
                check(edge.condition.target_if_not, f"steps[{i}].condition.target_if_not")
        return self

    def step(self, step_id: str) -> Step | None:
        """The step with this id, if declared."""
        return next((s for s in self.steps if s.id == step_id), None)


class _GraphError(ValueError):
    """A cross-reference error whose message already names the field."""


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("custom", "http_request") or "[" in part:
            continue  # union branch tags, not fields
        else:
            out += f".{part}" if out else str(part)
    return out or "workflow"


def parse_workflow(raw: dict[str, Any] | str | bytes) -> Workflow:
    """Validate a workflow; raises WorkflowValidationError naming the field at fault."""
    if isinstance(raw, (str, bytes)):
        try:
            raw = json.loads(raw, parse_constant=no_constant)
        except ValueError as e:  # JSONDecodeError, or bytes that are not UTF-8
            raise WorkflowValidationError(f"workflow: not valid JSON ({e})") from None
        except RecursionError:
            raise WorkflowValidationError("workflow: JSON nests too deeply") from None
    if not isinstance(raw, dict):
        raise WorkflowValidationError("workflow: must be a JSON object")
    try:
        return Workflow.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        ctx_error = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_error, _GraphError):
            raise WorkflowValidationError(str(ctx_error)) from None
        msg = err["msg"].removeprefix("Value error, ")
        more = f" (and {e.error_count() - 1} more problems)" if e.error_count() > 1 else ""
        raise WorkflowValidationError(f"{_path(err['loc'])}: {msg}{more}") from None
