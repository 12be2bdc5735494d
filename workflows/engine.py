"""Walking a workflow's graph: steps, conditions, fallbacks, loops and limits."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

import structlog

from models.requests import FinishReason, ModelError, TextSink
from workflows.backend import ModelBackend
from workflows.conditions import evaluate
from workflows.egress import Egress
from workflows.errors import (
    LimitExceededError,
    ModelFailedError,
    ResultTooLargeError,
    WorkflowError,
    max_time_exceeded,
)
from workflows.inputs import render, resolve, write_outputs
from workflows.key_sources import KeySources
from workflows.memory import Memory
from workflows.operators import RunContext, run_step
from workflows.options import EngineOptions, ToolSettings, capped
from workflows.return_value import build_result
from workflows.schema import Edge, Workflow
from workflows.streamed_step import streamed_step
from workflows.tool_http import ToolHttp

log = structlog.get_logger(__name__)


@dataclass
class WorkflowResult:
    """The result string and what the run cost; `finish_reason`: why the generation that is the result's text
    ended (workflows/streamed_step.py), None when the result is not one generation's text."""

    text: str
    steps: int
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason | None = None


@dataclass
class _Progress:
    steps: int = 0
    current: str = ""
    verbatim_step: str | None = None  # the step whose generation is the result's text (streamed_step)
    verbatim_text: str | None = None  # that generation's text, as the model wrote it
    verbatim_finish: FinishReason | None = None  # why that generation ended


async def run_workflow(
    workflow: Workflow,
    model: ModelBackend,
    *,
    prompt: str | None = None,
    tools: ToolSettings | None = None,
    http: ToolHttp | None = None,
    options: EngineOptions | None = None,
    embedder: ModelBackend | None = None,
    on_text: TextSink | None = None,
) -> WorkflowResult:
    """Run a validated workflow on `model`; raises a WorkflowError subclass on failure.

    `prompt` becomes the cache entry `__input`; `embedder` (default: `model`)
    provides the file store's embeddings; `http` carries the tools' requests (default: made by this
    process, egress.py's `Egress`). `max_time` is enforced while a task
    runs: an in-flight generation is cancelled. Every step yields to the event
    loop, memory writes are checked against `options.max_memory_bytes`, and a
    result over `options.max_result_bytes` raises ResultTooLargeError. `on_text` gets the
    text of the step whose generation is the result as it generates, when the workflow
    has such a step (workflows/streamed_step.py); nothing otherwise.

    The result of such a workflow is that generation's text as the model wrote it: memory
    keeps a JSON-looking answer as JSON, and its compact form would change a free-text
    answer (" [1, 2]" -> "[1,2]", "1e5" -> "100000.0", "3.14159265358979323846" losing digits).
    """
    options = options or EngineOptions()
    tools = tools or ToolSettings()
    verbatim = streamed_step(workflow)
    max_steps = int(capped(workflow.config.max_steps, options.max_steps_cap))
    max_time = capped(workflow.config.max_time, options.max_time_cap)
    ctx = RunContext(
        config=workflow.config,
        model=model,
        memory=Memory.create(embedder or model, workflow.external_memory, prompt, options.max_memory_bytes),
        tools=tools,
        http=http or Egress(tools),
        options=options,
        rng=random.Random(options.seed),
        sources=KeySources.of(workflow, prompt),
        streamed=None if on_text is None else verbatim,
        on_text=on_text,
    )
    progress = _Progress(verbatim_step=verbatim)
    timer = asyncio.timeout(max_time)
    try:
        async with timer:
            await _walk(workflow, ctx, max_steps, progress)
            text, finish = progress.verbatim_text, progress.verbatim_finish
            if text is None:  # rendering the verbatim step's memory entry too would be work thrown away
                text = await build_result(workflow.return_value, ctx.memory, options.max_memory_bytes, ctx.sources)
    except TimeoutError:
        if not timer.expired():
            raise
        raise LimitExceededError("max_time", f"{max_time_exceeded(max_time)} (in task {progress.current!r})") from None
    size = len(text.encode("utf-8", errors="surrogatepass"))
    if size > options.max_result_bytes:
        raise ResultTooLargeError(
            f"result too large: {size} bytes (this node sends at most {options.max_result_bytes})"
        )
    return WorkflowResult(text, progress.steps, ctx.usage.prompt_tokens, ctx.usage.completion_tokens, finish)


async def _walk(workflow: Workflow, ctx: RunContext, max_steps: int, progress: _Progress) -> None:
    node = workflow.edges[0].source
    while (edge := _edge_from(workflow, node)) is not None:
        # Steps that never await (end, sample, memory-only) must not starve the loop.
        await asyncio.sleep(0)
        step = workflow.step(node)
        assert step is not None  # edge sources are validated to be steps
        if progress.steps >= max_steps:
            raise LimitExceededError(
                "max_steps", f"max_steps exceeded: {max_steps} task executions done, task {node!r} would run next"
            )
        progress.steps += 1
        progress.current = node
        try:
            result = await run_step(step, ctx)
            await write_outputs(step.outputs, result, ctx.memory)
            if step.id == progress.verbatim_step:
                progress.verbatim_text, progress.verbatim_finish = result, ctx.finish_reason
        except LimitExceededError:
            raise
        except (WorkflowError, ModelError) as e:
            if edge.fallback is None:
                if isinstance(e, ModelError):
                    raise ModelFailedError(f"task {step.id!r} failed: model error: {e}") from e
                raise type(e)(f"task {step.id!r} failed: {e}") from e
            log.info("step failed; taking its fallback", step=step.id, fallback=edge.fallback, error=str(e))
            node = edge.fallback
            continue
        node = await _next_node(edge, ctx)
    if workflow.step(node) is not None and node not in ("_end", "__end"):
        log.debug("workflow stops at a node without an edge", node=node)


def _edge_from(workflow: Workflow, node: str) -> Edge | None:
    return next((edge for edge in workflow.edges if edge.source == node), None)


async def _next_node(edge: Edge, ctx: RunContext) -> str:
    condition = edge.condition
    if condition is None:
        return edge.target
    value = render(await resolve(condition.input, ctx.memory))
    holds = await evaluate(condition.expression, value, condition.expected, ctx.memory.files)
    log.debug("condition", source=edge.source, expression=condition.expression, value=value[:80], holds=holds)
    return edge.target if holds else condition.target_if_not
