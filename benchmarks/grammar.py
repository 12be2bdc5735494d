"""9. Constrained decoding: what a schema costs per generated token on the batched runtime (llguidance).

The schemas are the ones Dria's SDK sends for a pydantic model (tests/support/data/sdk_schemas.json):
the outlines regex (Ollama/OpenRouter names) and the strict JSON schema (OpenAI names).
Each round runs the same 4 requests at once with the constraint and without it
(alternately, on one loaded model); the ratio is constrained / unconstrained time per
generated token. Goal: a constraint costs at most 1.15x.

A last row measures the worst case the grammar limits allow: the costliest full token
mask over the hostile grammars below (each driven for a few steps, the mask computed at
every step), next to the mask of the SDK's JSON schema. It is the figure of the
README's cost table (per token, on top of the decode step).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from benchmarks.options import BenchOptions
from benchmarks.report import Row, Section
from benchmarks.stats import BenchmarkError, alternate, paired_ratio, summarize
from benchmarks.workloads import model_path
from models.batching import BatchedLlamaModel
from models.grammar import GrammarError, grammar_for
from models.grammar.matcher import Constraint
from models.options import RuntimeOptions
from models.requests import ChatMessage, GenerationRequest

GOAL = 1.15  # llama.cpp's GBNF sampler, checked lazily, cost 1.37x-1.60x here
PARALLEL = 4
MAX_TOKENS = 80
SCHEMAS = Path(__file__).parent.parent / "tests" / "support" / "data" / "sdk_schemas.json"
MASK_STEPS = 16
# The costliest grammars found within the limits (see tests/support/grammar_bombs.py for the whole family).
HOSTILE: dict[str, dict[str, Any]] = {
    "90 groups (x?){1000}": {"regex": "(x?){1000}" * 90 + "x"},
    "((x?){50}){50}": {"regex": "((x?){50}){50}"},
    "overlapping classes": {"regex": "([a-z0-9]{0,30}[^a]{0,30}){100}"},
    "dot stars": {"regex": "(.*a.*b.*c.*d.*e.*f.*g.*h){100}"},
    "3000 alternatives": {"regex": "(" + "|".join(f"a{i}b" for i in range(3000)) + ")*"},
    "[a-z]{10000}": {"regex": "[a-z]{10000}"},
    "150 patterned properties": {
        "json_schema": {
            "type": "object",
            "properties": {f"p{i}": {"type": "string", "pattern": "(x?){40}y"} for i in range(150)},
        }
    },
}


def _request(**constraint: Any) -> GenerationRequest:
    return GenerationRequest(
        messages=[ChatMessage(role="user", content="Write a short product review as JSON.")],
        max_tokens=MAX_TOKENS,
        **constraint,
    )


def _each_round(
    per_token: Callable[[dict[str, Any]], Awaitable[float]], constraint: dict[str, Any]
) -> Callable[[int], Awaitable[float]]:
    """One round of `alternate`: `per_token` with this constraint (the round's index unused)."""
    return lambda _round: per_token(constraint)


async def run(options: BenchOptions) -> Section:
    rounds = options.pick(full=6, quick=3)
    schemas = json.loads(SCHEMAS.read_text(encoding="utf-8"))["Review"]
    forms = {
        "outlines regex (Ollama names)": {"regex": base64.b64decode(schemas["ollama"]).decode("utf-8")},
        "JSON schema (OpenAI names)": {"json_schema": json.loads(schemas["openai"])},
    }
    runtime = RuntimeOptions(n_ctx=2048, n_threads=options.threads, flash_attn="auto")  # the node's default
    model = await BatchedLlamaModel.load("smollm2:135m", model_path(), runtime, parallel=PARALLEL)
    rows: list[Row] = []
    try:

        async def per_token(constraint: dict[str, Any]) -> float:
            # The process's CPU time: the decode loop's thread does the work, not this one.
            started = time.process_time()
            results = await asyncio.gather(*[model.generate(_request(**constraint)) for _ in range(PARALLEL)])
            tokens = sum(r.completion_tokens for r in results)
            if tokens == 0:
                raise BenchmarkError("grammar: no token was generated")
            return (time.process_time() - started) / tokens * 1000

        for name, constraint in forms.items():
            constrained, free = await alternate(rounds, _each_round(per_token, constraint), _each_round(per_token, {}))
            what = f"grammar {name}"
            rows.append(
                Row(
                    metric=f"ms per generated token, {PARALLEL} sequences at once, {name}",
                    node=summarize(constrained, "ms", what=what),
                    baseline=summarize(free, "ms", what=what),
                    baseline_name="same requests, no constraint",
                    ratio=paired_ratio(constrained, free, what=what),
                )
            )
        hostile, sdk = await asyncio.to_thread(_mask_costs, model, forms["JSON schema (OpenAI names)"], rounds)
        rows.append(
            Row(
                metric=f"CPU ms of the costliest token mask, worst of {len(HOSTILE)} hostile grammars at the limits",
                node=summarize(hostile, "ms", what="grammar worst mask"),
                baseline=summarize(sdk, "ms", what="grammar worst mask"),
                baseline_name="costliest mask of the SDK's JSON schema",
            )
        )
    finally:
        await model.close()
    worst = max(row.ratio.median for row in rows if row.ratio is not None)
    return Section(
        name="grammar",
        title="9. Constrained decoding",
        rows=rows,
        notes=[
            (
                f"{rounds} rounds alternately; BatchedLlamaModel, {PARALLEL} slots, {options.threads} thread(s); "
                f"schemas as Dria's SDK sends them for one pydantic model; the grammar is checked lazily "
                f"(the unconstrained pick first, the full vocabulary masked only when it is refused)."
            ),
            f"goal ratio <= {GOAL:g}x: {'met' if worst <= GOAL else 'NOT met'} (worst median {worst:.2f}x).",
            f"worst-mask row: each grammar driven {MASK_STEPS} steps with the full mask computed at every step "
            f"(a grammar past its fuel fails its request there: that step is counted too); the mask's CPU time "
            f"on its thread (time.thread_time), so other processes on the machine do not inflate it.",
        ],
    )


def _mask_costs(model: BatchedLlamaModel, sdk: dict[str, Any], rounds: int) -> tuple[list[float], list[float]]:
    """Per round: the costliest mask (ms) over the hostile grammars, and over the SDK schema."""
    tokenizer = model.constraint_tokenizer()
    hostile: list[float] = []
    baseline: list[float] = []
    for _ in range(rounds):
        hostile.append(max(_costliest_mask(tokenizer, c) for c in HOSTILE.values()))
        baseline.append(_costliest_mask(tokenizer, sdk))
    return hostile, baseline


def _costliest_mask(tokenizer: Any, constraint: dict[str, Any]) -> float:
    grammar = grammar_for(constraint.get("json_schema"), constraint.get("regex"))
    assert grammar is not None
    matcher = Constraint(tokenizer, grammar)
    end = set(tokenizer.eos_tokens)
    worst = 0.0
    for _ in range(MASK_STEPS):
        started = time.thread_time()
        try:
            allowed = matcher.allowed_tokens()
        except GrammarError:
            return max(worst, (time.thread_time() - started) * 1000)
        worst = max(worst, (time.thread_time() - started) * 1000)
        going_on = [int(t) for t in allowed if int(t) not in end]
        if not going_on:
            break
        matcher.consume(going_on[-1])
    return worst
