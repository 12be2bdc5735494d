"""The step operators: generation, function_calling(_raw), search, score, sample, end."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any

from models.grammar import GrammarError, answer_check
from models.requests import (
    ChatMessage,
    ContextOverflowError,
    FinishReason,
    GenerationRequest,
    ModelError,
    TextSink,
)
from workflows.backend import ModelBackend
from workflows.errors import (
    AnswerCutShortError,
    ContextTooSmallError,
    InvalidStepError,
    InvalidToolError,
    LimitExceededError,
    ModelFailedError,
    StepError,
    UnsupportedSchemaError,
)
from workflows.inputs import check_rendered, render, resolve, resolve_inputs
from workflows.key_sources import KeySources
from workflows.memory import Memory, render_entry
from workflows.options import EngineOptions, ToolSettings
from workflows.placeholders import fill, fill_all
from workflows.schema import InputValue, RegexSchema, Step, WorkflowConfig
from workflows.schema_limits import SchemaTooLargeError, check_schema
from workflows.score_operator import score
from workflows.tool_calls import call_schema, parse_call, with_tool_prompt
from workflows.tool_http import ToolHttp
from workflows.tools import build_tools, web_search

DEFAULT_SEARCH_RESULTS = 5


@dataclass
class Usage:
    """Tokens read and written."""

    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class RunContext:
    """Everything a step needs while a workflow runs."""

    config: WorkflowConfig
    model: ModelBackend
    memory: Memory
    tools: ToolSettings
    http: ToolHttp  # where the tools' requests go (workflows/tool_http.py)
    options: EngineOptions
    rng: random.Random
    sources: KeySources | None = None  # what the task can fill: tells deterministic misses apart
    streamed: str | None = None  # the step whose generation streams to `on_text` (workflows/streamed_step.py)
    on_text: TextSink | None = None
    usage: Usage = field(default_factory=Usage)
    finish_reason: FinishReason | None = None  # the last generation's (the streamed step's, read by the engine)

    @property
    def max_tokens(self) -> int:
        """Tokens the next generation may produce: the workflow's ask, capped, within the run's budget."""
        wanted = self.config.max_tokens or self.options.max_tokens
        cap = self.options.max_tokens_cap
        left = self.options.max_task_tokens - self.usage.completion_tokens
        if left <= 0:
            raise LimitExceededError(
                "max_tokens",
                f"token budget exceeded: the run generated {self.usage.completion_tokens} tokens "
                f"(this node allows {self.options.max_task_tokens} per task)",
            )
        return min(wanted, cap, left) if cap else min(wanted, left)


async def run_step(step: Step, ctx: RunContext) -> str:
    """Run one step's operator and return its result text."""
    if step.operator == "end":
        return ""
    if step.operator == "sample":
        return await _sample(step, ctx)
    if step.operator in ("generation", "function_calling", "function_calling_raw", "score") and not any(
        m.content.strip() for m in step.messages
    ):
        # Blank as written: no input can fill it on any node (a blank after filling depends on memory).
        raise InvalidStepError("the task has no non-empty message to send to the model")
    limit = ctx.options.max_memory_bytes
    values = await resolve_inputs(step.inputs, ctx.memory, limit)
    contents = fill_all([m.content for m in step.messages], values, limit)  # one limit for all of them
    messages = [ChatMessage(role=m.role, content=c) for m, c in zip(step.messages, contents, strict=True)]
    match step.operator:
        case "generation":
            on_text = ctx.on_text if step.id == ctx.streamed else None
            return await generate(ctx, messages, step.json_schema, on_text)
        case "function_calling" | "function_calling_raw":
            return await _function_call(ctx, messages, execute=step.operator == "function_calling")
        case "search":
            return await _search(ctx, messages)
        case "score":
            text, prompt_tokens, scored_tokens = await score(ctx.model, ctx.max_tokens, messages[-1].content)
            ctx.usage.prompt_tokens += prompt_tokens
            ctx.usage.completion_tokens += scored_tokens
            return text
    raise AssertionError(f"unhandled operator {step.operator}")


async def generate(
    ctx: RunContext,
    messages: list[ChatMessage],
    schema: dict[str, Any] | RegexSchema | None,
    on_text: TextSink | None = None,
) -> str:
    """One model call.

    With a JSON schema the answer must parse as JSON and satisfy the schema (what decoding
    left out is checked here); with a regex it must end before max_tokens.
    """
    messages = [m for m in messages if m.content.strip()]
    if not messages:
        raise StepError("the task has no non-empty message to send to the model")
    request = GenerationRequest(
        messages=messages,
        max_tokens=ctx.max_tokens,
        temperature=ctx.options.temperature,
        seed=ctx.options.seed,
        json_schema=schema if isinstance(schema, dict) else None,
        regex=schema.pattern if isinstance(schema, RegexSchema) else None,
    )
    try:
        generation = await ctx.model.generate(request, on_text)
    except ModelError as e:
        if _is_grammar_error(e):  # the same schema fails on every node
            raise UnsupportedSchemaError(f"the task's schema is not supported: {e}") from e
        if isinstance(e, ContextOverflowError):  # refused before it ran: no retry makes it fit
            asked = ctx.config.max_tokens or ctx.options.max_tokens
            capped = f" (of the {asked} max_tokens asked, this node allows {request.max_tokens})"
            detail = capped if request.max_tokens < asked else ""  # the error quotes what was sent, not asked
            raise ContextTooSmallError(f"the task does not fit the model's context: {e}{detail}") from e
        raise ModelFailedError(f"model {ctx.model.name!r} failed: {e}") from e
    ctx.usage.prompt_tokens += generation.prompt_tokens
    ctx.usage.completion_tokens += generation.completion_tokens
    ctx.finish_reason = generation.finish_reason
    cut = generation.finish_reason == "length"
    hint = _cut_short_hint(request.max_tokens, ctx) if cut else ""
    # Cut at the workflow's own max_tokens, the answer is as short on any node: the task's error, not this node's.
    # Cut at this node's lower cap, or with no max_tokens asked (each node has its own default), another may do.
    cut_short = AnswerCutShortError if cut and request.max_tokens == ctx.config.max_tokens else StepError
    if isinstance(schema, RegexSchema):  # any text the regex matches; its matches need not be JSON
        if cut:
            raise cut_short(f"the model's answer is not a complete match of the schema's regex{hint}")
    elif schema is not None:
        try:
            answer = json.loads(generation.text)
        except ValueError:
            error = cut_short if cut else StepError
            raise error(f"the model's answer is not complete JSON for the schema{hint}") from None
        check = answer_check(schema)  # what decoding did not enforce (uniqueItems, not, a remote engine's answer)
        if check is not None and (broken := check(answer)) is not None:
            raise StepError(f"the model's answer breaks the schema's {broken!r}, which decoding did not enforce")
    return generation.text


def _cut_short_hint(allowed: int, ctx: RunContext) -> str:
    """Which limit ended a generation cut short: the task's max_tokens, or this node's lower cap."""
    asked = ctx.config.max_tokens or ctx.options.max_tokens
    if allowed < asked:  # the node's cap or the task's token budget, not the ask: raising it cannot help
        return f" (max_tokens reached: this node allows {allowed} of the {asked} asked; bound the schema)"
    return f" (max_tokens reached: {allowed}; raise it or bound the schema)"


def _is_grammar_error(error: ModelError) -> bool:
    return isinstance(error, GrammarError)


async def _function_call(ctx: RunContext, messages: list[ChatMessage], *, execute: bool) -> str:
    tools = build_tools(ctx.config, ctx.tools, ctx.http, ctx.options.tool_arg_max_length)
    if not tools:
        raise InvalidToolError("function calling needs tools, but config.tools and config.custom_tools offer none")
    schema = call_schema(tools, ctx.options.tool_arg_max_length)
    try:
        check_schema(schema)  # many tools or body keys together can still make a grammar bomb
    except SchemaTooLargeError as e:
        raise InvalidToolError(f"the tools together make a call schema that {e}") from None
    text = await generate(ctx, with_tool_prompt(messages, tools), schema)
    call = parse_call(text, tools)
    if not execute:
        return json.dumps(call, ensure_ascii=False)
    tool = next(t for t in tools if t.name == call["name"])
    if tool.run is None:
        raise InvalidToolError(f"tool {tool.name!r} has mode 'custom' and cannot be executed; use function_calling_raw")
    return await tool.run(call["arguments"])


async def _search(ctx: RunContext, messages: list[ChatMessage]) -> str:
    if not messages:
        raise InvalidStepError("the search operator needs a message holding the query")
    content = messages[-1].content
    try:
        spec = json.loads(content)
    except ValueError:
        spec = {"query": content}  # lenient: a plain-text message is the query itself
    if not isinstance(spec, dict) or not isinstance(spec.get("query"), str):
        raise StepError('the search operator\'s last message must be a JSON object {"query": str, ...}')
    n = spec.get("n_results", DEFAULT_SEARCH_RESULTS)
    return await web_search(ctx.tools, ctx.http, spec["query"], n if isinstance(n, int) else DEFAULT_SEARCH_RESULTS)


async def _sample(step: Step, ctx: RunContext) -> str:
    """For each input pick one random entry of the stack it names (or the list it is)."""
    values: dict[str, str] = {}
    samples: list[str] = []
    size = 0
    for item in step.inputs:
        resolved = await resolve(item.value, ctx.memory)
        values[item.name] = render(resolved)
        size += len(values[item.name])
        check_rendered(size, ctx.options.max_memory_bytes)
        pool = resolved if isinstance(resolved, list) else ctx.memory.get_all(render(resolved))
        if not pool:
            if resolved is None and _never_filled(ctx.sources, item.value):
                raise InvalidStepError(
                    f"sample input {item.name!r}: {item.value.type} {item.value.key!r} is filled by no step "
                    "and no external_memory"
                )
            raise StepError(f"sample input {item.name!r}: the stack it names is empty or missing")
        samples.append(render_entry(ctx.rng.choice(pool)))
        size += len(samples[-1]) + 2  # the answer holds every sample: inputs naming one big stack multiply it
        check_rendered(size, ctx.options.max_memory_bytes)
    prompt = fill(step.messages[-1].content, values, ctx.options.max_memory_bytes) if step.messages else ""
    return "".join([prompt, *(f": {s}" for s in samples)])


def _never_filled(sources: KeySources | None, value: InputValue) -> bool:
    """`value` can never hold anything, and the stack its empty rendering names ("") is never filled either."""
    return sources is not None and sources.never_filled(value) and "" not in sources.stacks
